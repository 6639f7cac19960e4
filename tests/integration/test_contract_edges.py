"""The contract against bad input: one person one id, absent means absent, strict signed
payloads, forwarded ids binding the whole request id, values checked at the edge.

Envelopes are built by hand here (not by the SDK, which normalises ids itself), so that what
the hub receives is exactly what a client in another language might send.
"""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import create_engine, text

from adapters.client import HubClient, Refused
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.forwarding import FORWARDED_ID, answers, forwarded_binding
from exchange.policy.disclosure import split
from exchange.rpc.status import error_info
from exchange.v1 import (
    audit_pb2,
    catalog_pb2,
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    grants_pb2,
    registry_pb2,
)
from tests.flows import world as w

FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
CHECK = "/exchange.v1.Exchange/Check"
SUBMIT = "/exchange.v1.Exchange/Submit"


def raw_envelope(
    client: HubClient,
    body: Message,
    *,
    request_id: str = "",
    extra_payload: bytes = b"",
    signatures: int = 1,
    salt: bytes | None = None,
) -> envelope_pb2.Envelope:
    """Sign ``body`` as ``client``'s department, like any client: header, disclosure, DSSE."""
    header: Any = body.header  # type: ignore[attr-defined]
    header.request_id = request_id or hashlib.sha256(body.SerializeToString()).hexdigest()
    header.request_id += f"-{now_us()}"
    header.issued_at.CopyFrom(to_timestamp(now_us()))
    header.department_id = client.identity.department_id
    signed, disclosure = split(body)
    if salt is not None:
        disclosed = type(signed).FromString(disclosure)
        disclosed.header.disclosure_salt = salt  # type: ignore[attr-defined]
        disclosure = disclosed.SerializeToString(deterministic=True)
        signed.header.disclosure_sha256 = hashlib.sha256(disclosure).digest()  # type: ignore[attr-defined]
    payload = signed.SerializeToString(deterministic=True) + extra_payload
    envelope = sign(payload, signed.DESCRIPTOR.full_name, client.identity.signing_key)
    envelope.signatures.extend([envelope.signatures[0]] * (signatures - 1))
    envelope.disclosure = disclosure
    return envelope


async def check(client: HubClient, subject_id: str, **kw: Any) -> exchange_pb2.CheckResponse:
    body = exchange_pb2.CheckRequest(material_type=w.MARRIAGE, subject_id=subject_id)
    return await client.send(CHECK, raw_envelope(client, body, **kw), exchange_pb2.CheckResponse)


async def submit(
    client: HubClient, subject_id: str, fields: dict[str, str]
) -> exchange_pb2.SubmitResponse:
    body = exchange_pb2.SubmitRequest(
        material_type=w.MARRIAGE, subject_id=subject_id, fields=fields
    )
    return await client.send(SUBMIT, raw_envelope(client, body), exchange_pb2.SubmitResponse)


ANNA_MARRIAGE = {
    "marital_status": "married",
    "spouse_name": "李四 (demo)",
    "registered_on": "2018-05-20",
}


# ----------------------------------------------------------------------- one person, one id


async def test_full_width_and_spaced_ids_name_the_person_on_file(world: w.World) -> None:
    social, township = world.clients[w.SOCIAL], world.clients[w.TOWNSHIP]
    full_width = w.ANNA.translate(FULL_WIDTH)
    spaced = f" {w.ANNA[:6]} {w.ANNA[6:14]}\u3000{w.ANNA[14:]} "
    assert (await check(social, full_width)).on_file
    assert (await check(social, spaced)).on_file
    stored = await submit(township, spaced, ANNA_MARRIAGE)
    assert stored.outcome == exchange_pb2.ALREADY_ON_FILE


async def test_an_id_with_a_wrong_check_digit_is_refused_naming_the_field(world: w.World) -> None:
    wrong = w.BEN[:-1] + ("0" if w.BEN[-1] != "0" else "1")
    with pytest.raises(Refused) as caught:
        await check(world.clients[w.SOCIAL], wrong)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ARGUMENT_FIELD"
    assert "subject_id" in caught.value.message and "check character" in caught.value.message
    assert wrong not in caught.value.message


async def test_a_type_declaring_opaque_ids_takes_any_id_in_normal_form(world: w.World) -> None:
    police = world.clients[w.POLICE]
    published = await police.publish_material_type(
        catalog_pb2.MaterialType(
            id="passport-entry",
            name="Passport entry",
            sharing_class=catalog_pb2.UNCONDITIONAL,
            subject_id_scheme=catalog_pb2.OPAQUE,
            fields=[catalog_pb2.FieldSpec(name="note", type=catalog_pb2.STRING)],
        )
    )
    assert published.material_type.subject_id_scheme == catalog_pb2.OPAQUE
    answer = await world.clients[w.SOCIAL].call(
        CHECK,
        exchange_pb2.CheckRequest(material_type="passport-entry", subject_id="e 1234 5678"),
        exchange_pb2.CheckResponse,
    )
    assert not answer.on_file


async def test_a_holder_keeping_a_non_normalised_id_reports_it_instead_of_duplicating(
    world: w.World,
) -> None:
    civil = world.adapters[w.CIVIL]
    url = str(civil.settings.backend.url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO marriages (citizen_id, status) VALUES (:id, 'unmarried')"),
            {"id": w.CARL.translate(FULL_WIDTH)},
        )
    assert civil.service.survey() == {w.MARRIAGE: 1}
    with pytest.raises(Refused) as caught:
        await submit(world.clients[w.TOWNSHIP], w.CARL, {"marital_status": "unmarried"})
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "SUBJECT_ID_NOT_NORMALISED"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT citizen_id FROM marriages")).scalars().all()
    engine.dispose()
    assert w.CARL not in rows and len(rows) == 2  # ANNA's, and the one not normalised


# ------------------------------------------------------------------------ absent means absent


async def test_an_empty_required_field_is_refused_naming_it(world: w.World) -> None:
    with pytest.raises(Refused) as caught:
        await submit(world.clients[w.TOWNSHIP], w.CARL, {"marital_status": ""})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "marital_status" in caught.value.message


async def test_an_empty_optional_field_makes_no_new_version_and_no_correction(
    world: w.World,
) -> None:
    first = await submit(world.clients[w.CIVIL], w.CARL, {"marital_status": "unmarried"})
    assert first.outcome == exchange_pb2.STORED
    again = await submit(
        world.clients[w.TOWNSHIP], w.CARL, {"marital_status": "unmarried", "spouse_name": ""}
    )
    assert again.outcome == exchange_pb2.ALREADY_ON_FILE
    assert again.version == first.version and not again.objection_id


# --------------------------------------------------------------------- strict signed payloads


async def test_an_unknown_field_in_a_signed_payload_is_refused_and_not_stored(
    world: w.World,
) -> None:
    smuggled = b"\x7a\x12" + w.BEN.encode()  # field 15, length-delimited: another's id
    with pytest.raises(Refused) as caught:
        await check(world.clients[w.SOCIAL], w.ANNA, extra_payload=smuggled)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "UNKNOWN_FIELD"
    assert caught.value.ledger_sequence is not None  # the refusal is on the record ...
    ledger = world.hub.server.hub.ledger
    stored = ledger.entries(0, ledger.size())
    assert all(w.BEN.encode() not in s.envelope_bytes for s in stored)  # ... the id is not


@pytest.mark.parametrize("salt", [b"", b"\x01", bytes(31), bytes(33)])
async def test_a_disclosure_salt_must_be_32_bytes(world: w.World, salt: bytes) -> None:
    with pytest.raises(Refused) as caught:
        await check(world.clients[w.SOCIAL], w.ANNA, salt=salt)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "DISCLOSURE_MISMATCH"


async def test_more_signatures_than_allowed_is_a_malformed_envelope(world: w.World) -> None:
    client = world.clients[w.SOCIAL]
    assert (await check(client, w.ANNA, signatures=4)).on_file
    with pytest.raises(Refused) as caught:
        await check(client, w.ANNA, signatures=5)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "MALFORMED_ENVELOPE"


# ------------------------------------------------------------------------ forwarded ids


async def test_a_forwarded_id_has_a_fixed_form_and_binds_the_whole_request_id(
    world: w.World,
) -> None:
    request_id = "r" * 128
    material = await world.clients[w.SOCIAL].request(
        w.HOUSEHOLD, w.ANNA, purpose=w.ASSISTANCE, request_id=request_id
    )
    assert FORWARDED_ID.match(material.request_id)
    assert material.request_id.startswith(forwarded_binding(request_id) + "/fetch-")
    assert answers(material.request_id, request_id)
    assert not answers(material.request_id, "r" * 80 + "s" * 48)  # same first 80 characters


# --------------------------------------------------------------------- values at the edge


async def _refused(client: HubClient, method: str, body: Message, response: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await client.call(method, body, response)
    return caught.value


async def test_unknown_enum_values_are_refused_naming_the_field(world: w.World) -> None:
    refusal = await _refused(
        world.hub.operator,
        "/exchange.v1.Registry/RegisterDepartment",
        registry_pb2.RegisterDepartmentRequest(
            department=registry_pb2.Department(id="js.x", name="x", roles=[99])  # type: ignore[list-item]
        ),
        registry_pb2.DepartmentResponse,
    )
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "department.roles[0]" in refusal.message
    refusal = await _refused(
        world.clients[w.POLICE],
        "/exchange.v1.Catalog/PublishMaterialType",
        catalog_pb2.PublishMaterialTypeRequest(
            material_type=catalog_pb2.MaterialType(
                id="t",
                name="t",
                sharing_class=7,  # type: ignore[arg-type]
                fields=[catalog_pb2.FieldSpec(name="a", type=catalog_pb2.STRING)],
            )
        ),
        catalog_pb2.MaterialTypeResponse,
    )
    assert "material_type.sharing_class" in refusal.message


async def test_times_and_numbers_out_of_range_are_refused(world: w.World) -> None:
    grant = grants_pb2.Grant(consumer=w.SOCIAL, material_type=w.MARRIAGE, fields=["marital_status"])
    grant.purposes.append(w.ASSISTANCE)
    grant.valid_until.seconds = 253_402_300_800  # 10000-01-01
    refusal = await _refused(
        world.clients[w.CIVIL],
        "/exchange.v1.Grants/IssueGrant",
        grants_pb2.IssueGrantRequest(grant=grant),
        grants_pb2.GrantResponse,
    )
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "grant.valid_until" in refusal.message
    grant.valid_until.seconds = -62_135_596_801  # before year 1
    refusal = await _refused(
        world.clients[w.CIVIL],
        "/exchange.v1.Grants/IssueGrant",
        grants_pb2.IssueGrantRequest(grant=grant),
        grants_pb2.GrantResponse,
    )
    assert "grant.valid_until" in refusal.message

    operator = world.hub.operator
    envelope = operator.envelope(audit_pb2.StreamEntriesRequest(from_sequence=2**63))
    call = operator.channel.unary_stream(
        "/exchange.v1.Audit/StreamEntries",
        request_serializer=envelope_pb2.Envelope.SerializeToString,
        response_deserializer=audit_pb2.EntryRecord.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in call(envelope, timeout=10):
            pass
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_sequence" in (streamed.value.details() or "")


async def test_a_refusal_quotes_request_text_only_cut_short(world: w.World) -> None:
    client = world.clients[w.SOCIAL]
    body = exchange_pb2.CheckRequest(material_type=w.MARRIAGE, subject_id=w.ANNA)
    envelope = raw_envelope(client, body)
    signed = exchange_pb2.CheckRequest.FromString(envelope.payload)
    signed.header.department_id = "d" * 12_000  # names another department than the certificate
    payload = signed.SerializeToString(deterministic=True)
    forged = sign(payload, envelope.payload_type, client.identity.signing_key)
    forged.disclosure = envelope.disclosure
    with pytest.raises(Refused) as caught:
        await client.send(CHECK, forged, exchange_pb2.CheckResponse)
    assert caught.value.reason == "CERTIFICATE_MISMATCH"
    assert len(caught.value.message) < 300


async def test_an_adapter_answers_bytes_that_are_not_an_envelope_with_error_info(
    world: w.World,
) -> None:
    tls = world.hub.keystore.operator_tls()
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate)
    port = world.adapters[w.CIVIL].port
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        call = channel.unary_unary("/exchange.v1.Provider/Fetch")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value.trailing_metadata())
    assert info is not None and info.reason == "MALFORMED_ENVELOPE"


async def test_a_holder_answering_undecodable_bytes_is_a_content_mismatch(world: w.World) -> None:
    department = "js.nj.garbled"
    store = world.hub.keystore
    store.add_department(department, server_names=("localhost", "127.0.0.1"))
    tls = store.department_tls(department)

    async def garbled(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"\xff\xff\xff\xff"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "exchange.v1.Provider",
                {name: grpc.unary_unary_rpc_method_handler(garbled) for name in ("Fetch", "Store")},
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        client = await w.register(world.hub, department, [common_pb2.PROVIDER], f"127.0.0.1:{port}")
        await w.publish_type(
            client,
            w.material_type("garbled-record", catalog_pb2.UNCONDITIONAL, [("a", 1, True)]),
        )
        body = exchange_pb2.SubmitRequest(
            material_type="garbled-record", subject_id=w.ANNA, fields={"a": "x"}
        )
        with pytest.raises(Refused) as caught:
            await client.call(SUBMIT, body, exchange_pb2.SubmitResponse)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "CONTENT_MISMATCH"
    finally:
        await server.stop(None)
