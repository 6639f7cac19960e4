"""The ledger: one sequencing writer with group commit, and readers for checkpoints and proofs.

Many concurrent ``append`` calls are queued to one writer thread, which takes everything queued
(up to ``max_batch``) and commits it in one transaction: lock and re-read the head, apply each
entry's effect (if it has one), assign sequence numbers, encode each entry once, chain it to the
previous leaf hash, persist entries and every newly completed Merkle node, sign the batch's
checkpoint and compute each entry's inclusion proof in it, commit, and only then resolve the
callers' futures. A commit that fails resolves the whole batch with ``LedgerUnavailable``;
nothing in it was acknowledged.

An effect is the change a call makes (a grant stored, a department registered): written in the
entry's transaction, so the change and its entry are committed together or not at all. Each
effect runs inside a savepoint: one that fails is rolled back and its entry left out of the
batch, and only its caller learns of it.

A guard is what an OK entry's call relied on (its key, its member's state, a grant, a sharing
class), checked again in the entry's transaction after every entry before it, in batch order
with the effects: a guard that fails turns its entry into the refusal it returns, and its
caller gets that refusal instead of the receipt. So validity is judged in ledger order, by
every hub of a database alike (docs/architecture.md, "Validity in ledger order").

The head lock (the head row's lock on PostgreSQL, the write lock on SQLite) is held from the
head's read to the commit: request-id claims checked, guards, effects, sequencing, chaining,
the Merkle nodes, the batch's checkpoint signature (stored when one is due), the receipts'
inclusion proofs, and the answers stored with claimed entries (a call's answer is built from
its receipt, so both are made before the commit). Each entry's bytes but its sequence, time
and chain link are encoded before it (``entry.prepare_entry``). ``lock_stats`` reports the
hold time.

The writer is a thread rather than an asyncio task because SQLite and the psycopg driver block:
running them on the event loop would stall every gRPC call while a batch is being fsynced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from exchange.crypto.keys import SigningKey
from exchange.errors import ExchangeError
from exchange.ledger import merkle, storage
from exchange.ledger.checkpoint import Checkpoint, add_signature, sign_checkpoint, verifier_key
from exchange.ledger.entry import (
    EntryDraft,
    PreparedEntry,
    Receipt,
    StoredEntry,
    assemble_entry,
    entry_time_ns,
    prepare_entry,
)
from exchange.ledger.errors import BeyondLog, CheckpointNotFound, LedgerUnavailable
from exchange.observability import metrics
from exchange.store.group_commit import GroupCommit, call_soon, settle
from exchange.store.kept_connection import KeptConnection
from exchange.store.requests import COMMITTED, Answer, Claimed, ClaimLost, ClaimStatements
from exchange.store.write_lock import write_lock
from exchange.v1 import ledger_pb2

log = structlog.get_logger(__name__)

CommittedEntries = Sequence[tuple[int, ledger_pb2.LedgerEntry]]
CommitListener = Callable[[CommittedEntries], None]
# A write committed in the same transaction as its entry (see the module's docstring).
Effect = Callable[[Connection], None]
T = TypeVar("T")


class Appending:
    """The append a guard or an effect runs in: the time its batch's entries carry, and reads
    memoised for the batch (forgotten whenever an effect has run, as it may have changed them).
    """

    __slots__ = ("_reads", "guard_seconds", "time_ns")

    def __init__(self, time_ns: int) -> None:
        self.time_ns = time_ns
        self.guard_seconds = 0.0  # spent in guards (their share of the lock's hold time)
        self._reads: dict[Hashable, Any] = {}

    @property
    def time_us(self) -> int:
        """The entries' time in whole microseconds (the batch's time is a whole microsecond)."""
        return self.time_ns // 1000

    def read(self, key: Hashable, load: Callable[[], T]) -> T:
        """``load()``, or what it returned for ``key`` earlier in this batch since the last
        effect."""
        try:
            return self._reads[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._reads[key] = load()
            return value

    def forget(self) -> None:
        """Drop the memoised reads (an effect has run)."""
        self._reads.clear()


# Checks an OK entry relied on, re-made in its transaction: None if they still hold, else the
# refusal the entry becomes (see the module's docstring and ``Ledger.append``).
Guard = Callable[[Connection, Appending], ExchangeError | None]

_appending = threading.local()


def appending() -> Appending:
    """The append the calling effect runs in (on the writer thread, inside an effect only).

    An effect that records a time its entry's facts are judged against (a key revoked from
    this entry on) takes it from here, so it agrees with the entry's own time. Raises
    RuntimeError outside an effect.
    """
    current: Appending | None = getattr(_appending, "current", None)
    if current is None:
        raise RuntimeError("appending() is only available inside a ledger effect")
    return current


@dataclass(frozen=True, slots=True)
class LockStats:
    """How long this process's appends held the head lock: batches, entries, total and longest
    hold in seconds. ``ceiling`` is the entries per second the chain could take if the lock
    were held back to back at this hold time per entry."""

    batches: int = 0
    entries: int = 0
    seconds: float = 0.0
    longest: float = 0.0
    guards: float = 0.0  # of ``seconds``, spent re-checking what OK entries relied on

    @property
    def per_batch_ms(self) -> float:
        """Mean hold time per batch in milliseconds (0 when none)."""
        return self.seconds * 1000 / self.batches if self.batches else 0.0

    @property
    def ceiling(self) -> float:
        """Entries per second with the lock always held at the measured cost (0 when none)."""
        return self.entries / self.seconds if self.seconds else 0.0


# At most this many effects in one batch: on PostgreSQL each savepoint that writes takes a
# subtransaction id until the commit, and beyond 64 in one transaction every other session's
# snapshots overflow into pg_subtrans lookups while it is open. A longer queue waits for the
# next batch.
MAX_EFFECTS_PER_BATCH = 64


def _effects_full(batch: list[_Pending]) -> bool:
    """Whether ``batch`` holds as many effects as one batch may (MAX_EFFECTS_PER_BATCH)."""
    return batch[-1].effect is not None and (
        sum(p.effect is not None for p in batch) >= MAX_EFFECTS_PER_BATCH
    )


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How the ledger batches and checkpoints.

    A checkpoint is stored when ``checkpoint_every`` entries have been appended since the last
    stored one, or when ``checkpoint_interval_ms`` have passed with entries not yet covered, and
    at shutdown. Every commit batch is signed regardless (its checkpoint is in the receipts).
    ``key_name`` is the signed-note key name; by default the origin.
    """

    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 1000
    max_batch: int = 1000
    key_name: str | None = None


@dataclass(slots=True)
class _Pending:
    draft: EntryDraft
    envelope: bytes
    future: asyncio.Future[Receipt]
    loop: asyncio.AbstractEventLoop
    effect: Effect | None = None
    on_commit: Callable[[], None] | None = None
    guard: Guard | None = None
    claim: Claimed | None = None


class Ledger:
    """The append-only, hash-chained, Merkle-tree log of the exchange.

    Knows nothing of departments or policy: it appends entries, makes checkpoints and proves
    them. ``append`` is async and returns only after commit; the readers are synchronous, safe
    from any thread, and read the database (so they see appends of other hub processes too).
    """

    def __init__(
        self,
        engine: Engine,
        signer: SigningKey,
        origin: str,
        config: LedgerConfig = LedgerConfig(),  # frozen, so sharing the default is safe
    ) -> None:
        """Prepare a ledger on ``engine`` whose checkpoints ``signer`` signs for ``origin``.

        Raises CheckpointError if the key name (``config.key_name`` or the origin) is not a valid
        signed-note key name.
        """
        self._engine = engine
        self._signer = signer
        self._origin = origin
        self._config = config
        self._key_name = config.key_name or origin
        self._verifier_key = verifier_key(self._key_name, signer.public_bytes)
        self._overlap: tuple[SigningKey, ...] = ()  # next log keys, signing beside ``signer``
        self._writer_thread: GroupCommit[_Pending] = GroupCommit(
            "ledger-writer",
            self._commit,
            max_batch=config.max_batch,
            full=_effects_full,
            wait=self._checkpoint_wait,
            idle=self._store_checkpoint_now,
            finish=self._finish,
        )
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[CommitListener] = []
        self._grown: asyncio.Event | None = None
        self._known_size = 0
        # Writer-thread state: the committed head this process last saw and the right edge of
        # the tree at it. Reused only while the locked head still equals it.
        self._head: storage.Head | None = None
        self._last_time_ns = 0
        self._compact: merkle.CompactRange | None = None
        self._checkpoint_size = 0
        self._checkpoint_time = 0.0
        self._commits = 0
        self._lock_stats = LockStats()
        self._guard_seconds = 0.0
        self._lock_wait = 0.0  # of the last batch, for metrics (writer thread only)
        self._writer = KeptConnection(engine, "ledger", timeouts=True)
        self._claims = ClaimStatements(engine.dialect.name)
        self._write_lock = write_lock(engine)

    # ---------------------------------------------------------------- life cycle

    @property
    def origin(self) -> str:
        """The log origin named in every checkpoint."""
        return self._origin

    @property
    def commit_count(self) -> int:
        """Append transactions committed by this process (batches), for metrics."""
        return self._commits

    @property
    def lock_stats(self) -> LockStats:
        """The head lock's hold time over this process's commits so far (for metrics and
        benchmarks; docs/operations.md, "Several hubs")."""
        return self._lock_stats

    @property
    def key_name(self) -> str:
        """The signed-note key name of this ledger's checkpoint keys."""
        return self._key_name

    @property
    def known_size(self) -> int:
        """The log's size as this process last saw it commit (no database read), for metrics."""
        return self._known_size

    @property
    def stored_checkpoint(self) -> tuple[int, float]:
        """The size of the latest checkpoint this process stored or found at start, and when
        (``time.monotonic()``), for metrics."""
        return self._checkpoint_size, self._checkpoint_time

    @property
    def verifier_key(self) -> str:
        """The hub's signed-note verifier key string for this ledger's checkpoints."""
        return self._verifier_key

    async def start(self) -> None:
        """Recover state from the database and start the writer.

        If entries were committed after the last stored checkpoint (a crash), a checkpoint is
        stored for them now. Raises LedgerUnavailable if the database cannot be reached.
        """
        if self._writer_thread.running:
            return
        self._loop = asyncio.get_running_loop()
        self._grown = asyncio.Event()
        try:
            await asyncio.to_thread(self._recover)
        except Exception as exc:  # any driver or OS error means the same: cannot start
            raise LedgerUnavailable(f"the ledger cannot start: {type(exc).__name__}") from exc
        self._accepting = True
        self._writer_thread.start()

    async def close(self) -> None:
        """Commit every queued append, store a final checkpoint and stop the writer."""
        if not self._writer_thread.running:
            return
        self._accepting = False
        # Appends that raced with close and were queued after the writer left.
        leftovers = await self._writer_thread.stop()
        self._fail(leftovers, "the ledger is closed")

    async def append(
        self,
        draft: EntryDraft,
        envelope: bytes = b"",
        *,
        effect: Effect | None = None,
        on_commit: Callable[[], None] | None = None,
        guard: Guard | None = None,
        claim: Claimed | None = None,
    ) -> Receipt:
        """Record ``draft`` (with the caller's ``envelope`` bytes stored beside it).

        ``effect``, if given, is called with the writer's connection inside the entry's
        transaction, before the entry is sequenced: the change it writes is committed with the
        entry or not at all. It runs on the writer thread and must only read and write through
        the connection it is given: no other connection, nothing slow, and never a commit or a
        rollback (one that rolls back fails its whole batch; a commit would store the batch's
        earlier effects without their entries, which the ledger cannot undo); if the batch
        is run again on a new connection (the old one was lost before the commit was sent), it
        is called again. ``on_commit`` is called on the writer thread once the entry is
        committed, before any caller of its batch is answered, even if this caller has gone
        away; also after a batch that failed, whose commit may have happened. So it must be
        idempotent and harmless when nothing changed: it is for refreshing caches of what the
        effect changes. Its errors are logged.

        ``guard``, if given, is called like an effect (same thread, same rules, read only) just
        before it, with the append's ``Appending``: after every entry sequenced before this one
        and their effects. If it returns an ExchangeError, the entry is appended as that
        refusal instead (outcome REFUSED, its reason), the effect is not run, and that error is
        raised here, with the refusal's ``ledger_sequence`` set.

        ``claim``, if given, is the call's request-id claim (exchange.store.requests): the
        entry is appended only if the claim is still this process's (compare-and-set on its
        holder, before the guard and the effect), and the request id's answer is stored in the
        entry's transaction (``Claimed.answer``, given the receipt or the guard's refusal). A
        claim no longer this process's leaves the entry out and raises ``ClaimLost``
        (UNAVAILABLE, REQUEST_IN_PROGRESS): its caller retries and gets the other's answer.

        Returns after the entry is committed, with its receipt. Raises LedgerUnavailable if the
        ledger is not running or the commit fails; the entry (and its effect) is then not
        acknowledged. If ``effect`` raises sqlalchemy's IntegrityError (a unique or foreign key
        constraint), or an error that is not the database's, that error is raised here and
        neither the effect nor the entry is stored; any other database error in the effect is
        LedgerUnavailable.
        """
        if not self._accepting:
            raise LedgerUnavailable("the ledger is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        self._writer_thread.put(
            _Pending(draft, envelope, future, loop, effect, on_commit, guard, claim)
        )
        return await future

    def subscribe(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener`` on the event loop of ``start`` after each commit of this process,
        with the committed (sequence, LedgerEntry) pairs in order. Returns an unsubscribe
        function. Commits by other hub processes are not announced: follow them with
        ``entries``."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def wait_beyond(self, size: int, timeout: float | None = None) -> int:
        """Wait until this process has committed entries beyond ``size``; return the new size.

        Returns the current known size on timeout (which may equal ``size``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._known_size <= size and self._grown is not None:
            event = self._grown
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
        return self._known_size

    # ---------------------------------------------------------------- readers

    def size(self) -> int:
        """The number of committed entries."""
        with self._engine.connect() as conn:
            return storage.read_head(conn).size

    def latest_checkpoint(self) -> Checkpoint | None:
        """The stored checkpoint of the largest size, or None if none is stored yet."""
        with self._engine.connect() as conn:
            return storage.latest_checkpoint(conn)

    def checkpoint_at(self, size: int) -> Checkpoint:
        """The stored checkpoint of exactly ``size``.

        Raises BeyondLog (OutOfRange) if ``size`` is beyond the log, CheckpointNotFound
        (NotFound) if no checkpoint of that size was stored.
        """
        with self._engine.connect() as conn:
            head = storage.read_head(conn)
            if not 0 <= size <= head.size:
                raise BeyondLog(f"size {size} is beyond the log's {head.size} entries")
            checkpoint = storage.checkpoint_at(conn, size)
        if checkpoint is None:
            raise CheckpointNotFound(f"no checkpoint is stored at size {size}")
        return checkpoint

    def inclusion_proof(self, sequence: int, tree_size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of entry ``sequence`` in the tree of ``tree_size``.

        Reads O(log n) rows. Raises BeyondLog unless 0 <= sequence < tree_size <= size().
        """
        with self._engine.connect() as conn:
            head = storage.read_head(conn)
            if not 0 <= sequence < tree_size <= head.size:
                raise BeyondLog(
                    f"no entry {sequence} in a tree of {tree_size} (log has {head.size})"
                )
            return storage.range_hashes(conn, merkle.inclusion_ranges(sequence, tree_size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The RFC 9162 consistency proof between two tree sizes (O(log n) rows).

        Raises BeyondLog unless 0 <= old_size <= new_size <= size().
        """
        with self._engine.connect() as conn:
            head = storage.read_head(conn)
            if not 0 <= old_size <= new_size <= head.size:
                raise BeyondLog(
                    f"no consistency proof from {old_size} to {new_size} (log has {head.size})"
                )
            return storage.range_hashes(conn, merkle.consistency_ranges(old_size, new_size))

    def entries(self, from_sequence: int, limit: int) -> list[StoredEntry]:
        """Up to ``limit`` stored entries from ``from_sequence`` on, in order."""
        with self._engine.connect() as conn:
            return storage.read_entries(conn, from_sequence, limit)

    def entries_for_subject(self, subject_ref: bytes) -> list[StoredEntry]:
        """Every stored entry recorded with ``subject_ref`` (an indexed lookup), in order."""
        if not subject_ref:
            return []
        with self._engine.connect() as conn:
            return storage.read_entries_for_subject(conn, subject_ref)

    # ---------------------------------------------------------------- writer thread

    def _recover(self) -> None:
        storage.ensure_head(self._engine)
        with self._engine.connect() as conn:
            head = storage.read_head(conn)
            latest = storage.latest_checkpoint(conn)
        self._known_size = head.size
        self._checkpoint_size = latest.size if latest else 0
        self._checkpoint_time = time.monotonic()
        if head.size > self._checkpoint_size:
            self._store_checkpoint_now()

    def _finish(self) -> None:
        self._writer.close()
        self._store_checkpoint_now()

    def _checkpoint_wait(self) -> float | None:
        head = self._head
        if head is None or head.size <= self._checkpoint_size:
            return None
        elapsed = time.monotonic() - self._checkpoint_time
        return max(0.0, self._config.checkpoint_interval_ms / 1000 - elapsed)

    def _checkpoint_due(self, size: int) -> bool:
        if size - self._checkpoint_size >= self._config.checkpoint_every:
            return True
        elapsed_ms = (time.monotonic() - self._checkpoint_time) * 1000
        return elapsed_ms >= self._config.checkpoint_interval_ms

    def _sign(self, size: int, root: bytes) -> Checkpoint:
        checkpoint = sign_checkpoint(self._origin, size, root, self._signer, self._key_name)
        for key in self._overlap:
            checkpoint = add_signature(checkpoint, key, self._key_name)
        return checkpoint

    def sign_also_with(self, key: SigningKey) -> None:
        """Sign every later checkpoint with ``key`` too (the next log key, during a rotation's
        overlap: auditors pin it beside the current one). Thread-safe."""
        if key.keyid != self._signer.keyid and all(k.keyid != key.keyid for k in self._overlap):
            self._overlap = (*self._overlap, key)

    def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            # What does not depend on the entries' place in the log is encoded before the
            # head lock is taken (a guard's refusal is encoded again under it).
            prepared = {id(p): prepare_entry(p.draft, p.envelope) for p in batch}
            outcomes, committed, size, refused = self._writer.run(
                lambda conn: self._append_batch(conn, batch, prepared)
            )
        except Exception as exc:  # the writer must survive any driver/OS error, and say so
            metrics.COMMIT_FAILURES.inc()
            self._head = self._compact = None  # re-read everything next time
            log.error("ledger_commit_failed", entries=len(batch), error=type(exc).__name__)
            # The commit may have happened (a connection lost once it was sent): refresh what
            # the effects may have changed; a refresh of what did not change costs a read.
            _after_commit(batch)
            self._fail(batch, f"the ledger cannot commit: {type(exc).__name__}")
            return
        metrics.observe_commit(len(committed), time.perf_counter() - started, self._lock_wait)
        _after_commit([p for index, p in enumerate(batch) if index not in refused])
        settle(
            (pending.future, pending.loop, outcome)
            for pending, outcome in zip(batch, outcomes, strict=True)
        )
        if self._loop is not None:
            call_soon(self._loop, self._announce, committed, size)

    def _fail(self, batch: list[_Pending], message: str) -> None:
        # One error per caller: flows add their call's facts to the error they catch
        # (exchange.flows.lookups.facts), so a shared one would carry one call's facts into
        # another call's refusal entry.
        settle((pending.future, pending.loop, LedgerUnavailable(message)) for pending in batch)

    def _announce(self, committed: CommittedEntries, size: int) -> None:
        self._known_size = max(self._known_size, size)
        if self._grown is not None:
            self._grown.set()
            self._grown = asyncio.Event()
        for listener in list(self._listeners):
            try:
                listener(committed)
            except Exception:  # one faulty consumer must not starve the others
                log.exception("ledger_listener_failed")

    def _append_batch(
        self, conn: Connection, original: list[_Pending], prepared: dict[int, PreparedEntry]
    ) -> tuple[list[Receipt | BaseException], CommittedEntries, int, set[int]]:
        """Append ``original`` in one transaction; return each caller's outcome (in order),
        the committed entries, the new size and the indexes whose effect failed."""
        batch = original
        locking = time.perf_counter()
        head, edge = storage.lock_head_and_edge(conn)
        self._lock_wait = time.perf_counter() - locking
        locked = time.perf_counter()  # held from here to the commit (the wait is not counted)
        if head == self._head and self._compact is not None:
            compact = self._compact.copy()
            last_ns = self._last_time_ns
        elif edge.hashes is not None and edge.last_time_ns is not None:
            # Another hub appended (or this is the first batch): its edge is in the head row.
            compact = merkle.CompactRange(head.size, edge.hashes)
            last_ns = edge.last_time_ns
        else:  # a log whose head row does not keep its edge yet: read it from the tree
            compact = storage.compact_range(conn, head.size)
            last_ns = self._time_at(conn, head.size)
        # Entry times never go backwards along the chain (the verifier checks it): another
        # hub process may have appended with a later clock reading, or this clock stepped
        # back. The batch's time is read after the head is locked, and is a whole microsecond
        # (the registry's times are microseconds: a key revoked from its revocation's entry on
        # is then revoked from exactly that time, as the verifier reads it).
        now_ns = max(time.time_ns() // 1000 * 1000, -(-last_ns // 1000) * 1000)
        at = Appending(now_ns)
        # The calls whose request-id claim is no longer this process's are left out.
        lost = self._hold_claims(conn, batch)
        refused, guarded = _apply_effects(conn, batch, at, lost)
        self._guard_seconds += at.guard_seconds
        if refused:
            batch = [p for index, p in enumerate(batch) if index not in refused]
        if not batch:  # every effect failed: nothing to append
            self._writer.commit(conn)
            self._count_hold(locked, 0)
            return [refused[index] for index in range(len(original))], [], head.size, set(refused)
        old_size = head.size
        cache: dict[storage.Node, bytes] = dict(
            zip(merkle.range_subtrees(0, old_size), compact.hashes, strict=True)
        )
        prev = head.last_leaf_hash
        rows: list[tuple[int, bytes, bytes, bytes, bytes | None]] = []
        completed: list[tuple[int, int, bytes]] = []
        leaf_hashes: list[bytes] = []
        for offset, pending in enumerate(batch):
            sequence = old_size + offset
            refusal = guarded.get(id(pending))
            draft = pending.draft
            parts = prepared[id(pending)]
            if refusal is not None:
                draft = _refused(draft, refusal)
                parts = prepare_entry(draft, pending.envelope)
            data = assemble_entry(parts, sequence=sequence, time_ns=now_ns, prev_leaf_hash=prev)
            leaf = merkle.leaf_hash(data)
            compact.append(leaf, completed)
            cache[(0, sequence)] = leaf
            subject = draft.subject_ref or None  # NULL keeps the index small
            rows.append((sequence, data, pending.envelope, leaf, subject))
            leaf_hashes.append(leaf)
            prev = leaf
        for level, idx, h in completed:
            cache[(level, idx)] = h
        new_head = storage.Head(compact.size, prev)
        storage.write_batch(conn, new_head, rows, completed, compact.hashes, now_ns)
        store = self._checkpoint_due(new_head.size)
        # The receipts are made in the transaction, before the commit, as the answers the
        # request ids keep are made from them: the batch's signed checkpoint and each entry's
        # inclusion proof in it (the nodes they need are in ``cache``, or committed earlier).
        checkpoint = self._sign(new_head.size, compact.root())
        if store:
            storage.store_checkpoint(conn, checkpoint)
        proofs = _BatchProofs(conn, cache, new_head.size)
        receipts = [
            Receipt(
                sequence=old_size + offset,
                leaf_hash=leaf,
                checkpoint=checkpoint.note,
                inclusion_proof=proofs.inclusion(old_size + offset),
            )
            for offset, leaf in enumerate(leaf_hashes)
        ]
        self._answer_claims(conn, batch, receipts, guarded)
        # Through the kept connection, which then knows the commit was sent: a connection lost
        # from here on leaves the outcome unknown, and the batch (effects included) must not
        # run again on a new connection.
        self._writer.commit(conn)
        self._count_hold(locked, len(batch))
        self._head, self._compact = new_head, compact
        self._last_time_ns = now_ns
        self._commits += 1
        if store:
            self._checkpoint_size = new_head.size
            self._checkpoint_time = time.monotonic()
        # Decoded for the commit listeners, after the lock is released.
        committed = [(row[0], ledger_pb2.LedgerEntry.FromString(row[1])) for row in rows]
        outcomes: dict[int, Receipt | BaseException] = {
            id(p): r for p, r in zip(batch, receipts, strict=True)
        }
        for offset, pending in enumerate(batch):
            refusal = guarded.get(id(pending))
            if refusal is not None:
                refusal.ledger_sequence = old_size + offset
                outcomes[id(pending)] = refusal
        ordered = [
            refused[index] if index in refused else outcomes[id(pending)]
            for index, pending in enumerate(original)
        ]
        return ordered, committed, new_head.size, set(refused)

    def _hold_claims(self, conn: Connection, batch: list[_Pending]) -> set[int]:
        """Confirm, in the batch's transaction, that the request-id claims of ``batch`` are
        still this process's (and lock their rows until the commit); return the ``id`` of
        each pending append whose claim is not."""
        claimed = [p.claim for p in batch if p.claim is not None]
        if not claimed:
            return set()
        held = self._claims.hold(conn, claimed)
        return {
            id(p)
            for p in batch
            if p.claim is not None and (p.claim.department_id, p.claim.request_id) not in held
        }

    def _answer_claims(
        self,
        conn: Connection,
        batch: list[_Pending],
        receipts: list[Receipt],
        guarded: dict[int, ExchangeError],
    ) -> None:
        """Store, in the batch's transaction, the answer of each claimed call of ``batch``
        (appended, in order, with ``receipts``): what a retry with the same bytes gets."""
        rows: list[Answer] = []
        for pending, receipt in zip(batch, receipts, strict=True):
            claim = pending.claim
            if claim is None:
                continue
            refusal = guarded.get(id(pending))
            try:
                state, response = claim.answer(receipt, refusal)
            except Exception:  # the call's answer is then stored by the call, after the commit
                log.exception("ledger_answer_failed")
                state, response = COMMITTED, None
            rows.append(Answer(claim, state, response, receipt.sequence))
        if rows:
            self._claims.answer(conn, rows)

    def _count_hold(self, locked: float, entries: int) -> None:
        held = time.perf_counter() - locked
        stats = self._lock_stats
        self._lock_stats = LockStats(
            stats.batches + 1,
            stats.entries + entries,
            stats.seconds + held,
            max(stats.longest, held),
            self._guard_seconds,
        )

    @staticmethod
    def _time_at(conn: Connection, size: int) -> int:
        """The time of the last entry of a log of ``size`` entries (0 when empty)."""
        if size == 0:
            return 0
        (last,) = storage.read_entries(conn, size - 1, 1)
        return entry_time_ns(last.decode())

    def _store_checkpoint_now(self) -> None:
        """Store a checkpoint at the committed head if none is stored there (timer, start,
        shutdown). A failure is logged and retried at the next interval."""
        try:
            with self._write_lock, self._engine.connect() as conn:
                head = storage.lock_head(conn)
                if head.size == 0:
                    conn.rollback()
                    self._head = head
                    return
                if head == self._head and self._compact is not None:
                    compact = self._compact
                else:
                    compact = storage.compact_range(conn, head.size)
                storage.store_checkpoint(conn, self._sign(head.size, compact.root()))
                conn.commit()
        except Exception as exc:  # keep the writer alive; the next interval retries
            self._head = self._compact = None
            self._checkpoint_time = time.monotonic()
            log.error("ledger_checkpoint_failed", error=type(exc).__name__)
            return
        self._head, self._compact = head, compact
        self._checkpoint_size = head.size
        self._checkpoint_time = time.monotonic()

    # ---------------------------------------------------------------- before a holder call

    async def ensure_writable(self) -> None:
        """Return at once if this process's last write to the log succeeded; otherwise refuse
        what would need an entry, before a holder is asked to fetch or store (issue 13: no
        entry, no access, at the holder too).

        Raises LedgerUnavailable (UNAVAILABLE, LEDGER_UNAVAILABLE, retry after
        ``PROBE_RETRY_SECONDS``) when a commit or checkpoint of this process failed and none
        succeeded since, or, before this process's first commit, when a connection check of
        at most ``PROBE_TIMEOUT_SECONDS`` fails. A healthy writer costs no database round trip.
        The refusal's own entry is the next commit attempt: once it commits, calls pass again.
        """
        if self._head is not None:  # the writer's last commit (or checkpoint) succeeded
            return
        if self._commits:  # it had committed, and a later commit or checkpoint failed
            raise _writer_down("the ledger cannot commit (its last commit failed); retry")
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await asyncio.to_thread(self._probe)
        except Exception as exc:  # any driver or OS error, or the timeout: the same refusal
            raise _writer_down(
                f"the ledger's database cannot be reached ({type(exc).__name__}); retry"
            ) from exc

    def _probe(self) -> None:
        """One short statement on a pooled connection (worker thread)."""
        with self._engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


# How long ensure_writable waits for its connection check, and the retry delay it tells callers.
PROBE_TIMEOUT_SECONDS = 1.0
PROBE_RETRY_SECONDS = 1.0


def _writer_down(message: str) -> LedgerUnavailable:
    refusal = LedgerUnavailable(message)
    refusal.retry_after = PROBE_RETRY_SECONDS
    return refusal


def _after_commit(batch: list[_Pending]) -> None:
    """Run the ``on_commit`` hooks of ``batch`` (committed, or of unknown outcome); a failing
    hook is logged, and its caller is still answered."""
    for pending in batch:
        if pending.on_commit is not None:
            try:
                pending.on_commit()
            except Exception:
                log.exception("ledger_on_commit_failed")


def _refused(draft: EntryDraft, refusal: ExchangeError) -> EntryDraft:
    """The entry a guard's refusal turns ``draft`` into: the same call, refused."""
    return dataclasses.replace(
        draft,
        outcome=ledger_pb2.REFUSED,
        reason=refusal.reason,
        attributes={**draft.attributes, "checked": "at commit"},
    )


def _apply_effects(
    conn: Connection, batch: list[_Pending], at: Appending, lost: set[int]
) -> tuple[dict[int, Exception], dict[int, ExchangeError]]:
    """Run the guards and effects of ``batch`` in the open transaction, in order, each effect
    in a savepoint. Return the errors of the effects that failed (rolled back), by their
    index in the batch, and the refusals of the guards that failed, by ``id`` of their
    pending append (whose effect was then not run). The appends in ``lost`` (by ``id``: their
    request-id claim is no longer this process's) are refused with ClaimLost, unrun.

    A lost connection is raised: the whole batch fails (``KeptConnection`` may run it again on
    a new connection, effects included, as nothing was committed).
    """
    refused: dict[int, Exception] = {}
    guarded: dict[int, ExchangeError] = {}
    _appending.current = at
    try:
        for index, pending in enumerate(batch):
            if id(pending) in lost:  # its request id is another's now: not appended
                refused[index] = ClaimLost()
                continue
            if pending.guard is not None:
                checking = time.perf_counter()
                refusal = pending.guard(conn, at)
                at.guard_seconds += time.perf_counter() - checking
                if refusal is not None:
                    guarded[id(pending)] = refusal
                    continue
            if pending.effect is None:
                continue
            error = _apply_effect(conn, pending.effect)
            at.forget()  # the effect may have changed what guards read
            if error is not None:
                refused[index] = error
    finally:
        _appending.current = None
    return refused, guarded


def _apply_effect(conn: Connection, effect: Effect) -> Exception | None:
    """Run one effect in a savepoint; return its error if it failed (rolled back)."""
    savepoint = conn.begin_nested()
    try:
        effect(conn)
    except Exception as exc:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise
        if not savepoint.is_active:  # the batch's transaction is gone: fail the batch
            raise RuntimeError("an effect ended the ledger's transaction") from exc
        savepoint.rollback()
        if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError):
            # Not a conflict the flow answers: the operator needs the cause. The log shows
            # its type, SQLSTATE and constraint, never its message, which can quote values
            # (exchange.logs.withhold_database_messages).
            log.exception("ledger_effect_failed", error=type(exc).__name__)
            return LedgerUnavailable(f"the ledger cannot commit: {type(exc).__name__}")
        return exc
    if not savepoint.is_active:  # the effect rolled back: the head lock may be gone too
        raise RuntimeError("an effect ended the ledger's transaction")
    savepoint.commit()
    return None


class _BatchProofs:
    """Inclusion proofs for every entry of a batch in the batch's tree.

    The proof of leaf i in a tree of n leaves is, bottom-up: the siblings of i's ancestors below
    the level where the paths to i and to n-1 part (all complete subtrees, except the topmost of
    them, which is the right edge [start, n) and may be incomplete), then the left siblings
    wherever i's ancestor is a right child above that level. This is RFC 9162 PATH computed
    directly from (level, index) nodes. Every node needed is on the old tree's right edge or
    completed by the batch (both in ``cache``); anything else is read from the open
    transaction. Right-edge hashes are shared by many entries of the batch, so they are memoised.
    """

    def __init__(self, conn: Connection, cache: dict[storage.Node, bytes], size: int) -> None:
        self._conn = conn
        self._cache = cache
        self._size = size
        self._edges: dict[tuple[int, int], bytes] = {}

    def _node(self, level: int, index: int) -> bytes:
        h = self._cache.get((level, index))
        if h is None:
            node = (level, index)
            fetched = storage.fetch_nodes(self._conn, [node])
            if node not in fetched:
                raise LookupError(f"ledger node {node} is missing")
            h = self._cache[node] = fetched[node]
        return h

    def _edge(self, level: int, index: int) -> bytes:
        start = index << level
        if start + (1 << level) <= self._size:
            return self._node(level, index)
        key = (level, index)
        h = self._edges.get(key)
        if h is None:
            plan = merkle.range_subtrees(start, self._size)
            h = self._edges[key] = merkle.fold_subtrees([self._node(*n) for n in plan])
        return h

    def inclusion(self, index: int) -> tuple[bytes, ...]:
        size = self._size
        cache = self._cache
        inner = (index ^ (size - 1)).bit_length()
        proof: list[bytes] = []
        for level in range(inner - 1):
            sibling = (index >> level) ^ 1
            h = cache.get((level, sibling))
            proof.append(h if h is not None else self._node(level, sibling))
        if inner:
            proof.append(self._edge(inner - 1, (index >> (inner - 1)) ^ 1))
        for level in range(inner, size.bit_length()):
            if (index >> level) & 1:
                proof.append(self._node(level, (index >> level) ^ 1))
        return tuple(proof)
