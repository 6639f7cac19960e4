"""The adapter's pending Stores, kept on disk until the hub settles them (provider contract 2).

A pending Store is material the hub asked the adapter to hold aside until its ledger entry
commits (``Provider.Settle``). Kept only in memory, an adapter that died between the hub's
entry and Settle took it along: the hub's entry then named material its holder never wrote,
which ``exchange reconcile`` could report (INDEXED_NOT_HELD) but not repair. So every pending
Store is written here, and committed to disk, before the adapter answers the Store; after a
restart the adapter holds it again, ``Provider.Inventory`` reports it, and reconcile settles it
as the ledger says (docs/adapters.md, "Pending Stores").

The file is a SQLite database of the adapter's own, beside its configuration, created with
mode 0600 and refused if group or others may read it (as a private key is). It holds the
material (a subject id and its values) only sealed: AES-256-GCM under a key derived from the
department's signing key, bound to the Store's request id, so a copy of the file alone opens
nothing. In the clear are only the Store's request id (the hub's forwarded id), the material
type, the hub's reference (a keyed hash, also in the ledger), times, and the outcome of a
settled Store, kept so that a Settle repeated after a restart gets the same answer.

Writes are synchronous (``synchronous=FULL``): call the methods from a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization

from adapters.errors import SettingsError
from exchange.crypto.keys import SigningKey
from exchange.crypto.sealing import AtRest, SealError
from exchange.v1 import provider_pb2

log = structlog.get_logger("adapters.pending")

SEAL_LABEL = b"exchange.v1/adapter-pending-stores"
PENDING, COMMITTED, ABORTED = "pending", "committed", "aborted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_stores (
    store_request_id TEXT PRIMARY KEY,
    material_type TEXT NOT NULL,
    reference TEXT NOT NULL,
    state TEXT NOT NULL,
    sealed BLOB,
    sealed_by TEXT,
    since_us INTEGER NOT NULL,
    settled_us INTEGER
)
"""

# Drop the outcomes of all Settles but the newest (parameters: PENDING, PENDING, how many).
_TRIM = (
    "DELETE FROM pending_stores WHERE state <> ? AND store_request_id NOT IN ("
    "SELECT store_request_id FROM pending_stores WHERE state <> ? "
    "ORDER BY settled_us DESC LIMIT ?)"
)


@dataclass(frozen=True, slots=True)
class Held:
    """A pending Store read back from the file."""

    store_request_id: str
    body: provider_pb2.StoreRequest
    since_us: int


@dataclass(slots=True)
class Recovered:
    """What the file held at start: pending Stores (oldest first), the outcomes of recent
    Settles (oldest first; True: committed), and how many pending Stores would not open."""

    pending: list[Held] = field(default_factory=list)
    settled: list[tuple[str, bool]] = field(default_factory=list)
    unreadable: int = 0


def _sealer(key: SigningKey) -> AtRest:
    seed = key.private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return AtRest(hmac.new(seed, SEAL_LABEL, hashlib.sha256).digest())


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600, or refuse an existing one others may read.

    Raises SettingsError. SQLite gives its journal and WAL files the mode of the database."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SettingsError(
                f"pending Stores file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
            ) from None
        return
    except OSError as exc:
        raise SettingsError(f"pending Stores file {path} cannot be created: {exc}") from exc
    os.close(fd)
    os.chmod(path, 0o600)  # the umask may have narrowed it further; never wider


class PendingFile:
    """The pending Stores of one adapter, on disk. Thread-safe; every method blocks."""

    def __init__(
        self,
        path: Path,
        key: SigningKey,
        earlier_keys: Sequence[SigningKey] = (),
        keep_settled: int = 10_000,
    ) -> None:
        """``key`` seals what is written; ``earlier_keys`` (the department's retired signing
        keys) still open what was sealed before a key rotation. The outcomes of the
        ``keep_settled`` newest Settles are kept."""
        self.path = path
        self._keep_settled = keep_settled
        self._settles = 0
        self._keyid = key.keyid
        self._sealers = {k.keyid: _sealer(k) for k in (*earlier_keys, key)}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> Recovered:
        """Open (creating it if need be) and read what a previous run left.

        Raises SettingsError (an unsafe or uncreatable file), sqlite3.Error (not a database).
        """
        _private_file(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            recovered = self._read(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        if recovered.pending or recovered.unreadable:
            log.warning(
                "pending_stores_recovered",
                pending=len(recovered.pending),
                unreadable=recovered.unreadable,
            )
        return recovered

    def _read(self, db: sqlite3.Connection) -> Recovered:
        recovered = Recovered()
        db.execute(_TRIM, (PENDING, PENDING, self._keep_settled))
        rows = db.execute(
            "SELECT store_request_id, state, sealed, sealed_by, since_us FROM pending_stores "
            "ORDER BY COALESCE(settled_us, since_us)"
        ).fetchall()
        for key, state, sealed, sealed_by, since_us in rows:
            if state != PENDING:
                recovered.settled.append((key, state == COMMITTED))
                continue
            sealer = self._sealers.get(sealed_by)
            try:
                if sealer is None:
                    raise SealError("sealed under a key this adapter does not hold")
                body = provider_pb2.StoreRequest.FromString(sealer.open(sealed, key.encode()))
            except (SealError, ValueError) as exc:
                # Left in the file: the key that sealed it may come back (a restored keystore).
                log.error("pending_store_unreadable", error=str(exc))
                recovered.unreadable += 1
                continue
            recovered.pending.append(Held(key, body, since_us))
        return recovered

    def _write(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Run ``statements`` in one transaction, committed to disk before returning."""
        with self._lock:
            db = self._db
            if db is None:
                raise sqlite3.ProgrammingError("the pending Stores file is not open")
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, parameters in statements:
                    db.execute(sql, parameters)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def hold(
        self,
        key: str,
        body: provider_pb2.StoreRequest,
        since_us: int,
        replaced: Sequence[str] = (),
    ) -> None:
        """Keep ``body`` pending under ``key`` (replacing the pending Stores ``replaced``).
        Raises sqlite3.Error."""
        sealed = self._sealers[self._keyid].seal(body.SerializeToString(), key.encode())
        self._write(
            [
                *(
                    ("DELETE FROM pending_stores WHERE store_request_id = ?", (old,))
                    for old in replaced
                ),
                (
                    "INSERT OR REPLACE INTO pending_stores (store_request_id, material_type, "
                    "reference, state, sealed, sealed_by, since_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        body.material_type,
                        body.reference,
                        PENDING,
                        sealed,
                        self._keyid,
                        since_us,
                    ),
                ),
            ]
        )

    def settled(self, key: str, committed: bool, at_us: int) -> None:
        """Record how ``key`` was settled; its material is erased. Every ``keep_settled``-th
        Settle also drops the outcomes beyond the newest ``keep_settled``. Raises
        sqlite3.Error."""
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "UPDATE pending_stores SET state = ?, sealed = NULL, sealed_by = NULL, "
                "settled_us = ? WHERE store_request_id = ?",
                (COMMITTED if committed else ABORTED, at_us, key),
            )
        ]
        self._settles += 1
        if self._settles % self._keep_settled == 0:
            statements.append((_TRIM, (PENDING, PENDING, self._keep_settled)))
        self._write(statements)

    def forget(self, keys: Sequence[str]) -> None:
        """Drop ``keys`` (refused by the source, or forgotten). Raises sqlite3.Error."""
        self._write(
            [("DELETE FROM pending_stores WHERE store_request_id = ?", (key,)) for key in keys]
        )

    def close(self) -> None:
        """Close the file (what was written is on disk already)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
