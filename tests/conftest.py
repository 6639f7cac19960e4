"""Shared fixtures: real keystores, real hubs on loopback ports, real databases.

PostgreSQL tests read EXCHANGE_TEST_DATABASE_URL (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Without it they skip with a reason; with
``CI=true`` (set by .ci/run) a missing database fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.client import HubClient, Identity
from exchange.api.server import HubServer
from exchange.config import Config
from exchange.crypto.keystore import Keystore
from exchange.v1 import common_pb2, registry_pb2
from tests.postgres import scratch_postgres

if TYPE_CHECKING:
    from tests.flows.world import World

HUB_ID = "hub"


def require_postgres() -> str:
    """The admin URL of the test PostgreSQL, or skip (fail under CI) if none is configured."""
    url = os.environ.get("EXCHANGE_TEST_DATABASE_URL")
    if not url:
        message = "PostgreSQL tests need EXCHANGE_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes a scratch PostgreSQL database carries the ``postgres`` marker, so
    ``-m postgres`` and ``-m 'not postgres'`` select exactly the tests that need the server."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def no_answer_after_its_commit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every flow commits the answer a retry gets in its entry's transaction (issue 13): no
    test of the suite, whatever flows it runs in process, may move
    ``exchange_answers_after_commit_total`` (a flow without an answer builder, or a builder
    failing on the ledger's writer thread). Tests marked ``answers_after_commit`` do so on
    purpose."""
    from exchange.observability import metrics

    before = metrics.ANSWERS_AFTER_COMMIT._value.get()
    yield
    if request.node.get_closest_marker("answers_after_commit") is None:
        after = metrics.ANSWERS_AFTER_COMMIT._value.get()
        assert after == before, f"{after - before} answer(s) stored after their entry's commit"


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards. Fails a test that
    reaches it without the ``postgres`` marker (through ``request.getfixturevalue``, which the
    collection hook above cannot see): mark its parameter or the test."""
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} needs PostgreSQL: mark it with pytest.mark.postgres")
    with scratch_postgres(require_postgres(), "exchange_test") as url:
        yield url


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    """A keystore with a hub key, subject secret, development CA and TLS certificates."""
    store = Keystore(tmp_path / "keys")
    store.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
    return store


def hub_config(keystore: Keystore, database_url: str, **overrides: object) -> Config:
    """A configuration for a test hub on a free loopback port."""
    base = Config(
        hub_id=HUB_ID,
        listen="127.0.0.1:0",
        database_url=database_url,
        keys_dir=keystore.root,
        checkpoint_interval_ms=200,
        shutdown_grace_seconds=5.0,
    )
    import dataclasses

    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class RunningHub:
    """A hub serving on loopback, with helpers to act as its operator and its members."""

    server: HubServer
    keystore: Keystore
    config: Config
    clients: list[HubClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, department_id: str) -> HubClient:
        """A client for a department (or the operator when ``department_id`` is the hub id)."""
        if department_id == HUB_ID:
            identity = Identity(
                HUB_ID, self.keystore.operator_signing_key(), self.keystore.operator_tls()
            )
        else:
            identity = Identity(
                department_id,
                self.keystore.department_signing_key(department_id),
                self.keystore.department_tls(department_id),
            )
        client = HubClient(self.target, identity, server_name="localhost", retries=0)
        self.clients.append(client)
        return client

    @property
    def operator(self) -> HubClient:
        return self.client(HUB_ID)

    async def register(
        self,
        department_id: str,
        roles: tuple[int, ...] = (common_pb2.CONSUMER,),
        *,
        endpoint: str = "",
        server_names: tuple[str, ...] = (),
    ) -> HubClient:
        """Create keys for a department, register it through the operator, return its client."""
        key = self.keystore.add_department(department_id, server_names=server_names)
        department = registry_pb2.Department(
            id=department_id,
            name=department_id.replace(".", " ").title(),
            roles=list(roles),
            provider_endpoint=endpoint,
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
        await self.operator.register_department(department)
        return self.client(department_id)


StartHub = Callable[..., Awaitable[RunningHub]]


@pytest.fixture
async def start_hub(keystore: Keystore, tmp_path: Path) -> AsyncIterator[StartHub]:
    """A factory starting hubs (SQLite in tmp_path unless a URL is given); all stopped after."""
    running: list[RunningHub] = []

    async def start(database_url: str | None = None, **overrides: object) -> RunningHub:
        url = database_url or f"sqlite:///{tmp_path / 'exchange.db'}"
        config = hub_config(keystore, url, **overrides)
        server = HubServer(config)
        await server.start()
        hub = RunningHub(server, keystore, config)
        running.append(hub)
        return hub

    yield start
    for hub in running:
        for client in hub.clients:
            await client.close()
        await hub.server.stop(grace=1.0)


@pytest.fixture
async def world(start_hub: StartHub, tmp_path: Path) -> AsyncIterator[World]:
    """The exchange of ``tests.flows.world``: a hub and two provider adapters on loopback."""
    from tests.flows.world import running  # it builds on this module

    async with running(start_hub, tmp_path) as built:
        yield built


@pytest.fixture
async def hub(start_hub: StartHub) -> RunningHub:
    """A running hub on SQLite."""
    return await start_hub()
