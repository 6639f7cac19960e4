"""The ledger: an append-only, hash-chained RFC 9162 Merkle log with signed checkpoints.

It knows nothing of departments or policy: it appends entries, makes checkpoints and proves
them. The format is specified in docs/ledger.md.

The writer (``Ledger`` and its hooks) is loaded only when asked for: auditors, the client SDK
and provider adapters use checkpoints, entries and proofs, and must not load SQLAlchemy and the
hub's writer with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exchange.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from exchange.ledger.entry import EntryDraft, Receipt, StoredEntry, verify_receipt
from exchange.ledger.errors import BeyondLog, CheckpointNotFound, LedgerUnavailable

if TYPE_CHECKING:
    from exchange.ledger.writer import CommitListener, Effect, Ledger, LedgerConfig

_WRITER = frozenset({"CommitListener", "Effect", "Ledger", "LedgerConfig"})


def __getattr__(name: str) -> Any:
    if name in _WRITER:
        from exchange.ledger import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BeyondLog",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFound",
    "CommitListener",
    "Effect",
    "EntryDraft",
    "Ledger",
    "LedgerConfig",
    "LedgerUnavailable",
    "NoteVerifier",
    "Receipt",
    "StoredEntry",
    "sign_checkpoint",
    "verifier_key",
    "verify_checkpoint",
    "verify_receipt",
]
