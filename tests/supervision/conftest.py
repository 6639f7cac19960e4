"""Fixtures for supervision tests: a migrated SQLite database, a running ledger, an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, LedgerConfig
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from exchange.supervision import Supervisor

from .support import CONFIG


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'supervision.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def ledger(engine: Engine) -> AsyncIterator[Ledger]:
    ledger = Ledger(engine, SigningKey.generate(), "exchange.test/supervision", LedgerConfig())
    await ledger.start()
    yield ledger
    await ledger.close()


@pytest.fixture
def supervisor(engine: Engine, ledger: Ledger) -> Supervisor:
    """An engine over the test ledger, not started: feed it entries with ``feed``."""
    return Supervisor(ledger, engine, CONFIG)
