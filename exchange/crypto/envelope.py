"""Signed envelopes: Ed25519 over the DSSE pre-authentication encoding of the exact payload bytes.

The bytes signed are specified in docs/security.md:

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where SP is one space (0x20) and LEN is the length in bytes as ASCII decimal without leading
zeros. The payload bytes are signed and verified as received; they are never re-serialized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exchange.crypto.keys import SigningKey, verify_signature
from exchange.v1 import envelope_pb2

MAX_SIGNATURES = 4


class EnvelopeError(Exception):
    """An envelope is malformed or its signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign(payload: bytes, payload_type: str, key: SigningKey) -> envelope_pb2.Envelope:
    """Return an envelope of ``payload`` signed by ``key``."""
    signature = envelope_pb2.Signature(keyid=key.keyid, sig=key.sign(pae(payload_type, payload)))
    return envelope_pb2.Envelope(payload=payload, payload_type=payload_type, signatures=[signature])


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """The key that verified an envelope."""

    keyid: str
    public_key: bytes


def verify(
    envelope: envelope_pb2.Envelope,
    lookup: Callable[[str], bytes | None],
) -> VerifiedSignature:
    """Verify the first signature whose key ``lookup`` knows; return which key verified.

    ``lookup`` maps a key id to a raw public key, or None if the key is unknown to the caller.
    Raises EnvelopeError if the envelope has no signature, too many, none by a known key, or if
    the known key's signature does not verify.
    """
    keyid, public_key = verified_key(envelope, lookup)
    return VerifiedSignature(keyid=keyid, public_key=public_key)


def verified_key(
    envelope: envelope_pb2.Envelope,
    lookup: Callable[[str], bytes | None],
) -> tuple[str, bytes]:
    """``verify`` as a plain (key id, public key) pair, for a caller that checks envelopes by
    the thousand (the offline verifier) and spares building a ``VerifiedSignature`` each time.
    Raises EnvelopeError as ``verify``."""
    signatures = envelope.signatures
    if not signatures:
        raise EnvelopeError("envelope carries no signature")
    if len(signatures) > MAX_SIGNATURES:
        raise EnvelopeError(f"envelope carries more than {MAX_SIGNATURES} signatures")
    message = pae(envelope.payload_type, envelope.payload)
    for signature in signatures:
        keyid = signature.keyid
        public_key = lookup(keyid)
        if public_key is None:
            continue
        if not verify_signature(public_key, signature.sig, message):
            raise EnvelopeError(f"signature by key {keyid[:16]}… does not verify")
        return keyid, public_key
    raise EnvelopeError("no signature by a known key")
