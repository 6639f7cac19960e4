"""Ledger entries: what a caller asks to record, how the hub encodes it once, how it is stored.

This is the one place that builds a ``LedgerEntry``. The entry bytes are its deterministic
protobuf encoding, produced once when the writer sequences the entry and stored verbatim; every
hash and proof is over those bytes, never over a re-serialization.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exchange.ledger import merkle
from exchange.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    verify_checkpoint,
)
from exchange.v1 import common_pb2, ledger_pb2

ZERO_HASH = bytes(32)

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _no_attributes() -> Mapping[str, str]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class EntryDraft:
    """What a caller asks to record.

    The ledger fills in sequence, time, prev_leaf_hash and envelope_hash. ``kind`` is an
    ``exchange.v1.EntryKind`` value, ``outcome`` an ``exchange.v1.Outcome`` value and ``reason``
    an ``exchange.v1.Reason`` value. ``subject_ref`` must already be a keyed hash and
    ``content_hash`` a hash: the ledger holds no personal data.
    """

    kind: ledger_pb2.EntryKind.ValueType
    actor: str
    outcome: ledger_pb2.Outcome.ValueType
    reason: common_pb2.Reason.ValueType = common_pb2.REASON_UNSPECIFIED
    subject_ref: bytes = b""
    material_type: str = ""
    content_hash: bytes = b""
    purpose: str = ""
    counterparty: str = ""
    reference: str = ""
    version: int = 0
    request_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=_no_attributes)


def envelope_hash(envelope: bytes) -> bytes:
    """SHA-256 of the caller's envelope bytes; empty when there is no envelope."""
    return hashlib.sha256(envelope).digest() if envelope else b""


def build_entry(
    draft: EntryDraft,
    *,
    sequence: int,
    time_ns: int,
    prev_leaf_hash: bytes,
    envelope: bytes,
) -> ledger_pb2.LedgerEntry:
    """Build the ``LedgerEntry`` message for ``draft`` at position ``sequence``."""
    entry = ledger_pb2.LedgerEntry(
        sequence=sequence,
        kind=draft.kind,
        actor=draft.actor,
        subject_ref=draft.subject_ref,
        material_type=draft.material_type,
        content_hash=draft.content_hash,
        purpose=draft.purpose,
        envelope_hash=envelope_hash(envelope),
        outcome=draft.outcome,
        reason=draft.reason,
        prev_leaf_hash=prev_leaf_hash,
        counterparty=draft.counterparty,
        reference=draft.reference,
        version=draft.version,
        request_id=draft.request_id,
    )
    if draft.attributes:
        entry.attributes.update(draft.attributes)
    entry.time.seconds, entry.time.nanos = divmod(time_ns, 1_000_000_000)
    return entry


def encode_entry(entry: ledger_pb2.LedgerEntry) -> bytes:
    """The entry bytes: the deterministic protobuf encoding, produced once."""
    return entry.SerializeToString(deterministic=True)


def entry_time_ns(entry: ledger_pb2.LedgerEntry) -> int:
    """The entry's sequencing time in nanoseconds since the Unix epoch."""
    return entry.time.seconds * 1_000_000_000 + entry.time.nanos


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry as stored: its bytes exactly as hashed, the caller's envelope, its leaf hash."""

    sequence: int
    entry_bytes: bytes
    envelope_bytes: bytes
    leaf_hash: bytes

    def decode(self) -> ledger_pb2.LedgerEntry:
        """Parse the entry bytes. Raises google.protobuf.message.DecodeError if malformed."""
        entry = ledger_pb2.LedgerEntry()
        entry.ParseFromString(self.entry_bytes)
        return entry


@dataclass(frozen=True, slots=True)
class Receipt:
    """The acknowledgement of a committed entry.

    ``checkpoint`` is the hub-signed note of the commit batch that included the entry and
    ``inclusion_proof`` proves ``leaf_hash`` at ``sequence`` in that checkpoint's tree, so the
    receipt can be checked at once (``verify_receipt``) and proved later against any later
    checkpoint with a consistency proof.
    """

    sequence: int
    leaf_hash: bytes
    checkpoint: str
    inclusion_proof: tuple[bytes, ...]

    def to_proto(self) -> common_pb2.Receipt:
        """The contract's ``exchange.v1.Receipt``."""
        return common_pb2.Receipt(
            sequence=self.sequence,
            leaf_hash=self.leaf_hash,
            checkpoint=self.checkpoint,
            inclusion_proof=list(self.inclusion_proof),
        )

    @classmethod
    def from_proto(cls, message: common_pb2.Receipt) -> Receipt:
        """Convert from the contract's message."""
        return cls(
            sequence=message.sequence,
            leaf_hash=message.leaf_hash,
            checkpoint=message.checkpoint,
            inclusion_proof=tuple(message.inclusion_proof),
        )


def leaf_hash_of(entry_bytes: bytes) -> bytes:
    """The RFC 9162 leaf hash of entry bytes."""
    return merkle.leaf_hash(entry_bytes)


def verify_receipt(receipt: Receipt, verifiers: Iterable[NoteVerifier | str]) -> Checkpoint:
    """Check a receipt at once: its checkpoint is signed by one of ``verifiers`` and its
    inclusion proof puts ``leaf_hash`` at ``sequence`` in that checkpoint's tree.

    Returns the checkpoint. Raises CheckpointError if either check fails.
    """
    checkpoint = verify_checkpoint(receipt.checkpoint, verifiers)
    if not merkle.verify_inclusion(
        receipt.leaf_hash,
        receipt.sequence,
        checkpoint.size,
        receipt.inclusion_proof,
        checkpoint.root_hash,
    ):
        raise CheckpointError(f"receipt for entry {receipt.sequence} is not in its checkpoint")
    return checkpoint
