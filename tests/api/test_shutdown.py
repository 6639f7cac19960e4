"""Shutdown of a real hub on loopback (exchange.api.drain): health turns NOT_SERVING first,
calls not started, open streams and calls past the grace are answered UNAVAILABLE
SHUTTING_DOWN, never CANCELLED, and a cut call's retry runs on the restarted hub."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.auditor import stream_entries
from adapters.client import HubClient, Refused, channel
from exchange.v1 import exchange_pb2, ledger_pb2
from tests.conftest import StartHub
from tests.flows.world import ANNA, ASSISTANCE, CIVIL, MARRIAGE, SOCIAL, World, build
from tests.integration.test_flows import grant

REQUEST = "/exchange.v1.Exchange/Request"


async def until(condition: object, seconds: float = 20.0) -> None:
    """Wait until ``condition()`` holds (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_a_call_cut_by_the_grace_is_unavailable_and_its_retry_runs_after_restart(
    start_hub: StartHub, tmp_path: Path
) -> None:
    hub = await start_hub(provider_timeout_ms=5000)
    world: World = await build(hub, tmp_path)
    try:
        await grant(world)
        consumer = world.clients[SOCIAL]  # no retries: the test sees what the hub answers
        world.spies[CIVIL].delay = 4.0
        envelope = consumer.envelope(
            exchange_pb2.MaterialRequest(
                material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE
            )
        )
        in_flight = asyncio.create_task(
            consumer.send(REQUEST, envelope, exchange_pb2.MaterialResponse, timeout=20)
        )
        await until(lambda: world.spies[CIVIL].fetches)  # the call is at the holder
        # A following auditor that has read the whole log and waits for more at shutdown.
        follower = stream_entries(hub.operator, follow=True)
        ledger = hub.server.hub.ledger
        async for record in follower:
            if record.sequence == ledger.size() - 1:
                break
        stopping = asyncio.create_task(hub.server.stop(grace=1.0))
        await until(lambda: hub.server.drain.closed)

        # The stream is cut at once (a read that resumes from its cursor), while the call
        # still has its grace.
        with pytest.raises(Refused) as stream_cut:
            async for _ in follower:
                pass
        assert stream_cut.value.code == grpc.StatusCode.UNAVAILABLE
        assert stream_cut.value.reason == "SHUTTING_DOWN", stream_cut.value
        assert not in_flight.done()

        # Health first: the hub says NOT_SERVING while it still answers.
        async with channel(hub.target, hub.keystore.operator_tls(), "localhost") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not hub.server.is_serving()  # /readyz answers 503

        # A call that has not started is turned away at once, retryable, with nothing done.
        size = hub.server.hub.ledger.size()
        with pytest.raises(Refused) as late:
            await consumer.list_departments()
        assert late.value.code == grpc.StatusCode.UNAVAILABLE
        assert late.value.reason == "SHUTTING_DOWN"
        assert late.value.retry_after is not None and late.value.ledger_sequence is None

        # The call still at the holder when the grace ends is answered UNAVAILABLE too.
        with pytest.raises(Refused) as cut:
            await in_flight
        assert cut.value.code == grpc.StatusCode.UNAVAILABLE, cut.value
        assert cut.value.reason == "SHUTTING_DOWN", (cut.value.code, cut.value.message)
        await stopping
        assert hub.server.hub.ledger.size() == size  # neither call left an entry

        # Restarted on the same database, the hub runs the cut call when it is sent again.
        world.spies[CIVIL].delay = 0.0
        restarted = await start_hub(provider_timeout_ms=5000)
        async with HubClient(restarted.target, consumer.identity, server_name="localhost") as again:
            answer = await again.send(REQUEST, envelope, exchange_pb2.MaterialResponse)
        assert answer.material.payload
        sequence = answer.receipt.sequence
        (stored,) = list(restarted.server.hub.ledger.entries(sequence, sequence + 1))
        entry = stored.decode()
        assert entry.outcome == ledger_pb2.OK and entry.kind == ledger_pb2.REQUEST
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
