"""The envelope checks both authenticators make (the hub's, a provider adapter's): each fault
gets its contract reason, whichever side meets it."""

from __future__ import annotations

import pytest

from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.policy import envelope_checks
from exchange.v1 import common_pb2, envelope_pb2, registry_pb2

LIST = registry_pb2.ListDepartmentsRequest
MINUTE_US = 60 * 1_000_000


def envelope(header: common_pb2.RequestHeader) -> envelope_pb2.Envelope:
    body = LIST(header=header)
    return sign(body.SerializeToString(), LIST.DESCRIPTOR.full_name, SigningKey.generate())


def complete() -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(
        request_id="r-1", department_id="js.nj.civil-affairs", issued_at=to_timestamp(now_us())
    )


def reason(error: pytest.ExceptionInfo[errors.ExchangeError]) -> str:
    return common_pb2.Reason.Name(error.value.reason)


def test_no_client_certificate_is_refused() -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        envelope_checks.peer_identity(None)
    assert reason(caught) == "NO_CLIENT_CERTIFICATE"
    with pytest.raises(errors.Unauthenticated) as caught:
        envelope_checks.peer_identity(b"not a certificate")
    assert reason(caught) == "NO_CLIENT_CERTIFICATE"


def test_the_envelope_must_carry_the_methods_body_and_few_signatures() -> None:
    sealed = envelope(complete())
    envelope_checks.check_form(sealed, LIST)
    untyped = envelope_pb2.Envelope(payload=sealed.payload)
    with pytest.raises(errors.InvalidArgument) as caught:
        envelope_checks.check_form(untyped, LIST)
    assert reason(caught) == "MALFORMED_ENVELOPE"
    with pytest.raises(errors.InvalidArgument) as caught:
        envelope_checks.check_form(sealed, registry_pb2.GetDepartmentRequest)
    assert reason(caught) == "PAYLOAD_TYPE_MISMATCH"
    crowded = envelope_pb2.Envelope()
    crowded.CopyFrom(sealed)
    for _ in range(4):
        crowded.signatures.add().CopyFrom(sealed.signatures[0])
    with pytest.raises(errors.InvalidArgument) as caught:
        envelope_checks.check_form(crowded, LIST)
    assert reason(caught) == "MALFORMED_ENVELOPE" and "5 signatures" in caught.value.message


def test_the_body_decodes_with_a_complete_header() -> None:
    body, header = envelope_checks.open_body(envelope(complete()), LIST)
    assert isinstance(body, LIST) and header.request_id == "r-1"
    garbled = envelope_pb2.Envelope(payload=b"\xff\xff", payload_type=LIST.DESCRIPTOR.full_name)
    with pytest.raises(errors.InvalidArgument) as caught:
        envelope_checks.open_body(garbled, LIST)
    assert reason(caught) == "MALFORMED_ENVELOPE"
    for field, value in (("request_id", "with space"), ("department_id", "")):
        header = complete()
        setattr(header, field, value)
        with pytest.raises(errors.InvalidArgument) as caught:
            envelope_checks.open_body(envelope(header), LIST)
        assert reason(caught) == "INVALID_ARGUMENT_FIELD" and field in caught.value.message
    header = complete()
    header.ClearField("issued_at")
    with pytest.raises(errors.InvalidArgument) as caught:
        envelope_checks.open_body(envelope(header), LIST)
    assert "issued_at" in caught.value.message


def test_a_call_issued_outside_the_window_is_stale_on_the_named_clock() -> None:
    now = now_us()
    header = common_pb2.RequestHeader(issued_at=to_timestamp(now - 2 * MINUTE_US))
    assert envelope_checks.check_fresh(header, now, 5 * MINUTE_US) == now - 2 * MINUTE_US
    with pytest.raises(errors.Unauthenticated) as caught:
        envelope_checks.check_fresh(header, now, MINUTE_US, clock="the adapter's clock")
    assert reason(caught) == "STALE_REQUEST" and "the adapter's clock" in caught.value.message
