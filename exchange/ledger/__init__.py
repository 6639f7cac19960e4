"""The ledger: an append-only, hash-chained RFC 9162 Merkle log with signed checkpoints.

It knows nothing of departments or policy: it appends entries, makes checkpoints and proves
them. The format is specified in docs/ledger.md.
"""

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
from exchange.ledger.writer import CommitListener, Effect, Ledger, LedgerConfig

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
