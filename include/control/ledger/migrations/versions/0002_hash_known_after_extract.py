"""A document's content hash is unknown until its extract job has read it: planning reads no bytes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite alters a column by copying the table.
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("content_sha256", existing_type=sa.String(64), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE documents SET content_sha256 = '' WHERE content_sha256 IS NULL")
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("content_sha256", existing_type=sa.String(64), nullable=False)
