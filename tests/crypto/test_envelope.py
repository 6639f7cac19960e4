from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.crypto.envelope import EnvelopeError, pae, sign, verify
from exchange.crypto.keys import SigningKey


def test_pae_matches_the_dsse_v1_specification_vector() -> None:
    # The worked example of the DSSE protocol specification.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_of_empty_values() -> None:
    assert pae("", b"") == b"DSSEv1 0  0 "


@given(st.binary(max_size=512), st.text(max_size=40))
def test_signed_envelope_verifies_and_any_flipped_byte_does_not(payload: bytes, kind: str) -> None:
    key = SigningKey.generate()
    envelope = sign(payload, kind, key)
    assert verify(envelope, {key.keyid: key.public_bytes}.get).keyid == key.keyid
    if payload:
        envelope.payload = bytes([payload[0] ^ 1]) + payload[1:]
        with pytest.raises(EnvelopeError):
            verify(envelope, {key.keyid: key.public_bytes}.get)


def test_payload_type_is_bound_by_the_signature() -> None:
    key = SigningKey.generate()
    envelope = sign(b"body", "exchange.v1.CheckRequest", key)
    envelope.payload_type = "exchange.v1.SubmitRequest"
    with pytest.raises(EnvelopeError):
        verify(envelope, {key.keyid: key.public_bytes}.get)


def test_unknown_key_is_not_trusted() -> None:
    envelope = sign(b"body", "t", SigningKey.generate())
    with pytest.raises(EnvelopeError, match="no signature by a known key"):
        verify(envelope, {}.get)
