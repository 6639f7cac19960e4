"""Fairness limits against a real hub: a call over its department's share waits its turn while
other departments pass; one that finds the queue full, or whose deadline comes first, is refused
with its reason, a RetryInfo and an entry; streams over their share are refused at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from adapters.auditor import stream_entries
from adapters.client import HubClient, Refused
from exchange.api.limits import Kind
from exchange.config import LimitsConfig
from exchange.rpc.status import DETAILS_KEY
from exchange.v1 import (
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    ledger_pb2,
    registry_pb2,
)
from tests.conftest import RunningHub, StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CIVIL,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
    build,
    grant_marital_status,
)

REQUEST = "/exchange.v1.Exchange/Request"
CHECK = "/exchange.v1.Exchange/Check"
CHECK_RESPONSE = exchange_pb2.CheckResponse
DEPARTMENTS = registry_pb2.ListDepartmentsResponse


@pytest.fixture
async def open_world(
    start_hub: StartHub, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[World]]]:
    """Opens the flow tests' exchange on a hub with the limits given, a grant to social
    security, and the civil-affairs holder answering only after a second (so calls stay in
    progress); stops its adapters after the test."""
    opened: list[World] = []

    async def start(**limits: int) -> World:
        hub = await start_hub(
            provider_timeout_ms=10_000, limits=dataclasses.replace(LimitsConfig(), **limits)
        )
        world = await granted(await build(hub, tmp_path))
        opened.append(world)
        return world

    yield start
    for world in opened:
        world.spies[CIVIL].delay = 0.0
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def granted(world: World) -> World:
    await grant_marital_status(world)
    world.spies[CIVIL].delay = 1.0
    return world


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (checked every 10 ms, for at most 20 s)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def in_progress(hub: RunningHub, kind: Kind, department: str | None = None) -> int:
    return hub.server.pipeline.limits.in_use(kind, department)


async def hold_requests(world: World, n: int) -> list[asyncio.Task[object]]:
    """Start ``n`` Requests of social security that stay in progress at the slow holder."""
    client = world.clients[SOCIAL]
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(client.request(MARRIAGE, ANNA, purpose=ASSISTANCE)) for _ in range(n)
    ]
    await until(lambda: in_progress(world.hub, Kind.CALL, SOCIAL) == n)
    return tasks


async def raw_refusal(client: HubClient, method: str, body: object) -> status_pb2.Status:
    """Call ``method`` without the SDK's decoding and return the refusal's google.rpc.Status."""
    call = client.channel.unary_unary(
        method, request_serializer=envelope_pb2.Envelope.SerializeToString
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(client.envelope(body), timeout=20)  # type: ignore[arg-type]
    details = dict(caught.value.trailing_metadata() or ())[DETAILS_KEY]
    return status_pb2.Status.FromString(details)


def retry_info(status: status_pb2.Status) -> error_details_pb2.RetryInfo | None:
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def entry_at(hub: RunningHub, sequence: int | None) -> ledger_pb2.LedgerEntry:
    assert sequence is not None, "the refusal names no ledger entry"
    (stored,) = hub.server.hub.ledger.entries(sequence, 1)
    return stored.decode()


async def refused(call: Awaitable[object]) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    return caught.value


def check_body() -> exchange_pb2.CheckRequest:
    return exchange_pb2.CheckRequest(material_type=MARRIAGE, subject_id=ANNA)


async def test_a_call_over_its_departments_share_waits_its_turn_and_others_pass(
    open_world: Callable[..., Awaitable[World]],
) -> None:
    world = await open_world(calls_per_department=2, calls_per_certificate=2)
    held = await hold_requests(world, 2)
    waiting = asyncio.create_task(world.clients[SOCIAL].check(MARRIAGE, ANNA))
    await until(lambda: world.hub.server.pipeline.limits.waiting(SOCIAL) == 1)
    # Another department is not held up by social security's queue.
    assert (await world.clients[TOWNSHIP].check(MARRIAGE, ANNA)).on_file
    assert not waiting.done()
    world.spies[CIVIL].delay = 0.0
    await asyncio.gather(*held)
    assert (await waiting).on_file  # its turn came when a slot was given back
    assert in_progress(world.hub, Kind.CALL) == 0


async def test_a_call_finding_its_departments_queue_full_is_refused_with_reason_and_entry(
    open_world: Callable[..., Awaitable[World]],
) -> None:
    # calls_backlogged at the share: with a queue of one, the waiting Check must get the first
    # slot freed, or the SDK's follow-up call after a held Request would find the queue full.
    world = await open_world(
        calls_per_department=2,
        calls_per_certificate=2,
        calls_queued_per_department=1,
        calls_backlogged=2,
    )
    held = await hold_requests(world, 2)
    waiting = asyncio.create_task(world.clients[SOCIAL].check(MARRIAGE, ANNA))
    await until(lambda: world.hub.server.pipeline.limits.waiting(SOCIAL) == 1)
    status = await raw_refusal(world.clients[SOCIAL], CHECK, check_body())
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    delay = retry_info(status)
    assert delay is not None and delay.retry_delay.ToMilliseconds() == 200
    error = await refused(world.clients[SOCIAL].check(MARRIAGE, ANNA))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS")
    entry = entry_at(world.hub, error.ledger_sequence)
    assert (entry.actor, entry.kind, entry.outcome, entry.reason) == (
        SOCIAL,
        ledger_pb2.CHECK,
        ledger_pb2.REFUSED,
        common_pb2.TOO_MANY_CALLS,
    )
    assert entry.attributes["limit"] == "department"
    assert (await world.clients[TOWNSHIP].check(MARRIAGE, ANNA)).on_file
    world.spies[CIVIL].delay = 0.0
    for material in await asyncio.gather(*held):
        assert material.fields == {"marital_status": "married"}  # type: ignore[attr-defined]
    assert (await waiting).on_file
    # The slots came back: the department is served again at once.
    await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert in_progress(world.hub, Kind.CALL) == 0


async def test_a_call_whose_turn_does_not_come_before_its_deadline_is_refused(
    open_world: Callable[..., Awaitable[World]],
) -> None:
    world = await open_world(calls_per_department=1, calls_per_certificate=1)
    world.spies[CIVIL].delay = 3.0
    held = await hold_requests(world, 1)
    with pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].call(CHECK, check_body(), CHECK_RESPONSE, timeout=1.0)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_CALLS",
    )
    assert "deadline" in caught.value.message
    assert entry_at(world.hub, caught.value.ledger_sequence).reason == common_pb2.TOO_MANY_CALLS
    assert world.hub.server.pipeline.limits.waiting() == 0
    await asyncio.gather(*held)


async def test_calls_over_a_certificates_share_wait_for_that_certificate(
    open_world: Callable[..., Awaitable[World]],
) -> None:
    world = await open_world(
        calls_per_department=8, calls_per_certificate=1, calls_queued_per_department=1
    )
    held = await hold_requests(world, 1)
    waiting = asyncio.create_task(world.clients[SOCIAL].check(MARRIAGE, ANNA))
    await until(lambda: world.hub.server.pipeline.limits.waiting(SOCIAL) == 1)
    error = await refused(world.clients[SOCIAL].check(MARRIAGE, ANNA))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS")
    assert entry_at(world.hub, error.ledger_sequence).attributes["limit"] == "department"
    assert (await world.clients[TOWNSHIP].check(MARRIAGE, ANNA)).on_file
    world.spies[CIVIL].delay = 0.0
    await asyncio.gather(*held)
    assert (await waiting).on_file


async def test_a_full_hub_queue_refuses_with_hub_busy(
    open_world: Callable[..., Awaitable[World]],
) -> None:
    world = await open_world(calls=2, calls_queued=1)
    held = await hold_requests(world, 2)
    waiting = asyncio.create_task(world.clients[TOWNSHIP].check(MARRIAGE, ANNA))
    await until(lambda: world.hub.server.pipeline.limits.waiting() == 1)
    error = await refused(world.clients[TOWNSHIP].check(MARRIAGE, ANNA))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "HUB_BUSY")
    entry = entry_at(world.hub, error.ledger_sequence)
    assert (entry.actor, entry.reason, entry.attributes["limit"]) == (
        TOWNSHIP,
        common_pb2.HUB_BUSY,
        "hub",
    )
    world.spies[CIVIL].delay = 0.0
    await asyncio.gather(*held)
    assert (await waiting).on_file


async def test_streams_over_the_departments_share_are_refused_and_others_open(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(limits=LimitsConfig(streams_per_department=2, streams_per_certificate=2))
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    other = await hub.register("js.audit.province", (common_pb2.AUDITOR,))
    first_items: list[asyncio.Event] = []

    async def follow(client: HubClient) -> None:
        arrived = asyncio.Event()
        first_items.append(arrived)
        async for _ in stream_entries(client, 0, follow=True):
            arrived.set()

    followers = [asyncio.create_task(follow(auditor)) for _ in range(2)]
    await until(lambda: in_progress(hub, Kind.STREAM, "js.audit") == 2)
    error = await refused(anext(stream_entries(auditor, 0, follow=True)))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
    entry = entry_at(hub, error.ledger_sequence)
    assert (entry.actor, entry.reason, entry.attributes["limit_kind"]) == (
        "js.audit",
        common_pb2.TOO_MANY_STREAMS,
        "stream",
    )
    # Another auditor still opens its stream; a closed stream gives its slot back.
    first = await anext(stream_entries(other, 0))
    assert first.sequence == 0
    followers[0].cancel()
    await until(lambda: in_progress(hub, Kind.STREAM, "js.audit") == 1)
    again = await anext(stream_entries(auditor, 0, follow=True))
    assert again.sequence == 0
    followers[1].cancel()
    await asyncio.gather(*followers, return_exceptions=True)


async def test_followers_through_the_hub_share_one_reader(start_hub: StartHub) -> None:
    hub = await start_hub(limits=LimitsConfig(streams_per_certificate=16))
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    member = await hub.register("js.nj.civil-affairs")
    followers = 12
    seen: list[list[int]] = [[] for _ in range(followers)]

    async def follow(into: list[int]) -> None:
        async for record in stream_entries(auditor, 0, follow=True):
            into.append(record.sequence)

    tasks = [asyncio.create_task(follow(into)) for into in seen]
    feed = hub.server.hub.feed
    await until(lambda: feed.followers == followers)
    ledger = hub.server.hub.ledger
    reads, commits = feed.reads, ledger.commit_count
    for _ in range(6):
        await member.list_departments()
        size = ledger.size()
        await until(lambda n=size: all(len(into) == n for into in seen))
    committed = ledger.commit_count - commits
    # One stream reading for itself would make at least followers x commits reads.
    assert feed.reads - reads < followers * committed / 2
    assert all(into == list(range(ledger.size())) for into in seen)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
