# Two commands do all set-up on a fresh machine:
#   make demo   -> install, start the local stack, ingest sample PDFs through Airflow + Ray, answer questions
#   make test   -> install, run the whole test suite (unit + integration on the real stack)
.PHONY: demo test install down status airflow ledger ask evaluate

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
	eval "$$(.venv/bin/python -m tools.stack env)" && .venv/bin/python -m include.control.ledger $(ARGS)

# One question answered from the ingested documents, with its sources: make ask Q="What is the dose?"
# (narrowed with ARGS="--document libtasn1.pdf --pages 9-11").
ask:
	eval "$$(.venv/bin/python -m tools.stack env)" && .venv/bin/python -m include.query ask "$(Q)" $(ARGS)

# The sample question set answered and scored (hit@1, hit@5, MRR, answers with the expected phrase);
# retrieval alone, on another set: ARGS="--retrieval-only --questions include/query/questions/bzip2.jsonl".
evaluate:
	eval "$$(.venv/bin/python -m tools.stack env)" && .venv/bin/python -m include.query evaluate $(ARGS)

# The Airflow UI, scheduler, DAG processor and triggerer (http://127.0.0.1:8080), on the local stack.
airflow: install
	.venv/bin/python -m tools.stack up
	eval "$$(.venv/bin/python -m tools.stack env)" && AIRFLOW__API__HOST=127.0.0.1 .venv/bin/airflow standalone
