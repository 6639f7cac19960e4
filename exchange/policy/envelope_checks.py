"""The checks of a signed call that both ends make: the hub's authenticator
(exchange.policy.identity) and a provider adapter's (adapters.provider).

Each check raises the refusal the contract names for it (docs/api.md), so that a client sees the
same reason and message from the hub and from an adapter. What differs between the two (whose
keys, which departments, the order of signature and decoding) stays with each authenticator;
this module knows nothing of the registry, so the department side may import it.
"""

from __future__ import annotations

import re
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from exchange import errors
from exchange.clock import from_timestamp
from exchange.crypto import certificates
from exchange.crypto.envelope import MAX_SIGNATURES
from exchange.policy.payload import check_message
from exchange.v1 import common_pb2, envelope_pb2

REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

Body = TypeVar("Body", bound=Message)


def peer_identity(peer_certificate: bytes | None) -> certificates.PeerIdentity:
    """Who the TLS client certificate names. Raises Unauthenticated (NO_CLIENT_CERTIFICATE) when
    there is none or it cannot be read."""
    if not peer_certificate:
        raise errors.Unauthenticated(
            common_pb2.NO_CLIENT_CERTIFICATE, "a client certificate is required (mTLS)"
        )
    try:
        return certificates.peer_identity(peer_certificate)
    except certificates.CertificateError as exc:
        raise errors.Unauthenticated(common_pb2.NO_CLIENT_CERTIFICATE, str(exc)) from exc


def parse_envelope(
    request: bytes, into: envelope_pb2.Envelope | None = None
) -> envelope_pb2.Envelope:
    """The request's bytes as an Envelope (into ``into`` if given). Raises InvalidArgument
    (MALFORMED_ENVELOPE)."""
    envelope = into if into is not None else envelope_pb2.Envelope()
    try:
        envelope.ParseFromString(request)
    except DecodeError as exc:
        raise errors.InvalidArgument(
            common_pb2.MALFORMED_ENVELOPE, "the request is not an exchange.v1.Envelope"
        ) from exc
    return envelope


def check_form(envelope: envelope_pb2.Envelope, body_type: type[Message]) -> None:
    """The envelope carries ``body_type`` and at most ``MAX_SIGNATURES`` signatures.

    Raises InvalidArgument: MALFORMED_ENVELOPE (no payload type, too many signatures),
    PAYLOAD_TYPE_MISMATCH (another method's body).
    """
    expected = body_type.DESCRIPTOR.full_name
    if not envelope.payload_type:
        raise errors.InvalidArgument(
            common_pb2.MALFORMED_ENVELOPE,
            f"the envelope has no payload_type; expected {expected}",
        )
    if envelope.payload_type != expected:
        raise errors.InvalidArgument(
            common_pb2.PAYLOAD_TYPE_MISMATCH,
            f"this method takes {expected}, the envelope carries {envelope.payload_type[:128]!r}",
        )
    if len(envelope.signatures) > MAX_SIGNATURES:
        raise errors.InvalidArgument(
            common_pb2.MALFORMED_ENVELOPE,
            f"the envelope carries {len(envelope.signatures)} signatures; at most "
            f"{MAX_SIGNATURES} are allowed",
        )


def open_body(
    envelope: envelope_pb2.Envelope, body_type: type[Body]
) -> tuple[Body, common_pb2.RequestHeader]:
    """The envelope's body and its header, checked: only fields the contract defines, values in
    range (exchange.policy.payload), a request id of 1-128 printable ASCII characters, a
    department and an issue time.

    Raises InvalidArgument: MALFORMED_ENVELOPE (not a ``body_type``), the payload checks'
    reasons, INVALID_ARGUMENT_FIELD (the header).
    """
    body = body_type()
    try:
        body.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise errors.InvalidArgument(
            common_pb2.MALFORMED_ENVELOPE,
            f"the payload is not a valid {body_type.DESCRIPTOR.full_name}",
        ) from exc
    # Before anything else is read from it: the signed bytes are stored beside the entry, so
    # nothing the contract does not define may ride along in them (and no value the flows
    # cannot hold may reach them).
    check_message(envelope, "envelope")
    check_message(body)
    header: common_pb2.RequestHeader = body.header  # type: ignore[attr-defined]
    if not REQUEST_ID.match(header.request_id):
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD,
            "header.request_id must be 1-128 printable ASCII characters",
        )
    if not header.department_id:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "header.department_id is required"
        )
    if not header.HasField("issued_at"):
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "header.issued_at is required"
        )
    return body, header


def check_fresh(
    header: common_pb2.RequestHeader, now: int, window_us: int, clock: str = "the hub's clock"
) -> int:
    """The header's issue time (microseconds) if it is within ``window_us`` of ``now``.

    Raises Unauthenticated (STALE_REQUEST), naming ``clock``.
    """
    issued = from_timestamp(header.issued_at)
    if abs(now - issued) > window_us:
        raise errors.Unauthenticated(
            common_pb2.STALE_REQUEST,
            f"issued_at is {abs(now - issued) / 1e6:.0f} s from {clock}; the window is "
            f"±{window_us / 1e6:.0f} s",
        )
    return issued
