"""Every call is authenticated: certificate, signature, key, department, freshness, request id."""

from __future__ import annotations

import grpc
import pytest

from adapters.client import HubClient, Identity, Refused
from exchange.clock import now_us, to_timestamp
from exchange.crypto import certificates
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import TlsIdentity
from exchange.v1 import common_pb2, registry_pb2
from tests.conftest import RunningHub

LIST = "/exchange.v1.Registry/ListDepartments"
GET = "/exchange.v1.Registry/GetDepartment"


def list_body() -> registry_pb2.ListDepartmentsRequest:
    return registry_pb2.ListDepartmentsRequest()


async def refused(coroutine: object) -> Refused:
    with pytest.raises(Refused) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value


async def test_registered_department_call_is_accepted_with_receipt(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    answer = await client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse)
    assert [d.id for d in answer.departments] == ["js.nj.civil-affairs"]
    assert answer.receipt.leaf_hash and answer.receipt.checkpoint.startswith(hub.config.origin)


async def test_no_client_certificate_is_unauthenticated(hub: RunningHub) -> None:
    await hub.register("js.nj.civil-affairs")
    ca_only = TlsIdentity(
        certificate=b"", private_key=b"", ca=hub.keystore.ca_certificate.read_bytes()
    )
    identity = Identity(
        "js.nj.civil-affairs", hub.keystore.department_signing_key("js.nj.civil-affairs"), None
    )
    client = HubClient(hub.target, identity, retries=0)
    client.channel = grpc.aio.secure_channel(
        hub.target,
        grpc.ssl_channel_credentials(root_certificates=ca_only.ca),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    hub.clients.append(client)
    size = hub.server.hub.ledger.size()
    error = await refused(
        client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse, timeout=5)
    )
    # Refused in the TLS handshake (gRPC-Python cannot ask for a certificate without requiring
    # it), so no call reaches the hub and nothing is served or recorded.
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.reason == ""
    assert hub.server.hub.ledger.size() == size


async def test_certificate_of_another_department_is_refused(hub: RunningHub) -> None:
    await hub.register("js.nj.civil-affairs")
    await hub.register("js.nj.public-security")
    identity = Identity(
        "js.nj.civil-affairs",
        hub.keystore.department_signing_key("js.nj.civil-affairs"),
        hub.keystore.department_tls("js.nj.public-security"),
    )
    client = HubClient(hub.target, identity, server_name="localhost", retries=0)
    hub.clients.append(client)
    error = await refused(client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_MISMATCH")


async def test_bad_signature_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    envelope = client.envelope(list_body())
    envelope.signatures[0].sig = bytes(64)
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")


async def test_signature_by_unregistered_key_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    body = list_body()
    client.envelope(body)  # fills the header
    envelope = sign(body.SerializeToString(), body.DESCRIPTOR.full_name, SigningKey.generate())
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_KEY")


async def test_revoked_key_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    key = hub.keystore.department_signing_key("js.nj.civil-affairs")
    await hub.operator.revoke_key(department_id="js.nj.civil-affairs", keyid=key.keyid)
    error = await refused(client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")


async def test_rotated_key_keeps_working_for_grace_then_new_key_signs(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    new_key = SigningKey.generate()
    await hub.operator.rotate_key(
        department_id="js.nj.civil-affairs", new_public_key=new_key.public_bytes, grace_seconds=0
    )
    error = await refused(client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_EXPIRED")
    rotated = HubClient(
        hub.target,
        Identity(
            "js.nj.civil-affairs", new_key, hub.keystore.department_tls("js.nj.civil-affairs")
        ),
        server_name="localhost",
        retries=0,
    )
    hub.clients.append(rotated)
    answer = await rotated.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse)
    assert len(answer.departments) == 1


async def test_unknown_department_is_refused(hub: RunningHub) -> None:
    # A certificate from the trusted CA, but the department was never registered.
    hub.keystore.add_department("js.nj.ghost")
    client = hub.client("js.nj.ghost")
    error = await refused(client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_DEPARTMENT")


async def test_certificate_from_another_ca_fails_the_handshake(hub: RunningHub) -> None:
    await hub.register("js.nj.civil-affairs")
    rogue_ca = certificates.create_ca("rogue")
    rogue = certificates.issue(rogue_ca, "js.nj.civil-affairs")
    identity = Identity(
        "js.nj.civil-affairs",
        hub.keystore.department_signing_key("js.nj.civil-affairs"),
        TlsIdentity(
            rogue.certificate_pem, rogue.private_key_pem, hub.keystore.ca_certificate.read_bytes()
        ),
    )
    client = HubClient(hub.target, identity, server_name="localhost", retries=0)
    hub.clients.append(client)
    error = await refused(
        client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse, timeout=5)
    )
    assert error.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("minutes", [-6, 6])
async def test_issue_time_outside_window_is_refused(hub: RunningHub, minutes: int) -> None:
    client = await hub.register("js.nj.civil-affairs")
    body = list_body()
    client.envelope(body)
    body.header.issued_at.CopyFrom(to_timestamp(now_us() + minutes * 60_000_000))
    envelope = sign(
        body.SerializeToString(), body.DESCRIPTOR.full_name, client.identity.signing_key
    )
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "STALE_REQUEST")


async def test_issue_time_inside_window_is_accepted(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    body = list_body()
    client.envelope(body)
    body.header.issued_at.CopyFrom(to_timestamp(now_us() - 4 * 60_000_000))
    envelope = sign(
        body.SerializeToString(), body.DESCRIPTOR.full_name, client.identity.signing_key
    )
    answer = await client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse)
    assert answer.receipt.leaf_hash


async def test_replay_with_different_bytes_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    await client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse, request_id="r-1")
    other = registry_pb2.GetDepartmentRequest(department_id="js.nj.civil-affairs")
    error = await refused(
        client.call(GET, other, registry_pb2.DepartmentResponse, request_id="r-1")
    )
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_idempotent_retry_returns_the_first_answer_without_a_second_effect(
    hub: RunningHub,
) -> None:
    operator = hub.operator
    key = hub.keystore.add_department("js.nj.civil-affairs")
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id="js.nj.civil-affairs",
            name="Civil Affairs",
            roles=[common_pb2.CONSUMER],
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
    )
    envelope = operator.envelope(body, request_id="register-1")
    method = "/exchange.v1.Registry/RegisterDepartment"
    first = await operator.send(method, envelope, registry_pb2.DepartmentResponse)
    size_after_first = hub.server.hub.ledger.size()
    again = await operator.send(method, envelope, registry_pb2.DepartmentResponse)
    assert again == first
    assert hub.server.hub.ledger.size() == size_after_first


async def test_retry_of_a_refused_call_gets_the_same_refusal(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    body = registry_pb2.GetDepartmentRequest(department_id="js.nj.nobody")
    envelope = client.envelope(body, request_id="get-1")
    first = await refused(client.send(GET, envelope, registry_pb2.DepartmentResponse))
    second = await refused(client.send(GET, envelope, registry_pb2.DepartmentResponse))
    assert (first.code, first.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DEPARTMENT")
    assert (second.code, second.reason, second.ledger_sequence) == (
        first.code,
        first.reason,
        first.ledger_sequence,
    )


async def test_malformed_envelope_is_invalid_argument(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    call = client.channel.unary_unary(
        LIST, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff not an envelope", timeout=5)
    error = Refused.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ENVELOPE")


async def test_payload_that_is_not_the_body_is_malformed(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    envelope = sign(
        b"\xff\xff\xff", "exchange.v1.ListDepartmentsRequest", client.identity.signing_key
    )
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ENVELOPE")


async def test_payload_type_of_another_method_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    envelope = client.envelope(registry_pb2.GetDepartmentRequest(department_id="x"))
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TYPE_MISMATCH")


async def test_unsigned_envelope_is_malformed(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    envelope = client.envelope(list_body())
    del envelope.signatures[:]
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ENVELOPE")


async def test_department_cannot_act_as_operator(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    body = registry_pb2.SetStateRequest(
        department_id="js.nj.civil-affairs", state=registry_pb2.RETIRED
    )
    error = await refused(
        client.call("/exchange.v1.Registry/SetState", body, registry_pb2.DepartmentResponse)
    )
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OPERATOR_ONLY")


async def test_retired_department_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    await hub.operator.set_state(department_id="js.nj.civil-affairs", state=registry_pb2.RETIRED)
    error = await refused(client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "DEPARTMENT_INACTIVE")


async def test_every_refusal_is_a_ledger_entry(hub: RunningHub) -> None:
    from exchange.v1 import ledger_pb2

    client = await hub.register("js.nj.civil-affairs")
    envelope = client.envelope(list_body())
    envelope.signatures[0].sig = bytes(64)
    error = await refused(client.send(LIST, envelope, registry_pb2.ListDepartmentsResponse))
    assert error.ledger_sequence is not None
    (stored,) = hub.server.hub.ledger.entries(error.ledger_sequence, 1)
    entry = ledger_pb2.LedgerEntry.FromString(stored.entry_bytes)
    assert entry.outcome == ledger_pb2.REFUSED
    assert entry.reason == common_pb2.BAD_SIGNATURE
    assert entry.actor == "js.nj.civil-affairs"
    assert entry.kind == ledger_pb2.CALL_REFUSAL


async def test_register_duplicate_department_is_already_exists(hub: RunningHub) -> None:
    await hub.register("js.nj.civil-affairs")
    key = SigningKey.generate()
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id="js.nj.civil-affairs",
            name="Again",
            roles=[common_pb2.CONSUMER],
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
    )
    error = await refused(
        hub.operator.call(
            "/exchange.v1.Registry/RegisterDepartment", body, registry_pb2.DepartmentResponse
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DEPARTMENT_EXISTS")


async def test_request_records_older_than_twice_the_window_are_purged(hub: RunningHub) -> None:
    from exchange.clock import now_us

    client = await hub.register("js.nj.civil-affairs")
    await client.call(LIST, list_body(), registry_pb2.ListDepartmentsResponse, request_id="old-1")
    requests = hub.server.hub.requests
    assert requests.purge(now_us() - 600_000_000) == 0  # younger than the horizon: kept
    assert requests.purge(now_us() + 1) >= 2  # the registration and the list call
