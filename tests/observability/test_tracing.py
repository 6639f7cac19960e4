"""Traces exported over OTLP to a collector in this process (a real gRPC TraceService): a call's
stages as spans, the W3C trace context carried from the hub to the holder's adapter, and no
personal data in any attribute. Tracing is off unless configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from exchange.observability import tracing
from tests.conftest import StartHub
from tests.flows.world import ANNA, ASSISTANCE, HOUSEHOLD, SOCIAL, World, build


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    server = grpc.aio.server()
    kept = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield kept, f"http://127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def traced_world(
    collector: tuple[Collector, str], start_hub: StartHub, tmp_path: Path
) -> AsyncIterator[World]:
    hub = await start_hub(otlp_endpoint=collector[1])
    built = await build(hub, tmp_path)
    yield built
    for adapter in built.adapters.values():
        await adapter.stop(grace=0.2)
    tracing.shutdown()


async def test_a_call_is_traced_stage_by_stage_into_the_holder(
    traced_world: World, collector: tuple[Collector, str]
) -> None:
    kept, _ = collector
    await traced_world.clients[SOCIAL].request(HOUSEHOLD, ANNA, purpose=ASSISTANCE)
    await traced_world.clients[SOCIAL].close()
    await asyncio.to_thread(tracing.shutdown)  # flush the batch to the collector
    request_calls = [
        s
        for s in kept.spans
        if s.name == "exchange.call"
        and any(a.value.string_value.endswith("/Request") for a in s.attributes)
    ]
    assert len(request_calls) == 1
    trace = request_calls[0].trace_id
    names = {s.name for s in kept.spans if s.trace_id == trace}
    assert {
        "exchange.call",
        "exchange.authenticate",
        "exchange.claim",
        "exchange.flow",
        "exchange.holder",
        "exchange.ledger.append",
        "adapter.Fetch",
    } <= names
    holder = next(s for s in kept.spans if s.trace_id == trace and s.name == "exchange.holder")
    adapter = next(s for s in kept.spans if s.trace_id == trace and s.name == "adapter.Fetch")
    assert adapter.parent_span_id == holder.span_id  # the W3C context crossed to the adapter
    for s in kept.spans:
        for attribute in s.attributes:
            assert ANNA not in str(attribute.value)


def test_tracing_is_off_unless_configured() -> None:
    assert not tracing.enabled()
    assert tracing.outgoing_metadata() is None
    with tracing.span("nothing") as current:
        assert current is None
