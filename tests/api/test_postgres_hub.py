"""The same hub on PostgreSQL: schema by Alembic, registry, authentication and the exchange
flows work alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from adapters.client import HubClient, Identity, Refused
from exchange.v1 import grants_pb2, registry_pb2
from tests.conftest import StartHub
from tests.flows.world import ANNA, ASSISTANCE, CIVIL, MARRIAGE, SOCIAL, World, build


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


async def _grant_marital_status(world: World) -> None:
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


@pytest.mark.postgres
async def test_requests_on_postgresql_read_the_index_on_the_loop(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    # The index is read on the loop's own psycopg connections (store.database.AsyncConnections):
    # a Request sees the current version, and a new version at once.
    hub = await start_hub(postgres_url, provider_timeout_ms=1500)
    world = await build(hub, tmp_path)
    try:
        await _grant_marital_status(world)
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


@pytest.mark.postgres
async def test_two_hubs_decide_concurrent_submissions_one_at_a_time(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    # Two hub processes on one database (here two hubs in one process, each with its own
    # in-process locks) receive the owner's two different submissions for a subject with
    # nothing on file. Decided together, both would store version 1 under one reference, the
    # second overwriting the first at the adapter while the index kept the first.
    first = await start_hub(postgres_url, provider_timeout_ms=5000)
    world = await build(first, tmp_path)
    second = await start_hub(postgres_url, provider_timeout_ms=5000)
    store = first.keystore
    via_second = HubClient(
        f"127.0.0.1:{second.server.port}",
        Identity(CIVIL, store.department_signing_key(CIVIL), store.department_tls(CIVIL)),
        server_name="localhost",
    )
    world.spies[CIVIL].store_delay = 0.3  # both submissions are in flight together
    subject = "320102199505051234"
    married = {"marital_status": "married", "spouse_name": "周五", "registered_on": "2019-01-02"}
    divorced = dict(married, marital_status="divorced")
    try:
        answers = await asyncio.gather(
            world.clients[CIVIL].submit(MARRIAGE, subject, married),
            via_second.submit(MARRIAGE, subject, divorced),
        )
        assert sorted(a.outcome for a in answers) == ["NEW_VERSION", "STORED"]
        latest = "married" if answers[0].outcome == "NEW_VERSION" else "divorced"
        await _grant_marital_status(world)
        # The index and the adapter agree: the later decision is what is on file.
        material = await world.clients[SOCIAL].request(MARRIAGE, subject, purpose=ASSISTANCE)
        assert material.fields == {"marital_status": latest} and material.version == 2
    finally:
        await via_second.close()
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
