"""The ledger: documents, their event history, runs, and a per-day view of the runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source_uri", sa.String(2048), nullable=False, unique=True),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("object_version", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("pipeline_fingerprint", sa.String(256), nullable=False),
        sa.Column("stage_reached", sa.String(16)),
        sa.Column("pages", sa.Integer),
        sa.Column("chunks", sa.Integer),
        sa.Column("vectors", sa.Integer),
        sa.Column("indexed_doc_id", sa.String(128)),
        sa.Column("error", sa.Text),
        sa.Column("error_stage", sa.String(16)),
        sa.Column("quarantine_uri", sa.String(2048)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claim_dag_id", sa.String(250)),
        sa.Column("claim_run_id", sa.String(250)),
        sa.Column("claimed_at", TIMESTAMP),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("last_run_id", sa.String(250)),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "document_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("source_uri", sa.String(2048), nullable=False),
        sa.Column("doc_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON),
        sa.UniqueConstraint("run_id", "doc_id", "stage", "event", name="uq_event_once_per_run"),
    )
    op.create_index("ix_events_source_uri_at", "document_events", ["source_uri", "at"])
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("planned_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        *(sa.Column(name, sa.Integer, nullable=False) for name in (
            "new", "changed", "stale", "retried", "reprocessed", "unchanged", "deleted",
            "ingested", "failed", "quarantined", "pages", "chunks", "vectors",
        )),
        sa.Column("seconds", sa.JSON),
        sa.Column("report_uri", sa.String(2048)),
    )
    # Per day, from the runs that finished that day: a view, so it can never disagree with them.
    # Days are UTC days: PostgreSQL would otherwise cut them in its session's time zone.
    day = "date(finished_at AT TIME ZONE 'UTC')" if op.get_bind().dialect.name == "postgresql" else "date(finished_at)"
    op.execute(
        f"CREATE VIEW daily_metrics AS SELECT {day} AS day, count(*) AS runs, "
        "sum(new) AS new, sum(changed) AS changed, sum(deleted) AS deleted, sum(ingested) AS ingested, "
        "sum(failed) AS failed, sum(quarantined) AS quarantined, sum(pages) AS pages, "
        "sum(chunks) AS chunks, sum(vectors) AS vectors "
        f"FROM runs WHERE finished_at IS NOT NULL GROUP BY {day}"
    )


def downgrade() -> None:
    op.execute("DROP VIEW daily_metrics")
    op.drop_table("runs")
    op.drop_index("ix_events_source_uri_at", "document_events")
    op.drop_table("document_events")
    op.drop_table("documents")
