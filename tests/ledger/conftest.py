"""Fixtures for ledger tests: a migrated SQLite database, a hub key, a running ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, LedgerConfig
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade

from .support import ORIGIN


@pytest.fixture
def hub_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def ledger(engine: Engine, hub_key: SigningKey) -> AsyncIterator[Ledger]:
    ledger = Ledger(engine, hub_key, ORIGIN, LedgerConfig(checkpoint_every=10))
    await ledger.start()
    yield ledger
    await ledger.close()
