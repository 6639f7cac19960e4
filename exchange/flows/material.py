"""Checking a holder's answer before anything is passed on.

A provider's ``MaterialRecord`` is accepted only if it is signed by a currently valid key of the
holder, answers this very forwarded request, is about the material type and subject asked for,
carries no field that was not asked for, and every field's keyed hash equals the one on the
hub's index. The envelope is then passed on unchanged, so the consumer can verify the holder's
signature end to end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from exchange import errors
from exchange.catalog.model import MaterialType
from exchange.catalog.schema import canonical_fields
from exchange.clock import now_us
from exchange.crypto.content import ContentKeys, canonical_subject_id
from exchange.crypto.envelope import EnvelopeError, verify
from exchange.routing.provider import forwarded_id
from exchange.store.materials import IndexedMaterial
from exchange.store.registry import DepartmentRecord
from exchange.v1 import common_pb2, envelope_pb2, exchange_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

MATERIAL_RECORD = exchange_pb2.MaterialRecord.DESCRIPTOR.full_name


def mismatch(message: str) -> errors.FailedPrecondition:
    """A CONTENT_MISMATCH refusal: the holder's answer disagrees with the hub's index."""
    return errors.FailedPrecondition(common_pb2.CONTENT_MISMATCH, message)


def open_record(
    envelope: envelope_pb2.Envelope,
    holder: DepartmentRecord,
    *,
    request_id: str,
    material_type: str,
    subject_id: str,
) -> exchange_pb2.MaterialRecord:
    """Verify the holder's signature and the record's binding to this request; decode it.

    Raises FailedPrecondition (CONTENT_MISMATCH) on any failure.
    """
    if envelope.payload_type != MATERIAL_RECORD:
        raise mismatch(f"the holder answered with {envelope.payload_type[:64]!r}")
    now = now_us()
    keys = {k.keyid: k.public_key for k in holder.keys if k.usable_at(now)}
    try:
        # One Ed25519 verification (~50 µs): cheap enough to stay on the event loop.
        verify(envelope, keys.get)
    except EnvelopeError as exc:
        raise mismatch(f"the holder's signature does not verify: {exc}") from exc
    record = exchange_pb2.MaterialRecord()
    try:
        record.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise mismatch("the holder's record does not decode") from exc
    if record.request_id != request_id:
        raise mismatch("the holder's record answers another request")
    if record.holder != holder.id:
        raise mismatch("the holder's record names another holder")
    if record.material_type != material_type:
        raise mismatch("the holder's record is of another material type")
    if canonical_subject_id(record.subject_id) != canonical_subject_id(subject_id):
        raise mismatch("the holder's record is about another subject")
    return record


def check_fields(
    keys: ContentKeys,
    material_type: MaterialType,
    subject_id: str,
    delivered: Mapping[str, str],
    asked: Collection[str],
    indexed: IndexedMaterial,
) -> None:
    """Check delivered fields against what was asked and against the index's field hashes.

    A field asked for may be absent only if the index holds no value for it either (an empty
    optional field). Raises FailedPrecondition (CONTENT_MISMATCH).
    """
    extra = sorted(set(delivered) - set(asked))
    if extra:
        raise mismatch(f"the holder delivered field(s) not asked for: {', '.join(extra)}")
    try:
        canonical = canonical_fields(material_type, delivered, complete=False)
    except errors.InvalidArgument as exc:
        raise mismatch(f"the holder's answer violates the schema: {exc.message}") from exc
    hashes = keys.field_hashes(material_type.id, subject_id, canonical)
    for name in asked:
        if hashes.get(name) != indexed.field_hashes.get(name):
            raise mismatch(
                f"field {name!r} delivered by the holder differs from version "
                f"{indexed.version} on the hub's index"
            )


async def fetch_checked(
    hub: Hub,
    holder: DepartmentRecord,
    current: IndexedMaterial,
    material_type: MaterialType,
    subject_id: str,
    fields: tuple[str, ...],
    *,
    caller: str,
    request_id: str,
    kind: str,
    purpose: str,
    timed: Callable[[float], None],
) -> tuple[envelope_pb2.Envelope, Mapping[str, str]]:
    """Fetch ``fields`` of the ``current`` version from its holder and check the answer
    (``open_record``, ``check_fields``); return the holder's envelope, unchanged, and its
    fields.

    ``request_id`` is the caller's (the holder is asked under an id forwarded from it, marked
    ``kind``), and ``caller`` the department asking. ``timed`` is given the holder's latency in
    milliseconds, answered or not. Raises Unavailable (PROVIDER_UNAVAILABLE), DeadlineExceeded
    (PROVIDER_TIMEOUT), FailedPrecondition (CONTENT_MISMATCH), or the holder's own refusal.
    """
    forwarded = forwarded_id(request_id, kind)
    started = time.perf_counter()
    try:
        answer = await hub.providers.fetch(
            holder.provider_endpoint,
            request_id=forwarded,
            material_type=material_type.id,
            subject_id=subject_id,
            fields=fields,
            consumer=caller,
            purpose=purpose,
            reference=current.reference,
            version=current.version,
        )
    finally:
        timed((time.perf_counter() - started) * 1000)
    if not answer.found:
        raise mismatch("the holder has no such material, but the hub's index has")
    delivered = open_record(
        answer.material,
        holder,
        request_id=forwarded,
        material_type=material_type.id,
        subject_id=subject_id,
    )
    check_fields(hub.content_keys, material_type, subject_id, delivered.fields, fields, current)
    return answer.material, delivered.fields
