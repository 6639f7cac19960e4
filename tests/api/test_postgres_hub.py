"""The same hub on PostgreSQL: schema by Alembic, registry, authentication and the exchange
flows work alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from adapters.client import Refused
from exchange.v1 import grants_pb2, registry_pb2
from tests.conftest import StartHub
from tests.flows.world import ANNA, ASSISTANCE, CIVIL, MARRIAGE, SOCIAL, build


@pytest.mark.postgres
async def test_hub_on_postgresql_registers_and_authenticates(
    start_hub: StartHub, postgres_url: str
) -> None:
    hub = await start_hub(postgres_url)
    client = await hub.register("js.nj.civil-affairs")
    answer = await client.call(
        "/exchange.v1.Registry/ListDepartments",
        registry_pb2.ListDepartmentsRequest(),
        registry_pb2.ListDepartmentsResponse,
    )
    assert [d.id for d in answer.departments] == ["js.nj.civil-affairs"]
    envelope = client.envelope(registry_pb2.ListDepartmentsRequest())
    envelope.signatures[0].sig = bytes(64)
    with pytest.raises(Refused) as caught:
        await client.send(
            "/exchange.v1.Registry/ListDepartments", envelope, registry_pb2.ListDepartmentsResponse
        )
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_SIGNATURE",
    )


@pytest.mark.postgres
async def test_requests_on_postgresql_read_the_index_on_the_loop(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    # The index is read on the loop's own psycopg connections (store.database.AsyncReaders):
    # a Request sees the current version, and a new version at once.
    hub = await start_hub(postgres_url, provider_timeout_ms=1500)
    world = await build(hub, tmp_path)
    try:
        await world.clients[CIVIL].call(
            "/exchange.v1.Grants/IssueGrant",
            grants_pb2.IssueGrantRequest(
                grant=grants_pb2.Grant(
                    consumer=SOCIAL,
                    material_type=MARRIAGE,
                    fields=["marital_status"],
                    purposes=[ASSISTANCE],
                )
            ),
            grants_pb2.GrantResponse,
        )
        first = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
        assert first.fields == {"marital_status": "married"} and first.version == 1
        changed = {
            "marital_status": "divorced",
            "spouse_name": "李四 (demo)",
            "registered_on": "2018-05-20",
        }
        answer = await world.clients[CIVIL].submit(MARRIAGE, ANNA, changed)
        assert answer.outcome == "NEW_VERSION"
        several = await asyncio.gather(
            *(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE) for _ in range(8))
        )
        assert {(m.fields["marital_status"], m.version) for m in several} == {("divorced", 2)}
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
