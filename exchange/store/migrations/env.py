"""Alembic environment: runs migrations on the connection handed over by ``upgrade``."""

from __future__ import annotations

from alembic import context

from exchange.store.metadata import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the exchange always passes its connection
    raise RuntimeError("run migrations through exchange.store.schema.upgrade")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
