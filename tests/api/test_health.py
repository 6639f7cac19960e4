from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.client import channel
from tests.conftest import RunningHub


async def test_health_check_answers_serving_over_mtls(hub: RunningHub) -> None:
    async with channel(hub.target, hub.keystore.operator_tls(), "localhost") as ch:
        answer = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_registry_service_reports_serving(hub: RunningHub) -> None:
    async with channel(hub.target, hub.keystore.operator_tls(), "localhost") as ch:
        answer = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="exchange.v1.Registry"), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_cannot_talk_to_tls_hub(hub: RunningHub) -> None:
    async with grpc.aio.insecure_channel(hub.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("a plaintext call to a TLS hub succeeded")
