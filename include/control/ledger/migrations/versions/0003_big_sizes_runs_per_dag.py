"""Sizes in 64 bits (a file over 2 GiB failed every planning run on PostgreSQL); runs keyed by DAG and run
(two DAGs may give their runs the same id: a backfill and a schedule, say).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
COUNTS = ("new", "changed", "stale", "retried", "reprocessed", "unchanged", "deleted",
          "ingested", "failed", "quarantined", "pages", "chunks", "vectors")
COLUMNS = ("run_id", "dag_id", "planned_at", "finished_at", *COUNTS, "seconds", "report_uri")


def _runs_table(name: str, *key: str) -> None:
    op.create_table(
        name,
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("planned_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        *(sa.Column(count, sa.Integer, nullable=False) for count in COUNTS),
        sa.Column("seconds", sa.JSON),
        sa.Column("report_uri", sa.String(2048)),
        sa.PrimaryKeyConstraint(*key, name=f"pk_{name}"),
    )


def _daily_view() -> None:
    # As revision 0001 made it: the view reads runs, so it is dropped while runs is rebuilt.
    day = "date(finished_at AT TIME ZONE 'UTC')" if op.get_bind().dialect.name == "postgresql" else "date(finished_at)"
    op.execute(
        f"CREATE VIEW daily_metrics AS SELECT {day} AS day, count(*) AS runs, "
        "sum(new) AS new, sum(changed) AS changed, sum(deleted) AS deleted, sum(ingested) AS ingested, "
        "sum(failed) AS failed, sum(quarantined) AS quarantined, sum(pages) AS pages, "
        "sum(chunks) AS chunks, sum(vectors) AS vectors "
        f"FROM runs WHERE finished_at IS NOT NULL GROUP BY {day}"
    )


def _rebuild_runs(*key: str) -> None:
    """Runs with another primary key: a new table, the rows copied, the old one dropped (portable to
    SQLite, which cannot alter a primary key)."""
    op.execute("DROP VIEW daily_metrics")
    _runs_table("runs_rebuilt", *key)
    columns = ", ".join(COLUMNS)
    op.execute(f"INSERT INTO runs_rebuilt ({columns}) SELECT {columns} FROM runs")
    op.drop_table("runs")
    op.rename_table("runs_rebuilt", "runs")
    _daily_view()


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("size_bytes", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
    _rebuild_runs("dag_id", "run_id")


def downgrade() -> None:
    _rebuild_runs("run_id")  # fails if two DAGs have a run of the same id: resolve those by hand first
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("size_bytes", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
