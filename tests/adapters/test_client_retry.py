"""The SDK's retries, readiness and channel options against a real hub on loopback: a call
outlives a hub restart within its own deadline, a call waits for a hub that starts late, the
channel's keepalive reaches the wire, and a refusal of policy is never sent twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from adapters.client import (
    ChannelOptions,
    HubClient,
    Identity,
    Refused,
    RetryPolicy,
    retry_delay,
)
from exchange.config import LimitsConfig
from exchange.rpc.status import DETAILS_KEY
from exchange.v1 import common_pb2, registry_pb2
from tests.conftest import HUB_ID, RunningHub, StartHub
from tests.integration.test_hub_process import free_port

LIST = "/exchange.v1.Registry/ListDepartments"
REGISTER = "/exchange.v1.Registry/RegisterDepartment"
DEPARTMENTS = registry_pb2.ListDepartmentsResponse
CIVIL = "js.nj.civil-affairs"


class CountSends(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts the attempts the SDK makes and the bytes of each."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.sent.append(request.SerializeToString())
        return await continuation(details, request)


def operator(hub: RunningHub, target: str, **options: Any) -> HubClient:
    identity = Identity(HUB_ID, hub.keystore.operator_signing_key(), hub.keystore.operator_tls())
    client = HubClient(target, identity, server_name="localhost", **options)
    hub.clients.append(client)
    return client


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    async def holds() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(holds(), seconds)


async def test_a_call_retrying_while_the_hub_restarts_succeeds_within_its_deadline(
    start_hub: StartHub,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    first = await start_hub(listen=listen)
    sends = CountSends()
    client = operator(first, listen, interceptors=[cast(Any, sends)])
    await client.list_departments()
    await first.server.stop(grace=1.0)

    envelope = client.envelope(registry_pb2.ListDepartmentsRequest())
    call = asyncio.create_task(client.send(LIST, envelope, DEPARTMENTS, timeout=60))
    await until(lambda: len(sends.sent) >= 3)  # refused while the hub is down, and retried
    assert not call.done()
    second = await start_hub(listen=listen)
    answer = await call
    # The same bytes every time: one request id, one entry, on the hub that came back.
    assert set(sends.sent[1:]) == {envelope.SerializeToString()}
    stored = list(
        second.server.hub.ledger.entries(answer.receipt.sequence, second.server.hub.ledger.size())
    )
    assert stored[0].leaf_hash == answer.receipt.leaf_hash


async def test_retries_end_at_the_callers_deadline_with_the_last_status(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    sends = CountSends()
    client = operator(hub, f"127.0.0.1:{free_port()}", interceptors=[cast(Any, sends)])
    with pytest.raises(Refused) as gone:
        await client.call(LIST, registry_pb2.ListDepartmentsRequest(), DEPARTMENTS, timeout=1.5)
    assert gone.value.code == grpc.StatusCode.UNAVAILABLE
    assert gone.value.attempts == len(sends.sent) > 1


async def test_wait_for_ready_waits_for_a_hub_that_starts_late(start_hub: StartHub) -> None:
    listen = f"127.0.0.1:{free_port()}"
    # The operator's keys exist before the hub does: the keystore was made first.
    placeholder = await start_hub()
    waiting = operator(placeholder, listen, wait_for_ready=True, retries=0)
    ready = operator(placeholder, listen)
    call = asyncio.create_task(
        waiting.call(LIST, registry_pb2.ListDepartmentsRequest(), DEPARTMENTS, timeout=60)
    )
    readiness = asyncio.create_task(ready.wait_until_ready(timeout=60))
    await asyncio.sleep(0.5)  # not a timing assertion: the hub simply starts later
    assert not call.done() and not readiness.done()
    await start_hub(listen=listen, database_url=placeholder.config.database_url)
    answer = await call  # no retry was made: the call waited for the hub
    assert answer.HasField("receipt")
    await readiness


async def test_wait_until_ready_gives_up_at_its_timeout(start_hub: StartHub) -> None:
    hub = await start_hub()
    client = operator(hub, f"127.0.0.1:{free_port()}")
    with pytest.raises(Refused) as never:
        await client.wait_until_ready(timeout=0.5)
    assert never.value.code == grpc.StatusCode.UNAVAILABLE


async def test_channel_keepalive_options_reach_the_connection(start_hub: StartHub) -> None:
    hub = await start_hub(limits=LimitsConfig(min_ping_interval_ms=60_000))
    client = operator(
        hub,
        hub.target,
        channel_options=ChannelOptions(keepalive_time_ms=50, keepalive_permit_without_calls=True),
    )
    await client.list_departments()
    assert client.channel.get_state() == grpc.ChannelConnectivity.READY
    # Pinging every 50 ms breaks the hub's rule: it closes the connection (GOAWAY).
    await asyncio.wait_for(client.channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 30)
    assert client.channel.get_state() != grpc.ChannelConnectivity.READY
    # The next call reconnects.
    await client.list_departments()
    options = dict(client.channel_options.grpc_options())
    assert options["grpc.max_reconnect_backoff_ms"] == ChannelOptions().max_reconnect_backoff_ms


async def test_a_policy_refusal_is_not_retried(hub: RunningHub) -> None:
    await hub.register(CIVIL)
    sends = CountSends()
    identity = Identity(
        CIVIL, hub.keystore.department_signing_key(CIVIL), hub.keystore.department_tls(CIVIL)
    )
    client = HubClient(
        hub.target, identity, server_name="localhost", interceptors=[cast(Any, sends)]
    )
    hub.clients.append(client)
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id="js.nj.other", name="Other", roles=[common_pb2.CONSUMER]
        )
    )
    with pytest.raises(Refused) as refused:
        await client.call(REGISTER, body, registry_pb2.DepartmentResponse)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.reason == "OPERATOR_ONLY"
    assert refused.value.attempts == 1 and len(sends.sent) == 1


def _trailers(code: int, delay: float | None) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code)
    if delay is not None:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(nanos=int(delay * 1e9))
        )
        status.details.add().Pack(retry)
    return ((DETAILS_KEY, status.SerializeToString()),)


def test_what_the_policy_retries() -> None:
    policy = RetryPolicy()
    assert retry_delay(_trailers(8, 0.2)) == pytest.approx(0.2)
    assert retry_delay(_trailers(8, None)) is None
    assert policy.retryable(grpc.StatusCode.UNAVAILABLE, None)
    assert policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.2)  # TOO_MANY_CALLS, HUB_BUSY
    assert policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, None, "HUB_BUSY")
    assert not policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, None)  # a message too big
    assert not policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, None, "CONSENT_EXHAUSTED")
    # A reason from a newer contract is judged by its status code.
    assert policy.retryable(grpc.StatusCode.UNAVAILABLE, None, "REASON_FROM_THE_FUTURE")
    assert not policy.retryable(grpc.StatusCode.PERMISSION_DENIED, None, "REASON_FROM_THE_FUTURE")
    for final in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    ):
        assert not policy.retryable(final, 1.0)
    # Waits grow, stay under the cap and never undercut the hub's RetryInfo.
    assert all(policy.delay(n, None) <= policy.max_seconds for n in range(1, 40))
    assert policy.delay(1, 3.0) >= 3.0
