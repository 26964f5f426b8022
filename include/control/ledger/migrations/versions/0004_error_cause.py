"""Why a document failed, as a value people filter on (``ledger documents --cause quality_gate``), and
the planner reads: a document whose output failed a quality gate waits for a changed file or pipeline.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as table:
        table.add_column(sa.Column("error_cause", sa.String(16)))
        table.create_index("ix_documents_error_cause", ["error_cause"])


def downgrade() -> None:
    with op.batch_alter_table("documents") as table:
        table.drop_index("ix_documents_error_cause")
        table.drop_column("error_cause")
