"""The same hub on PostgreSQL: schema by Alembic, registry, authentication and the exchange
flows work alike."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.client import HubClient, Identity, Refused
from exchange.flows.submit import submission_lock_key
from exchange.store.loop_connections import AsyncConnections
from exchange.v1 import ledger_pb2, registry_pb2
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CIVIL,
    MARRIAGE,
    SOCIAL,
    World,
    build,
    grant_marital_status,
)


async def test_hub_on_postgresql_registers_and_authenticates(
    postgres_url: str, start_hub: StartHub
) -> None:
    hub = await start_hub(postgres_url)
    client = await hub.register("js.nj.civil-affairs")
    answer = await client.list_departments()
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


@contextlib.asynccontextmanager
async def _world(
    start_hub: StartHub, url: str, tmp_path: Path, provider_timeout_ms: int
) -> AsyncIterator[World]:
    """The flows' world (two provider adapters, everyone registered) on a PostgreSQL hub."""
    world = await build(await start_hub(url, provider_timeout_ms=provider_timeout_ms), tmp_path)
    try:
        yield world
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_requests_on_postgresql_read_the_index_on_the_loop(
    postgres_url: str, start_hub: StartHub, tmp_path: Path
) -> None:
    # The index is read on the loop's own psycopg connections
    # (store.loop_connections.AsyncConnections): a Request sees the current version, and a new
    # version at once.
    async with _world(start_hub, postgres_url, tmp_path, 1500) as world:
        await grant_marital_status(world)
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
        readers = world.hub.server.hub.index._readers
        assert readers is not None and readers.opened >= 1  # the reads went through them


async def test_two_hubs_decide_concurrent_submissions_one_at_a_time(
    postgres_url: str, start_hub: StartHub, tmp_path: Path
) -> None:
    # Two hub processes on one database (here two hubs in one process, each with its own
    # in-process locks) receive the owner's two different submissions for a subject with
    # nothing on file. Decided together, both would store version 1 under one reference, the
    # second overwriting the first at the adapter while the index kept the first.
    async with _world(start_hub, postgres_url, tmp_path, 5000) as world:
        second = await start_hub(postgres_url, provider_timeout_ms=5000)
        store = world.hub.keystore
        via_second = HubClient(
            f"127.0.0.1:{second.server.port}",
            Identity(CIVIL, store.department_signing_key(CIVIL), store.department_tls(CIVIL)),
            server_name="localhost",
        )
        second.clients.append(via_second)  # closed with its hub
        world.spies[CIVIL].store_delay = 0.3  # both submissions are in flight together
        subject = "320102199505051238"
        married = {
            "marital_status": "married",
            "spouse_name": "周五",
            "registered_on": "2019-01-02",
        }
        divorced = dict(married, marital_status="divorced")
        answers = await asyncio.gather(
            world.clients[CIVIL].submit(MARRIAGE, subject, married),
            via_second.submit(MARRIAGE, subject, divorced),
        )
        assert sorted(a.outcome for a in answers) == ["NEW_VERSION", "STORED"]
        latest = "married" if answers[0].outcome == "NEW_VERSION" else "divorced"
        await grant_marital_status(world)
        # The index and the adapter agree: the later decision is what is on file.
        material = await world.clients[SOCIAL].request(MARRIAGE, subject, purpose=ASSISTANCE)
        assert material.fields == {"marital_status": latest} and material.version == 2


async def test_a_submission_waits_for_the_lock_no_longer_than_its_bound(
    postgres_url: str, start_hub: StartHub, tmp_path: Path
) -> None:
    # Another hub process holds the submission lock of a subject (here: held directly).
    async with _world(start_hub, postgres_url, tmp_path, 500) as world:
        hub = world.hub.server.hub
        subject = "320102199606061232"
        fields = {"marital_status": "married", "spouse_name": "吴六", "registered_on": "2020-02-02"}
        other = AsyncConnections(hub.engine, "other_hub")
        key = submission_lock_key(MARRIAGE, hub.content_keys.subject_ref(subject))
        try:
            async with other.advisory_lock(key):
                started = time.monotonic()
                error = await _refused(world.clients[CIVIL].submit(MARRIAGE, subject, fields))
                waited = time.monotonic() - started
        finally:
            await other.close()
        # 2 x the provider timeout + 1 s, then a refusal to retry, recorded like any other.
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "INTERNAL_ERROR")
        assert "still being decided" in error.message and 1.5 < waited < 10
        entry = world.last_entry()
        assert entry.kind == ledger_pb2.SUBMIT and entry.outcome == ledger_pb2.FAILED
        # Once the lock is free, the retry is decided.
        answer = await world.clients[CIVIL].submit(MARRIAGE, subject, fields)
        assert answer.outcome == "STORED"


async def _refused(call: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    return caught.value
