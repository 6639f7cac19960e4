"""The same hub on PostgreSQL: schema by Alembic, registry and authentication work alike."""

from __future__ import annotations

import grpc
import pytest

from adapters.client import Refused
from exchange.v1 import registry_pb2
from tests.conftest import StartHub


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
