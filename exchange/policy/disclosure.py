"""Personal data travels beside the signed payload, never inside what the hub stores.

Every call's envelope is stored beside its ledger entry and handed to auditors, so it must not
carry subject ids or field values. A client therefore moves the personal fields of a request
body into ``Envelope.disclosure`` (a message of the same type holding only those fields and a
random salt) and signs a payload that carries ``header.disclosure_sha256`` instead. The hub
checks the hash, merges the disclosure back into the body it hands to the flow, and stores the
envelope without it. Specified byte for byte in docs/security.md.
"""

from __future__ import annotations

import hashlib
import os
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from exchange import errors
from exchange.policy.payload import check_message
from exchange.v1 import common_pb2

SALT_BYTES = 32

# Body type -> its personal fields (names of fields of the body message).
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "exchange.v1.CheckRequest": ("subject_id", "assertion"),
    "exchange.v1.SubmitRequest": ("subject_id", "fields", "assertion"),
    "exchange.v1.MaterialRequest": ("subject_id", "assertion"),
    "exchange.v1.PrefillRequest": ("subject_id", "assertion"),
    "exchange.v1.AccessHistoryRequest": ("subject_id", "assertion"),
    "exchange.v1.FileObjectionRequest": ("subject_id", "reason", "proposed_fields", "assertion"),
    "exchange.v1.ResolveObjectionRequest": ("resolution", "corrected_fields"),
    "exchange.v1.PublishHoldingsRequest": ("holdings",),
    # The person in the loop: a subject assertion names the subject, so it is personal too.
    "exchange.v1.GiveConsentRequest": ("subject_id", "assertion"),
    "exchange.v1.RevokeConsentRequest": ("subject_id", "assertion"),
    "exchange.v1.ListConsentsRequest": ("subject_id", "assertion"),
    "exchange.v1.ConfirmFormRequest": ("subject_id", "assertion"),
}

Body = TypeVar("Body", bound=Message)


def _collection(value: object) -> bool:
    """Whether a field value is a repeated or map container (not a scalar or a message)."""
    return not isinstance(value, str | bytes | int | float | bool | Message)


def _has(message: Message, name: str) -> bool:
    value = getattr(message, name)
    if isinstance(value, Message):  # a submessage (a subject assertion's envelope)
        return message.HasField(name)
    return len(value) > 0 if _collection(value) else bool(value)


def _copy(source: Message, target: Message, name: str) -> None:
    value = getattr(source, name)
    if isinstance(value, Message):
        getattr(target, name).CopyFrom(value)
    elif _collection(value):
        getattr(target, name).MergeFrom(value)
    else:
        setattr(target, name, value)


def personal_fields(body: Message) -> tuple[str, ...]:
    """The personal fields of ``body``'s type (empty for bodies without any)."""
    return PERSONAL_FIELDS.get(body.DESCRIPTOR.full_name, ())


def split(body: Body) -> tuple[Body, bytes]:
    """Move ``body``'s personal fields into a disclosure; return the body to sign and the
    disclosure bytes (empty if the body carries no personal data).

    The returned body's ``header.disclosure_sha256`` binds the disclosure. ``body`` must
    already have its header filled; it is not modified.
    """
    names = [name for name in personal_fields(body) if _has(body, name)]
    signed = type(body)()
    signed.CopyFrom(body)
    if not names:
        return signed, b""
    disclosure = type(body)()
    for name in names:
        _copy(body, disclosure, name)
        signed.ClearField(name)
    disclosure.header.disclosure_salt = os.urandom(SALT_BYTES)  # type: ignore[attr-defined]
    data = disclosure.SerializeToString(deterministic=True)
    signed.header.disclosure_sha256 = hashlib.sha256(data).digest()  # type: ignore[attr-defined]
    return signed, data


def open_disclosure(body: Body, disclosure: bytes) -> Body:
    """Check the signed ``body`` carries no personal data and ``disclosure`` is the one its
    header binds; return the body with the personal fields merged back.

    Raises InvalidArgument with DISCLOSURE_REQUIRED (personal data in the signed payload),
    DISCLOSURE_MISMATCH (hash differs, missing, a salt other than 32 bytes, or other fields
    disclosed) or UNKNOWN_FIELD (the disclosure carries a field the contract does not define).
    """
    names = personal_fields(body)
    exposed = [name for name in names if _has(body, name)]
    if exposed:
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_REQUIRED,
            f"{', '.join(exposed)} must travel in the envelope's disclosure, not in the signed "
            "payload (it would be stored beside the ledger entry)",
        )
    header: common_pb2.RequestHeader = body.header  # type: ignore[attr-defined]
    if not disclosure and not header.disclosure_sha256:
        return body
    if hashlib.sha256(disclosure).digest() != header.disclosure_sha256:
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_MISMATCH,
            "the envelope's disclosure does not match header.disclosure_sha256",
        )
    disclosed = type(body)()
    try:
        disclosed.ParseFromString(disclosure)
    except DecodeError as exc:
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_MISMATCH,
            "the disclosure is not a valid message of the body's type",
        ) from exc
    check_message(disclosed, "disclosure")
    carried = {field.name for field, _ in disclosed.ListFields()} - {"header"}
    if not carried <= set(names):
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_MISMATCH,
            f"the disclosure may carry only {', '.join(names) or 'nothing'}",
        )
    salted: common_pb2.RequestHeader = disclosed.header  # type: ignore[attr-defined]
    if len(salted.disclosure_salt) != SALT_BYTES:
        # Without 32 random bytes the signed disclosure_sha256, stored with the envelope, is a
        # plain hash of a low-entropy subject id that anyone could reverse by guessing.
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_MISMATCH,
            f"the disclosure's header.disclosure_salt must be {SALT_BYTES} random bytes",
        )
    if [f.name for f, _ in salted.ListFields()] != ["disclosure_salt"]:
        raise errors.InvalidArgument(
            common_pb2.DISCLOSURE_MISMATCH,
            "the disclosure's header may carry only disclosure_salt",
        )
    merged = type(body)()
    merged.CopyFrom(body)
    for name in carried:
        _copy(disclosed, merged, name)
    return merged
