"""Repository of request idempotency records: one per (department, request id).

Every call claims its request id before it has any effect and records its answer after, so two
writes per call. Written one transaction each, they would contend with the ledger writer for
SQLite's single write lock and pay an fsync each; instead one writer thread commits every claim
and answer waiting at that moment in one transaction (group commit), and each caller is
answered after that commit.

The statements are plain SQL on the driver's cursor: SQLAlchemy's statement machinery cost
more than the statements themselves.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, delete
from sqlalchemy.engine.interfaces import DBAPICursor

from exchange.store.database import KeptConnection, writing
from exchange.store.tables import requests

log = structlog.get_logger("exchange.requests")

PENDING = 0
ANSWERED = 1
REFUSED = 2
MAX_BATCH = 512
# Answers nobody waits for are written with the next batch of claims, or after this long: a
# retry's claim always comes after its answer was queued, and a batch applies answers first.
ANSWER_DELAY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """An earlier call with the same department and request id."""

    envelope_sha256: bytes
    method: str
    state: int
    response: bytes | None


@dataclass(frozen=True, slots=True)
class _Claim:
    department_id: str
    request_id: str
    envelope_sha256: bytes
    method: str
    now_us: int


@dataclass(frozen=True, slots=True)
class _Complete:
    department_id: str
    request_id: str
    envelope_sha256: bytes
    method: str
    state: int
    response: bytes


@dataclass(frozen=True, slots=True)
class _Release:
    department_id: str
    request_id: str


Operation = _Claim | _Complete | _Release
_STOP = object()


class RequestLog:
    """Claims request ids and remembers their answers, so a retry gets the first answer.

    The async methods go through the group-commit writer (``start`` it first, from the event
    loop); ``purge`` and ``lookup`` are plain synchronous reads and writes.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer = KeptConnection(engine, "request_log")
        self._answers: deque[tuple[Operation, asyncio.Future[Any], Any]] = deque()
        self._sql = _Statements("%s" if engine.dialect.name == "postgresql" else "?")

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)

    # ------------------------------------------------------------------ operations

    async def claim(
        self, department_id: str, request_id: str, envelope_sha256: bytes, method: str, now_us: int
    ) -> RequestRecord | None:
        """Claim the request id for this call; None if claimed, else the earlier record.

        Raises the database's error if the claim cannot be committed.
        """
        result: RequestRecord | None = await self._submit(
            _Claim(department_id, request_id, envelope_sha256, method, now_us)
        )
        return result

    def complete_soon(
        self,
        department_id: str,
        request_id: str,
        envelope_sha256: bytes,
        method: str,
        state: int,
        response: bytes,
    ) -> asyncio.Future[Any]:
        """Queue the answer (serialized response, or serialized google.rpc.Status) and return
        at once; the returned future settles when it is committed.

        The caller need not wait: the call's effect is already durable in the ledger. The
        answer is written with the writer's next batch (at most ANSWER_DELAY_SECONDS later),
        before that batch's claims, so a retry queued after this sees the answer. If the
        process dies before the commit, a retry finds the claim still PENDING and is refused as
        in progress until it ages out of the replay window. A failed commit is logged.
        """
        if self._thread is None:
            raise RuntimeError("the request log is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # No wake-up: the answer goes with the writer's next batch, within ANSWER_DELAY_SECONDS
        # (the writer never waits longer than that for its queue).
        self._answers.append(
            (
                _Complete(department_id, request_id, envelope_sha256, method, state, response),
                future,
                loop,
            )
        )
        future.add_done_callback(_log_failure)
        return future

    async def release(self, department_id: str, request_id: str) -> None:
        """Forget a claim whose call failed for an internal reason, so a retry runs again."""
        await self._submit(_Release(department_id, request_id))

    def release_soon(self, department_id: str, request_id: str) -> None:
        """``release`` without waiting: for a call being cancelled (its caller went away)."""
        self._enqueue(_Release(department_id, request_id)).add_done_callback(_log_failure)

    def purge(self, before_us: int) -> int:
        """Delete records received before ``before_us``; return how many.

        Safe once they are older than the replay window: such requests are refused as stale.
        """
        with writing(self.engine) as conn:
            result = conn.execute(delete(requests).where(requests.c.received_us < before_us))
        return result.rowcount or 0

    async def _submit(self, operation: Operation) -> Any:
        return await self._enqueue(operation)

    def _enqueue(self, operation: Operation) -> asyncio.Future[Any]:
        if self._thread is None:
            raise RuntimeError("the request log is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((operation, future, loop))
        return future

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                batch = [self._queue.get(timeout=ANSWER_DELAY_SECONDS)]
            except queue.Empty:
                batch = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in batch)
            self._commit([item for item in batch if item is not _STOP])  # type: ignore[misc]
        # An answer queued while the last batch was being taken still gets written.
        self._commit([])
        self._writer.close()

    def _take_answers(self) -> list[tuple[Operation, asyncio.Future[Any], Any]]:
        """The answers queued so far, applied before the batch's claims (see
        ANSWER_DELAY_SECONDS): taken after the batch, so a retry claimed after its answer was
        queued always sees it."""
        answers = []
        while self._answers:
            answers.append(self._answers.popleft())
        return answers

    def _commit(self, queued: list[tuple[Operation, asyncio.Future[Any], Any]]) -> None:
        work = self._take_answers() + queued
        if not work:
            return

        def batch(conn: Connection) -> list[Any]:
            conn.begin()
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                results = self._apply(cursor, [operation for operation, _, _ in work])
            finally:
                cursor.close()
            self._writer.commit(conn)
            return results

        try:
            results = self._writer.run(batch)
        except Exception as exc:
            _settle_all(work, [exc] * len(work), failed=True)  # every waiter learns it
            return
        _settle_all(work, results, failed=False)

    # ------------------------------------------------------------------ statements

    def _apply(self, cursor: DBAPICursor, operations: list[Operation]) -> list[Any]:
        # Plain SQL on the driver's cursor, in the caller's transaction (the statement
        # machinery would cost more than the statements). A run of claims is one multi-row
        # INSERT … ON CONFLICT DO NOTHING RETURNING (a new id, the usual case, inserts; an id in
        # use inserts nothing and its record is read); the answers are one executemany.
        # Operations keep their order: a run ends before an operation on an id already in it.
        earlier: dict[tuple[str, str], RequestRecord | None] = {}
        results: list[Any] = [None] * len(operations)
        completes: list[tuple[Any, ...]] = []
        claims: dict[tuple[str, str], tuple[int, _Claim]] = {}
        for index, op in enumerate(operations):
            key = (op.department_id, op.request_id)
            if key in claims:
                self._claim_run(cursor, claims, earlier, results)
            if isinstance(op, _Claim):
                if key in earlier:  # claimed, answered or released earlier in this batch
                    found = earlier[key]
                    if found is not None:
                        results[index] = found
                        continue
                claims[key] = (index, op)
            elif isinstance(op, _Complete):
                completes.append((op.state, op.response, op.department_id, op.request_id))
                # A retry claimed later in this batch gets this answer.
                earlier[key] = RequestRecord(op.envelope_sha256, op.method, op.state, op.response)
            else:
                self._claim_run(cursor, claims, earlier, results)
                self._flush(cursor, completes)
                cursor.execute(self._sql.delete, key)
                earlier[key] = None
        self._claim_run(cursor, claims, earlier, results)
        self._flush(cursor, completes)
        return results

    def _claim_run(
        self,
        cursor: DBAPICursor,
        claims: dict[tuple[str, str], tuple[int, _Claim]],
        earlier: dict[tuple[str, str], RequestRecord | None],
        results: list[Any],
    ) -> None:
        if not claims:
            return
        values: list[Any] = []
        for _, op in claims.values():
            values += (op.department_id, op.request_id, op.envelope_sha256, op.method)
            values += (PENDING, None, op.now_us)
        cursor.execute(self._sql.claims(len(claims)), values)
        inserted = {(d, r) for d, r in cursor.fetchall()}
        for key, (index, op) in claims.items():
            if key in inserted:
                # A later claim of the same id in this batch sees this one.
                earlier[key] = RequestRecord(op.envelope_sha256, op.method, PENDING, None)
                continue
            cursor.execute(self._sql.select, key)
            row = cursor.fetchone()
            earlier[key] = None if row is None else _record(row)
            results[index] = earlier[key]
        claims.clear()

    def _flush(self, cursor: DBAPICursor, completes: list[tuple[Any, ...]]) -> None:
        if completes:
            cursor.executemany(self._sql.complete, completes)
            completes.clear()


class _Statements:
    """The request log's statements as SQL text, for the driver's ``placeholder`` style."""

    # The order of a claim's values in ``claims`` (``RequestLog._claim_run`` follows it).
    COLUMNS = (
        "department_id",
        "request_id",
        "envelope_sha256",
        "method",
        "state",
        "response",
        "received_us",
    )

    def __init__(self, placeholder: str) -> None:
        p = placeholder
        key = f"department_id = {p} AND request_id = {p}"
        self._row = "(" + ", ".join([p] * len(self.COLUMNS)) + ")"
        self._claims: dict[int, str] = {}
        self.select = (
            f"SELECT envelope_sha256, method, state, response FROM {requests.name} WHERE {key}"
        )
        self.complete = f"UPDATE {requests.name} SET state = {p}, response = {p} WHERE {key}"
        self.delete = f"DELETE FROM {requests.name} WHERE {key}"

    def claims(self, count: int) -> str:
        """INSERT of ``count`` claims; RETURNING names the ones inserted (an id in use is not:
        its record is then read)."""
        sql = self._claims.get(count)
        if sql is None:
            rows = ", ".join([self._row] * count)
            sql = self._claims[count] = (
                f"INSERT INTO {requests.name} ({', '.join(self.COLUMNS)}) VALUES {rows} "
                "ON CONFLICT DO NOTHING RETURNING department_id, request_id"
            )
        return sql


def _record(row: Any) -> RequestRecord:
    envelope_sha256, method, state, response = row
    return RequestRecord(
        envelope_sha256=bytes(envelope_sha256),
        method=method,
        state=state,
        response=None if response is None else bytes(response),
    )


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("request_record_failed", error=type(future.exception()).__name__)


def _settle_all(
    work: list[tuple[Operation, asyncio.Future[Any], Any]], values: list[Any], *, failed: bool
) -> None:
    """Settle every future of a batch with one wake-up of each event loop concerned."""
    by_loop: dict[Any, list[tuple[asyncio.Future[Any], Any]]] = {}
    for (_, future, loop), value in zip(work, values, strict=True):
        by_loop.setdefault(loop, []).append((future, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items, failed)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            log.warning("request_log_caller_loop_closed")


def _settle(items: list[tuple[asyncio.Future[Any], Any]], failed: bool) -> None:
    for future, value in items:
        if future.done():
            continue
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)
