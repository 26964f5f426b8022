# Two commands do all set-up on a fresh machine:
#   make demo   -> install, start the local stack, ingest sample PDFs through Airflow + Ray, answer a question
#   make test   -> install, run the whole test suite (unit + integration on the real stack)
.PHONY: demo test install down status airflow ledger

install:
	@bash scripts/bootstrap.sh

demo: install
	.venv/bin/python -m tools.demo

test: install
	.venv/bin/python -m pytest

down:
	.venv/bin/python -m tools.stack down

status:
	.venv/bin/python -m tools.stack status

# What the ledger holds: documents per status and the last runs (`make ledger ARGS="documents --status failed"`).
ledger:
	eval "$$(.venv/bin/python -m tools.stack env)" && .venv/bin/python -m include.ledger $(ARGS)

# The Airflow UI, scheduler, DAG processor and triggerer (http://127.0.0.1:8080), on the local stack.
airflow: install
	.venv/bin/python -m tools.stack up
	eval "$$(.venv/bin/python -m tools.stack env)" && AIRFLOW__API__HOST=127.0.0.1 .venv/bin/airflow standalone
