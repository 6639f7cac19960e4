"""The ledger export: a self-describing JSON Lines stream an auditor verifies offline.

One JSON object per line, in this order (docs/ledger.md is the full specification):

1. ``{"type": "header", "format": "exchange-ledger-export", "version": 1, "origin": …,
   "size": N, "hub_keys": [verifier key strings], "operator_keys": [base64 public keys],
   "exported_at": RFC 3339}`` (``operator_keys`` optional: the operator's first keys);
2. one ``{"type": "key", "actor", "keyid", "public_key", "valid_from", "valid_until",
   "revoked_at"}`` per department signing key ever registered (the key history);
3. ``{"type": "entry", "sequence", "entry", "envelope"}`` for sequence 0 … N-1 in order, each
   stored checkpoint ``{"type": "checkpoint", "size", "note"}`` placed right after the entry that
   completes its tree (entry size - 1);
4. ``{"type": "end", "entries": N, "checkpoints": M}``.

Bytes are standard base64; times are RFC 3339 in UTC. The export covers the log up to its
latest stored checkpoint, so the last record before ``end`` is the checkpoint of size N.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import Engine

from exchange.ledger import storage

FORMAT = "exchange-ledger-export"
VERSION = 1
_PAGE = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One signing key in a department's key history.

    ``keyid`` is the lowercase hex SHA-256 of the raw 32-byte Ed25519 ``public_key`` (the id
    envelopes name). The key is valid for entries whose time t satisfies
    valid_from <= t < valid_until (no end if None) and, if revoked, t < revoked_at.
    Times must be timezone-aware.
    """

    actor: str
    keyid: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    size: int
    entries: int
    checkpoints: int
    keys: int


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2025-01-31T08:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("key history times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time_ns(text: str) -> int:
    """Nanoseconds since the Unix epoch of an RFC 3339 time. Raises ValueError if malformed."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def first_keys(keys: Iterable[KeyRecord], actor: str) -> list[bytes]:
    """The public keys of ``actor`` valid from the start (the epoch): for the operator, the
    keys an export declares, its later ones being introduced by its signed rotations."""
    return [k.public_key for k in keys if k.actor == actor and k.valid_from == _EPOCH]


def key_record_json(key: KeyRecord) -> dict[str, Any]:
    """The export record of one key."""
    return {
        "type": "key",
        "actor": key.actor,
        "keyid": key.keyid,
        "public_key": _b64(key.public_key),
        "valid_from": format_time(key.valid_from),
        "valid_until": format_time(key.valid_until) if key.valid_until else None,
        "revoked_at": format_time(key.revoked_at) if key.revoked_at else None,
    }


def export_ledger(
    engine: Engine,
    out: IO[str],
    key_history: Iterable[KeyRecord],
    hub_keys: Sequence[str],
    *,
    operator_keys: Sequence[bytes] = (),
    exported_at: datetime | None = None,
) -> ExportSummary:
    """Write the log, up to its latest stored checkpoint, to ``out`` as an export stream.

    ``key_history`` is every department key the verifier needs (the ledger knows nothing of
    departments, so the caller supplies it); ``hub_keys`` are the hub's signed-note verifier key
    strings, current and past; ``operator_keys`` the operator's first public keys (its later
    keys are introduced by its signed rotations in the log). Raises LookupError if the log has
    no stored checkpoint yet, and lets database errors propagate.
    """
    with engine.connect() as conn:
        latest = storage.latest_checkpoint(conn)
        if latest is None:
            raise LookupError("the ledger has no checkpoint yet; nothing to export")
        size = latest.size
        stored = storage.checkpoints(conn, size)
    keys = list(key_history)
    moment = exported_at or datetime.now(UTC)
    header: dict[str, Any] = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "origin": latest.origin,
        "size": size,
        "hub_keys": list(hub_keys),
        "exported_at": format_time(moment),
    }
    if operator_keys:
        header["operator_keys"] = [_b64(k) for k in operator_keys]
    out.write(_line(header))
    for key in keys:
        out.write(_line(key_record_json(key)))
    by_size = {c.size: c for c in stored}
    written = 0
    # Pages in separate short transactions: rows below ``size`` are immutable, so consistency
    # does not need one long read transaction that would pin the SQLite WAL.
    while written < size:
        with engine.connect() as conn:
            page = storage.read_entries(conn, written, min(_PAGE, size - written))
        if not page:
            raise LookupError(f"entry {written} is missing from the store")
        for entry in page:
            out.write(
                _line(
                    {
                        "type": "entry",
                        "sequence": entry.sequence,
                        "entry": _b64(entry.entry_bytes),
                        "envelope": _b64(entry.envelope_bytes),
                    }
                )
            )
            written += 1
            checkpoint = by_size.get(written)
            if checkpoint is not None:
                out.write(
                    _line({"type": "checkpoint", "size": checkpoint.size, "note": checkpoint.note})
                )
    out.write(_line({"type": "end", "entries": written, "checkpoints": len(stored)}))
    return ExportSummary(size=size, entries=written, checkpoints=len(stored), keys=len(keys))
