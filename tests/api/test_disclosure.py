"""Personal data travels in the envelope's disclosure and is never stored beside the ledger."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.client import Refused
from exchange import errors
from exchange.crypto.envelope import sign
from exchange.policy.disclosure import open_disclosure, split
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2
from tests.conftest import RunningHub

CHECK = "/exchange.v1.Exchange/Check"
SUBJECT = "990101199001010019"


@given(
    st.from_regex(r"99[0-9]{15}[0-9X]", fullmatch=True),
    st.dictionaries(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=10),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
        max_size=5,
    ),
)
def test_split_then_open_restores_the_body_and_the_signed_part_holds_no_personal_data(
    subject: str, fields: dict[str, str]
) -> None:
    body = exchange_pb2.SubmitRequest(
        material_type="marriage-record", subject_id=subject, fields=fields
    )
    body.header.request_id = "r-1"
    signed, disclosure = split(body)
    assert signed.subject_id == "" and len(signed.fields) == 0
    assert signed.header.disclosure_sha256 == hashlib.sha256(disclosure).digest()
    assert subject.encode() not in signed.SerializeToString()
    opened = open_disclosure(signed, disclosure)
    assert (opened.subject_id, dict(opened.fields), opened.material_type) == (
        subject,
        fields,
        "marriage-record",
    )


def test_bodies_without_personal_data_have_no_disclosure() -> None:
    body = exchange_pb2.CheckRequest(material_type="marriage-record")
    signed, disclosure = split(body)
    assert disclosure == b"" and not signed.header.disclosure_sha256


def test_a_disclosure_is_salted_so_equal_values_hash_differently() -> None:
    body = exchange_pb2.CheckRequest(material_type="m", subject_id=SUBJECT)
    (first, _), (second, _) = split(body), split(body)
    assert first.header.disclosure_sha256 != second.header.disclosure_sha256


def test_tampered_disclosure_is_a_mismatch() -> None:
    signed, disclosure = split(exchange_pb2.CheckRequest(material_type="m", subject_id=SUBJECT))
    other = exchange_pb2.CheckRequest(subject_id="990101199202020029")
    other.header.disclosure_salt = exchange_pb2.CheckRequest.FromString(
        disclosure
    ).header.disclosure_salt
    with pytest.raises(errors.InvalidArgument) as caught:
        open_disclosure(signed, other.SerializeToString(deterministic=True))
    assert caught.value.reason == common_pb2.DISCLOSURE_MISMATCH


def test_disclosure_may_not_smuggle_non_personal_fields() -> None:
    body = exchange_pb2.CheckRequest(material_type="m")
    smuggled = exchange_pb2.CheckRequest(material_type="another-type", subject_id=SUBJECT)
    data = smuggled.SerializeToString(deterministic=True)
    body.header.disclosure_sha256 = hashlib.sha256(data).digest()
    with pytest.raises(errors.InvalidArgument) as caught:
        open_disclosure(body, data)
    assert caught.value.reason == common_pb2.DISCLOSURE_MISMATCH


async def test_personal_data_in_the_signed_payload_is_refused_and_not_stored(
    hub: RunningHub,
) -> None:
    client = await hub.register("js.nj.social-security")
    body = exchange_pb2.CheckRequest(material_type="marriage-record", subject_id=SUBJECT)
    body.header.request_id = "old-client-1"
    from exchange.clock import now_us, to_timestamp

    body.header.issued_at.CopyFrom(to_timestamp(now_us()))
    body.header.department_id = "js.nj.social-security"
    envelope = sign(
        body.SerializeToString(), body.DESCRIPTOR.full_name, client.identity.signing_key
    )
    with pytest.raises(Refused) as caught:
        await client.send(CHECK, envelope, exchange_pb2.CheckResponse)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DISCLOSURE_REQUIRED",
    )
    (stored,) = hub.server.hub.ledger.entries(caught.value.ledger_sequence or 0, 1)
    entry = ledger_pb2.LedgerEntry.FromString(stored.entry_bytes)
    assert entry.reason == common_pb2.DISCLOSURE_REQUIRED and entry.actor == "js.nj.social-security"
    assert stored.envelope_bytes == b""
    assert SUBJECT.encode() not in stored.entry_bytes


async def test_sdk_calls_store_envelopes_without_the_subject(hub: RunningHub) -> None:
    client = await hub.register("js.nj.social-security", (common_pb2.CONSUMER,))
    with pytest.raises(Refused):  # the type is not catalogued: refused, but recorded
        await client.check("marriage-record", SUBJECT)
    stored = hub.server.hub.ledger.entries(0, 1000)
    assert stored and all(SUBJECT.encode() not in e.envelope_bytes for e in stored)
    assert all(SUBJECT.encode() not in e.entry_bytes for e in stored)


async def test_unauthenticated_refusals_keep_only_the_hash_of_the_bytes(hub: RunningHub) -> None:
    client = await hub.register("js.nj.social-security")
    envelope = client.envelope(exchange_pb2.CheckRequest(material_type="m", subject_id=SUBJECT))
    envelope.signatures[0].sig = bytes(64)
    with pytest.raises(Refused) as caught:
        await client.send(CHECK, envelope, exchange_pb2.CheckResponse)
    assert caught.value.reason == "BAD_SIGNATURE"
    (stored,) = hub.server.hub.ledger.entries(caught.value.ledger_sequence or 0, 1)
    entry = ledger_pb2.LedgerEntry.FromString(stored.entry_bytes)
    assert stored.envelope_bytes == b""
    assert (
        len(entry.attributes["envelope_sha256"]) == 64
        and int(entry.attributes["envelope_bytes"]) > 0
    )
