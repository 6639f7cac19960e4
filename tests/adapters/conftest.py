"""Fixtures for the department side: sources, settings, real adapters over mTLS, a hub caller."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Column, Date, MetaData, String, Table, create_engine

from adapters.backends import open_backend
from adapters.client import channel
from adapters.provider import ProviderServer
from adapters.settings import DepartmentSettings, parse
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import Keystore, TlsIdentity
from exchange.v1 import envelope_pb2, provider_pb2
from tests.conftest import HUB_ID

DEPARTMENT = "js.nj.civil-affairs"
MARRIAGE = "marriage-record"
SUBJECT = "990101199001010019"

CIVIL_ROWS = (
    (SUBJECT, "married", "李四 (demo)", "2018-05-20", "示例市民政局"),
    ("990101199202020029", "divorced", None, "2015-01-01", "示例市民政局"),
)


def civil_database(url: str, table: str = "marriages") -> str:
    """Create the civil-affairs table with two rows in the database at ``url``; return ``url``."""
    engine = create_engine(url)
    metadata = MetaData()
    marriages = Table(
        table,
        metadata,
        Column("citizen_id", String(32), primary_key=True),
        Column("status", String(32), nullable=False),
        Column("spouse", String(64)),
        Column("reg_date", Date),
        Column("office", String(64)),
        Column("hub_ref", String(64)),
        Column("collected_by", String(128)),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            marriages.insert(),
            [
                {
                    "citizen_id": row[0],
                    "status": row[1],
                    "spouse": row[2],
                    "reg_date": dt.date.fromisoformat(row[3]),
                    "office": row[4],
                }
                for row in CIVIL_ROWS
            ],
        )
    engine.dispose()
    return url


def sql_settings(
    url: str,
    keys_dir: Path,
    base: Path,
    *,
    table: str = "marriages",
    material: dict[str, Any] | None = None,
) -> DepartmentSettings:
    """Settings mapping the civil-affairs table (overridable per test)."""
    mapping: dict[str, Any] = material or {
        "table": table,
        "subject_column": "citizen_id",
        "fields": {
            "marital_status": "status",
            "spouse_name": "spouse",
            "registered_on": "reg_date",
        },
        "store": {
            "table": table,
            "reference_column": "hub_ref",
            "submitted_by_column": "collected_by",
        },
    }
    return parse(
        {
            "department": {
                "id": DEPARTMENT,
                "listen": "127.0.0.1:0",
                "keys_dir": str(keys_dir),
                "hub_id": HUB_ID,
            },
            "backend": {"kind": "sql", "url": url},
            "materials": {MARRIAGE: mapping},
        },
        base,
    )


@pytest.fixture
def department_keystore(keystore: Keystore) -> Keystore:
    """The shared test keystore with the civil-affairs department's keys (server cert too)."""
    keystore.add_department(DEPARTMENT, server_names=("localhost", "127.0.0.1"))
    return keystore


StartAdapter = Callable[[DepartmentSettings], Awaitable[ProviderServer]]


@pytest.fixture
async def start_adapter() -> AsyncIterator[StartAdapter]:
    """A factory starting adapters on free loopback ports; all stopped afterwards."""
    running: list[ProviderServer] = []

    async def start(settings: DepartmentSettings) -> ProviderServer:
        server = ProviderServer(settings, open_backend(settings))
        await server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(grace=0.5)


@dataclass
class HubCaller:
    """Calls an adapter the way the hub does: hub client certificate, hub-signed envelopes."""

    target: str
    tls: TlsIdentity
    key: SigningKey
    hub_id: str = HUB_ID
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def envelope(self, body: Any, *, issued_us: int | None = None) -> envelope_pb2.Envelope:
        body.header.department_id = body.header.department_id or self.hub_id
        body.header.request_id = body.header.request_id or f"req-{now_us()}"
        body.header.issued_at.CopyFrom(to_timestamp(issued_us or now_us()))
        return sign(body.SerializeToString(deterministic=True), body.DESCRIPTOR.full_name, self.key)

    def stub(self, tls: TlsIdentity | None = None) -> Any:
        ch = channel(self.target, tls or self.tls, "localhost")
        self.channels.append(ch)
        from exchange.v1 import provider_pb2_grpc

        return provider_pb2_grpc.ProviderStub(ch)

    async def fetch(
        self, body: provider_pb2.FetchRequest, **kwargs: Any
    ) -> provider_pb2.FetchResponse:
        answer: provider_pb2.FetchResponse = await self.stub().Fetch(
            self.envelope(body, **kwargs), timeout=10
        )
        return answer

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close(None)


MakeCaller = Callable[[ProviderServer], HubCaller]


@pytest.fixture
async def hub_caller(department_keystore: Keystore) -> AsyncIterator[MakeCaller]:
    """Make a HubCaller for a running adapter (hub operator certificate and hub key)."""
    made: list[HubCaller] = []

    def make(server: ProviderServer) -> HubCaller:
        caller = HubCaller(
            f"127.0.0.1:{server.port}",
            department_keystore.operator_tls(),
            department_keystore.hub_signing_key(),
        )
        made.append(caller)
        return caller

    yield make
    for caller in made:
        await caller.close()
