"""The Alembic migrations build exactly the schema the code declares on its one MetaData."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

import exchange.ledger.storage
import exchange.observability.alerts
import exchange.ownership
import exchange.store.consents
import exchange.store.exchange_tables
import exchange.store.log_keys
import exchange.store.operator_keys
import exchange.store.tables
import exchange.supervision.store  # noqa: F401  (declares its tables on the metadata)
from exchange.store.engines import open_engine
from exchange.store.metadata import metadata
from exchange.store.schema import upgrade


def _differences(engine: Engine) -> list[object]:
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, metadata))


def test_migrations_match_the_declared_tables_on_sqlite(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_migrations_match_the_declared_tables_on_postgres(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    try:
        assert _differences(engine) == []
    finally:
        engine.dispose()
