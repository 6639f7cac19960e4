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

The writer is a thread rather than an asyncio task because SQLite and the psycopg driver block:
running them on the event loop would stall every gRPC call while a batch is being fsynced.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from exchange.crypto.keys import SigningKey
from exchange.ledger import merkle, storage
from exchange.ledger.checkpoint import Checkpoint, sign_checkpoint, verifier_key
from exchange.ledger.entry import (
    EntryDraft,
    Receipt,
    StoredEntry,
    build_entry,
    encode_entry,
    entry_time_ns,
)
from exchange.ledger.errors import BeyondLog, CheckpointNotFound, LedgerUnavailable
from exchange.observability import metrics
from exchange.store.database import KeptConnection, write_lock
from exchange.v1 import ledger_pb2

log = structlog.get_logger(__name__)

CommittedEntries = Sequence[tuple[int, ledger_pb2.LedgerEntry]]
CommitListener = Callable[[CommittedEntries], None]
# A write committed in the same transaction as its entry (see the module's docstring).
Effect = Callable[[Connection], None]
# At most this many effects in one batch: on PostgreSQL each savepoint that writes takes a
# subtransaction id until the commit, and beyond 64 in one transaction every other session's
# snapshots overflow into pg_subtrans lookups while it is open. A longer queue waits for the
# next batch.
MAX_EFFECTS_PER_BATCH = 64


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


_STOP = object()


def _settle(items: list[tuple[asyncio.Future[Receipt], Receipt | BaseException]]) -> None:
    for future, result in items:
        if future.done():  # the caller gave up (cancelled); the entry may still be committed
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


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
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
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
        self._lock_wait = 0.0  # of the last batch, for metrics (writer thread only)
        self._writer = KeptConnection(engine, "ledger")
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
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._grown = asyncio.Event()
        try:
            await asyncio.to_thread(self._recover)
        except Exception as exc:  # any driver or OS error means the same: cannot start
            raise LedgerUnavailable(f"the ledger cannot start: {type(exc).__name__}") from exc
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Commit every queued append, store a final checkpoint and stop the writer."""
        thread = self._thread
        if thread is None:
            return
        self._accepting = False
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)
        self._thread = None
        # Appends that raced with close and were queued after the writer left.
        leftovers: list[_Pending] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                leftovers.append(item)
        self._fail(leftovers, "the ledger is closed")

    async def append(
        self,
        draft: EntryDraft,
        envelope: bytes = b"",
        *,
        effect: Effect | None = None,
        on_commit: Callable[[], None] | None = None,
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
        self._queue.put(_Pending(draft, envelope, future, loop, effect, on_commit))
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

    def _run(self) -> None:
        stopping = False
        max_batch = self._config.max_batch
        while True:
            if stopping:  # drain what was queued before close, then leave
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                try:
                    item = self._queue.get(timeout=self._checkpoint_wait())
                except queue.Empty:
                    self._store_checkpoint_now()
                    continue
            batch: list[_Pending] = []
            effects = 0
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Pending):
                    batch.append(item)
                    effects += item.effect is not None
                if len(batch) >= max_batch or effects >= MAX_EFFECTS_PER_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
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
        return sign_checkpoint(self._origin, size, root, self._signer, self._key_name)

    def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            receipts, committed, size, refused = self._writer.run(
                lambda conn: self._append_batch(conn, batch)
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
        by_loop: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[Receipt], Receipt | BaseException]],
        ]
        by_loop = {}
        for pending, outcome in zip(batch, _outcomes(batch, receipts, refused), strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
        for loop, items in by_loop.items():
            self._call_soon(loop, _settle, items)
        if self._loop is not None:
            self._call_soon(self._loop, self._announce, committed, size)

    def _fail(self, batch: list[_Pending], message: str) -> None:
        # One error per caller: flows add their call's facts to the error they catch
        # (exchange.flows.lookups.facts), so a shared one would carry one call's facts into
        # another call's refusal entry.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Receipt], Exception]]]
        by_loop = {}
        for pending in batch:
            by_loop.setdefault(pending.loop, []).append(
                (pending.future, LedgerUnavailable(message))
            )
        for loop, items in by_loop.items():
            self._call_soon(loop, _settle, items)

    @staticmethod
    def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            log.warning("ledger_caller_loop_closed")

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
        self, conn: Connection, batch: list[_Pending]
    ) -> tuple[list[Receipt], list[tuple[int, ledger_pb2.LedgerEntry]], int, dict[int, Exception]]:
        now_ns = time.time_ns()
        locking = time.perf_counter()
        head = storage.lock_head(conn)
        self._lock_wait = time.perf_counter() - locking
        refused = _apply_effects(conn, batch)
        if refused:
            batch = [p for index, p in enumerate(batch) if index not in refused]
        if not batch:  # every effect failed: nothing to append
            self._writer.commit(conn)
            return [], [], head.size, refused
        if head == self._head and self._compact is not None:
            compact = self._compact.copy()
            last_ns = self._last_time_ns
        else:  # first batch, after a failure, or another hub appended: re-read the edge
            compact = storage.compact_range(conn, head.size)
            last_ns = self._time_at(conn, head.size)
        # Entry times never go backwards along the chain (the verifier checks it): another
        # hub process may have appended with a later clock reading, or this clock stepped
        # back. The batch's time is read after the head is locked.
        now_ns = max(now_ns, last_ns)
        old_size = head.size
        cache: dict[storage.Node, bytes] = dict(
            zip(merkle.range_subtrees(0, old_size), compact.hashes, strict=True)
        )
        prev = head.last_leaf_hash
        rows: list[tuple[int, bytes, bytes, bytes, bytes | None]] = []
        completed: list[tuple[int, int, bytes]] = []
        committed: list[tuple[int, ledger_pb2.LedgerEntry]] = []
        leaf_hashes: list[bytes] = []
        for offset, pending in enumerate(batch):
            sequence = old_size + offset
            entry = build_entry(
                pending.draft,
                sequence=sequence,
                time_ns=now_ns,
                prev_leaf_hash=prev,
                envelope=pending.envelope,
            )
            data = encode_entry(entry)
            leaf = merkle.leaf_hash(data)
            compact.append(leaf, completed)
            cache[(0, sequence)] = leaf
            subject = pending.draft.subject_ref or None  # NULL keeps the index small
            rows.append((sequence, data, pending.envelope, leaf, subject))
            committed.append((sequence, entry))
            leaf_hashes.append(leaf)
            prev = leaf
        for level, idx, h in completed:
            cache[(level, idx)] = h
        new_head = storage.Head(compact.size, prev)
        storage.write_batch(conn, new_head, rows, completed)
        checkpoint = self._sign(new_head.size, compact.root())
        store = self._checkpoint_due(new_head.size)
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
        # Through the kept connection, which then knows the commit was sent: a connection lost
        # from here on leaves the outcome unknown, and the batch (effects included) must not
        # run again on a new connection.
        self._writer.commit(conn)
        self._head, self._compact = new_head, compact
        self._last_time_ns = now_ns
        self._commits += 1
        if store:
            self._checkpoint_size = new_head.size
            self._checkpoint_time = time.monotonic()
        return receipts, committed, new_head.size, refused

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


def _after_commit(batch: list[_Pending]) -> None:
    """Run the ``on_commit`` hooks of ``batch`` (committed, or of unknown outcome); a failing
    hook is logged, and its caller is still answered."""
    for pending in batch:
        if pending.on_commit is not None:
            try:
                pending.on_commit()
            except Exception:
                log.exception("ledger_on_commit_failed")


def _apply_effects(conn: Connection, batch: list[_Pending]) -> dict[int, Exception]:
    """Run the effects of ``batch`` in the open transaction, each in a savepoint; return the
    errors of those that failed (rolled back), by their index in the batch.

    A lost connection is raised: the whole batch fails (``KeptConnection`` may run it again on
    a new connection, effects included, as nothing was committed).
    """
    refused: dict[int, Exception] = {}
    for index, pending in enumerate(batch):
        if pending.effect is None:
            continue
        savepoint = conn.begin_nested()
        try:
            pending.effect(conn)
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
                exc = LedgerUnavailable(f"the ledger cannot commit: {type(exc).__name__}")
            refused[index] = exc
            continue
        if not savepoint.is_active:  # the effect rolled back: the head lock may be gone too
            raise RuntimeError("an effect ended the ledger's transaction")
        savepoint.commit()
    return refused


def _outcomes(
    batch: list[_Pending], receipts: list[Receipt], refused: dict[int, Exception]
) -> list[Receipt | BaseException]:
    """Each caller's outcome, in batch order: its receipt, or its effect's error."""
    appended = iter(receipts)
    return [refused[index] if index in refused else next(appended) for index in range(len(batch))]


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
