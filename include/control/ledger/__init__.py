"""The ledger: the pipeline's own database of every document it has seen, what it did with
each, and every run's totals. It is what makes runs incremental (an unchanged document
costs nothing), lets two runs share an inbox without doing the same work twice
(claims), and answers "is this document in the index, and if not, why not?".

SQLite under the work dir by default; PostgreSQL (or any SQLAlchemy database) through
the Airflow connection ``pipeline_ledger`` or ``PIPELINE_LEDGER_URL``. The schema's Alembic
migrations run as a deploy step, ``python -m include.control.ledger upgrade`` (the local stack
runs it on ``up``); opening a ledger at another revision fails with ``LedgerNotUpgraded``.
``python -m include.control.ledger --help`` shows and queries it.
"""

from include.control.ledger.schema import Status
from include.control.ledger.store import Entry, Final, Ledger, LedgerNotUpgraded

__all__ = ["Entry", "Final", "Ledger", "LedgerNotUpgraded", "Status"]
