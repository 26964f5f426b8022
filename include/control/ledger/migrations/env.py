"""Alembic environment of the ledger: runs on the connection the ledger hands over."""

from __future__ import annotations

from alembic import context

from include.control.ledger.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
