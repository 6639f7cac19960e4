"""The provider adapter over real mTLS: only the hub, only hub-signed, only the fields named."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.backends import open_backend
from adapters.client import channel
from adapters.errors import MappingError
from adapters.provider import ProviderServer
from exchange.clock import now_us
from exchange.crypto.envelope import sign, verify
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import Keystore
from exchange.rpc.status import error_info
from exchange.v1 import envelope_pb2, exchange_pb2, provider_pb2
from tests.adapters.conftest import (
    DEPARTMENT,
    MARRIAGE,
    SUBJECT,
    MakeCaller,
    StartAdapter,
    civil_database,
    sql_settings,
)


@pytest.fixture
async def adapter(
    department_keystore: Keystore, tmp_path: Path, start_adapter: StartAdapter
) -> ProviderServer:
    url = civil_database(f"sqlite:///{tmp_path / 'civil.db'}")
    return await start_adapter(sql_settings(url, department_keystore.root, tmp_path))


def fetch_body(*fields: str, **kwargs: object) -> provider_pb2.FetchRequest:
    return provider_pb2.FetchRequest(
        material_type=MARRIAGE,
        subject_id=SUBJECT,
        fields=list(fields),
        consumer="js.nj.social-security",
        purpose="pension-eligibility",
        **kwargs,  # type: ignore[arg-type]
    )


def refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    info = error_info(error.trailing_metadata())
    return error.code(), info.reason if info is not None else ""


async def test_fetch_returns_a_department_signed_record_of_exactly_the_named_fields(
    adapter: ProviderServer, hub_caller: MakeCaller, department_keystore: Keystore
) -> None:
    body = fetch_body("marital_status", "registered_on", reference="ref-7", version=3)
    body.header.request_id = "hub-req-1"
    answer = await hub_caller(adapter).fetch(body)
    assert answer.found
    key = department_keystore.department_signing_key(DEPARTMENT)
    verify(answer.material, {key.keyid: key.public_bytes}.get)
    assert answer.material.payload_type == "exchange.v1.MaterialRecord"
    record = exchange_pb2.MaterialRecord.FromString(answer.material.payload)
    assert dict(record.fields) == {"marital_status": "married", "registered_on": "2018-05-20"}
    assert "spouse_name" not in record.fields  # never more than asked
    assert (record.request_id, record.holder, record.reference, record.version) == (
        "hub-req-1",
        DEPARTMENT,
        "ref-7",
        3,
    )
    assert abs(record.issued_at.seconds - now_us() // 1_000_000) < 5


async def test_fetch_of_a_subject_not_held_is_not_found(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    body = fetch_body("marital_status")
    body.subject_id = "990000000000000000"
    answer = await hub_caller(adapter).fetch(body)
    assert not answer.found and not answer.material.payload


async def test_field_not_in_the_mapping_is_invalid_argument_and_nothing_returned(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hub_caller(adapter).fetch(fetch_body("marital_status", "income"))
    assert refusal(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FIELD")
    assert "income" in (caught.value.details() or "")


async def test_no_fields_named_is_refused(adapter: ProviderServer, hub_caller: MakeCaller) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hub_caller(adapter).fetch(fetch_body())
    assert refusal(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FIELD")


async def test_unknown_material_type_is_not_found(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    body = fetch_body("marital_status")
    body.material_type = "income-record"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hub_caller(adapter).fetch(body)
    assert refusal(caught.value) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_MATERIAL_TYPE")


async def test_envelope_not_signed_by_the_hub_is_refused(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    caller.key = SigningKey.generate()  # the right certificate, a stranger's signature
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.fetch(fetch_body("marital_status"))
    assert refusal(caught.value) == (grpc.StatusCode.UNAUTHENTICATED, "NOT_FROM_HUB")


async def test_tampered_hub_envelope_is_a_bad_signature(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    envelope = caller.envelope(fetch_body("marital_status"))
    body = provider_pb2.FetchRequest.FromString(envelope.payload)
    body.fields.append("spouse_name")  # widen the request after the hub signed it
    envelope.payload = body.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub().Fetch(envelope, timeout=10)
    assert refusal(caught.value) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")


async def test_peer_that_is_not_the_hub_is_refused(
    adapter: ProviderServer, hub_caller: MakeCaller, department_keystore: Keystore
) -> None:
    department_keystore.add_department("js.nj.social-security")
    caller = hub_caller(adapter)
    stub = caller.stub(department_keystore.department_tls("js.nj.social-security"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fetch(caller.envelope(fetch_body("marital_status")), timeout=10)
    assert refusal(caught.value) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_FROM_HUB")


async def test_request_outside_the_replay_window_is_stale(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hub_caller(adapter).fetch(
            fetch_body("marital_status"), issued_us=now_us() - 10 * 60 * 1_000_000
        )
    assert refusal(caught.value) == (grpc.StatusCode.UNAUTHENTICATED, "STALE_REQUEST")


async def test_wrong_payload_type_is_refused(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    body = fetch_body("marital_status")
    caller.envelope(body)
    envelope = sign(body.SerializeToString(), "exchange.v1.StoreRequest", caller.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub().Fetch(envelope, timeout=10)
    assert refusal(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TYPE_MISMATCH")


async def test_store_writes_and_answers_with_the_signed_record(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    body = provider_pb2.StoreRequest(
        material_type=MARRIAGE,
        subject_id="990101198803030033",
        fields={"marital_status": "married", "spouse_name": "赵六 (demo)"},
        reference="ref-new",
        version=1,
        submitted_by="demo.township-office",
    )
    envelope = caller.envelope(body)
    stub = caller.stub()
    first = await stub.Store(envelope, timeout=10)
    record = exchange_pb2.MaterialRecord.FromString(first.material.payload)
    assert dict(record.fields) == dict(body.fields) and record.reference == "ref-new"
    again = await stub.Store(envelope, timeout=10)  # a retry: the first answer, no second write
    assert again == first
    fetched = await caller.fetch(
        provider_pb2.FetchRequest(
            material_type=MARRIAGE, subject_id="990101198803030033", fields=["spouse_name"]
        )
    )
    assert dict(exchange_pb2.MaterialRecord.FromString(fetched.material.payload).fields) == {
        "spouse_name": "赵六 (demo)"
    }
    body.fields["spouse_name"] = "someone else"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Store(caller.envelope(body), timeout=10)  # same request id, other bytes
    assert refusal(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_pending_store_is_invisible_until_settled_and_listed_meanwhile(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    stub = caller.stub()
    subject = "990101198803030033"
    body = provider_pb2.StoreRequest(
        material_type=MARRIAGE,
        subject_id=subject,
        fields={"marital_status": "married"},
        reference="ref-pending",
        version=1,
        submitted_by="demo.township-office",
        pending=True,
    )
    body.header.request_id = "store-1"
    answer = await stub.Store(caller.envelope(body), timeout=10)
    assert answer.pending
    fetch = provider_pb2.FetchRequest(
        material_type=MARRIAGE, subject_id=subject, fields=["marital_status"]
    )
    assert not (await caller.fetch(fetch)).found  # pending: invisible to Fetch
    listed = await stub.Inventory(
        caller.envelope(provider_pb2.InventoryRequest(material_type=MARRIAGE)), timeout=10
    )
    assert [(p.store_request_id, p.subject_id, p.reference) for p in listed.pending] == [
        ("store-1", subject, "ref-pending")
    ]
    assert subject not in {h.subject_id for h in listed.held}

    def settle(commit: bool, store: str = "store-1") -> envelope_pb2.Envelope:
        return caller.envelope(provider_pb2.SettleRequest(store_request_id=store, commit=commit))

    assert (await stub.Settle(settle(True), timeout=10)).found
    fetched = await caller.fetch(fetch)
    assert fetched.found
    assert (await stub.Settle(settle(True), timeout=10)).found  # the same way again: the same
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Settle(settle(False), timeout=10)  # the other way: refused
    assert refusal(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    assert not (await stub.Settle(settle(False, "never-stored"), timeout=10)).found
    listed = await stub.Inventory(
        caller.envelope(provider_pb2.InventoryRequest(material_type=MARRIAGE)), timeout=10
    )
    assert list(listed.pending) == [] and subject in {h.subject_id for h in listed.held}
    assert adapter.calls["Settle"] == 4 and adapter.calls["Store"] == 1


async def test_aborted_pending_store_writes_nothing(
    adapter: ProviderServer, hub_caller: MakeCaller
) -> None:
    caller = hub_caller(adapter)
    stub = caller.stub()
    body = provider_pb2.StoreRequest(
        material_type=MARRIAGE,
        subject_id="990101198803030033",
        fields={"marital_status": "married"},
        reference="ref-aborted",
        version=1,
        pending=True,
    )
    body.header.request_id = "store-2"
    await stub.Store(caller.envelope(body), timeout=10)
    abort = provider_pb2.SettleRequest(store_request_id="store-2", commit=False)
    assert (await stub.Settle(caller.envelope(abort), timeout=10)).found
    fetch = provider_pb2.FetchRequest(
        material_type=MARRIAGE, subject_id="990101198803030033", fields=["marital_status"]
    )
    assert not (await caller.fetch(fetch)).found


async def test_health_is_serving(adapter: ProviderServer, department_keystore: Keystore) -> None:
    async with channel(
        f"127.0.0.1:{adapter.port}", department_keystore.operator_tls(), "localhost"
    ) as ch:
        answer = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="exchange.v1.Provider"), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_adapter_with_a_bad_mapping_does_not_start(
    department_keystore: Keystore, tmp_path: Path
) -> None:
    url = civil_database(f"sqlite:///{tmp_path / 'civil.db'}")
    settings = sql_settings(url, department_keystore.root, tmp_path, table="marriage")
    server = ProviderServer(settings, open_backend(settings))
    with pytest.raises(MappingError, match="table 'marriage' does not exist"):
        await server.start()
