"""Repository of request ids: one durable life per (department, request id).

A call claims its request id before it has any effect: a PENDING row naming its holder (this
hub process: ``Holder``) and a lease (until when the holder answers for it). The call's ledger
entry, its effect and the answer a retry will get are then committed in one transaction by the
ledger's writer (``ClaimStatements``, used by exchange.ledger.writer): the row becomes ANSWERED
or REFUSED there, guarded by compare-and-set on its holder, so an entry is never committed
under a claim another hub has taken over. A call whose flow cannot build its answer in that
transaction leaves the row COMMITTED (with its entry's sequence) and stores the answer itself
(``complete``) before it answers. A refusal for a passing condition frees the id (``release``).

So a PENDING row always means that nothing of its call was committed: a restarting hub deletes
its own earlier rows (``settle_leftovers``), and any hub may take over a row whose lease has
passed (``claim``).

Claims, answers and releases made outside the ledger's transaction are group-committed by one
writer thread (exchange.store.group_commit), as plain SQL on the driver's cursor: SQLAlchemy's
statement machinery cost more than the statements themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy import Connection, Engine, delete, text

from exchange import errors
from exchange.store.failures import database_failure
from exchange.store.group_commit import GroupCommit, settle
from exchange.store.kept_connection import KeptConnection
from exchange.store.tables import requests
from exchange.store.write_lock import writing
from exchange.v1 import common_pb2

if TYPE_CHECKING:  # the ledger imports this module
    from exchange.ledger.entry import Receipt

log = structlog.get_logger("exchange.requests")

PENDING = 0
ANSWERED = 1
REFUSED = 2
# The call's entry is committed but its answer was not stored with it (see the module).
COMMITTED = 3
MAX_BATCH = 512
# How long a retry finding its request id in progress is told to wait.
IN_PROGRESS_RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a claim: this hub process, as ``instance#boot``. ``instance`` names the hub
    (its id, host and listening address), the same across restarts; ``boot`` is new for each
    start, so a restarted hub knows its earlier claims."""

    instance: str
    boot: str

    @classmethod
    def of(cls, hub_id: str, listen: str) -> Holder:
        """The holder of this process, for a hub ``hub_id`` listening at ``listen``. A hub
        listening on a port chosen at start (port 0) has no earlier run to recognise: its
        instance is unique, and only leases free what it leaves."""
        boot = os.urandom(8).hex()
        where = f"{listen}/{boot}" if listen.endswith(":0") else listen
        return cls(f"{hub_id}@{socket.gethostname()}/{where}", boot)

    @property
    def name(self) -> str:
        """This process's part of every holder it stores in a claim."""
        return f"{self.instance}#{self.boot}"

    def call(self) -> str:
        """The holder of one call's claim: this process's name and a number of its own, so
        that no two calls of the process can release or answer each other's claims."""
        return f"{self.name}/{next(_calls)}"


_calls = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """An earlier call with the same department and request id."""

    envelope_sha256: bytes
    method: str
    state: int
    response: bytes | None
    holder: str | None = None
    lease_until_us: int | None = None
    ledger_sequence: int | None = None


class Claimed(Protocol):
    """A call's claim as the ledger's writer sees it (exchange.api.claims.CallClaim)."""

    department_id: str
    request_id: str
    holder: str

    def answer(self, receipt: Receipt, refusal: errors.ExchangeError | None) -> tuple[int, Any]:
        """The state (ANSWERED, REFUSED, or COMMITTED when it cannot be built here) and the
        stored answer (sealed bytes, or None) of the call whose entry has ``receipt``; with
        ``refusal`` when the entry was appended as that refusal. Called on the writer thread,
        inside the entry's transaction."""
        ...


@dataclass(frozen=True, slots=True)
class Answer:
    """What the ledger's transaction stores for a claimed call."""

    claim: Claimed
    state: int
    response: bytes | None
    sequence: int


class ClaimLost(errors.Unavailable):
    """The call's request id is no longer this hub process's (its lease passed and another
    took it over, or it was settled at a restart): its entry was not appended. A retry gets
    the other call's answer."""

    def __init__(self) -> None:
        super().__init__(
            common_pb2.REQUEST_IN_PROGRESS,
            "this request id was taken over by another call; retry to get its answer",
            retry_after=IN_PROGRESS_RETRY_SECONDS,
        )


class ClaimStatements:
    """The statements the ledger's writer makes on claims, in its own transaction."""

    def __init__(self, dialect: str) -> None:
        p = "%s" if dialect == "postgresql" else "?"
        self._p = p
        self._hold: dict[int, str] = {}
        self._answer = (
            f"UPDATE {requests.name} SET state = {p}, response = {p}, ledger_sequence = {p} "
            f"WHERE department_id = {p} AND request_id = {p}"
        )

    def hold(self, conn: Connection, claims: list[Claimed]) -> set[tuple[str, str]]:
        """The (department, request id) of ``claims`` still PENDING under their holder, their
        rows locked until the transaction ends."""
        sql = self._hold.get(len(claims))
        if sql is None:
            p = self._p
            # An OR of primary-key lookups: both databases then search the key's index per
            # claim (a row-value IN scans the whole table on SQLite).
            one = f"(department_id = {p} AND request_id = {p} AND holder = {p})"
            sql = self._hold[len(claims)] = (
                f"UPDATE {requests.name} SET state = state WHERE state = {PENDING} AND "
                f"({' OR '.join([one] * len(claims))}) RETURNING department_id, request_id"
            )
        values: list[Any] = []
        for claim in claims:
            values += (claim.department_id, claim.request_id, claim.holder)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, values)
            return {(d, r) for d, r in cursor.fetchall()}
        finally:
            cursor.close()

    def answer(self, conn: Connection, answers: list[Answer]) -> None:
        """Store each answer on its claim's row (held by ``hold`` in this transaction)."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(
                self._answer,
                [
                    (a.state, a.response, a.sequence, a.claim.department_id, a.claim.request_id)
                    for a in answers
                ],
            )
        finally:
            cursor.close()


@dataclass(frozen=True, slots=True)
class _Claim:
    department_id: str
    request_id: str
    envelope_sha256: bytes
    method: str
    now_us: int
    holder: str
    lease_until_us: int


@dataclass(frozen=True, slots=True)
class _Complete:
    department_id: str
    request_id: str
    holder: str
    state: int
    response: bytes


@dataclass(frozen=True, slots=True)
class _Release:
    department_id: str
    request_id: str
    holder: str


Operation = _Claim | _Complete | _Release


@dataclass(frozen=True, slots=True)
class _Queued:
    operation: Operation
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class RequestLog:
    """Claims request ids, releases them, and stores the answers the ledger's transaction did
    not, so that a retry gets the first answer.

    The async methods go through the group-commit writer (``start`` it first, from the event
    loop); ``purge`` and ``settle_leftovers`` are plain synchronous writes. Every database
    failure is raised as errors.DatabaseUnavailable (UNAVAILABLE).
    """

    def __init__(self, engine: Engine, holder: Holder | None = None) -> None:
        self.engine = engine
        self.holder = holder or Holder("local", os.urandom(8).hex())
        self._writer = KeptConnection(engine, "request_log", timeouts=True)
        self._thread: GroupCommit[_Queued] = GroupCommit(
            "request-log", self._commit, max_batch=MAX_BATCH, finish=self._writer.close
        )
        self._sql = _Statements("%s" if engine.dialect.name == "postgresql" else "?")

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        for late in await self._thread.stop():
            settle([(late.future, late.loop, errors.DatabaseUnavailable("the hub is stopping"))])

    def settle_leftovers(self) -> int:
        """Delete the PENDING claims of this hub's earlier runs (same instance, another boot):
        nothing of their calls was committed, and their holder is gone. Return how many."""
        instance = self.holder.instance + "#"
        me = self.holder.name + "/"
        with writing(self.engine) as conn:
            result = conn.execute(
                text(
                    f"DELETE FROM {requests.name} WHERE state = {PENDING} "
                    "AND substr(holder, 1, :n) = :instance AND substr(holder, 1, :m) <> :me"
                ),
                {"instance": instance, "n": len(instance), "me": me, "m": len(me)},
            )
        return result.rowcount or 0

    # ------------------------------------------------------------------ operations

    async def claim(
        self,
        department_id: str,
        request_id: str,
        envelope_sha256: bytes,
        method: str,
        now_us: int,
        lease_until_us: int | None = None,
        holder: str | None = None,
    ) -> RequestRecord | None:
        """Claim the request id for this call, held by ``holder`` (``Holder.call``; by default
        this process's name) until ``lease_until_us`` (by default one minute). Return None if
        claimed (a new id, or a PENDING one whose lease passed with the same bytes: taken
        over), else the earlier record.

        Raises errors.DatabaseUnavailable if the claim cannot be committed.
        """
        lease = now_us + 60_000_000 if lease_until_us is None else lease_until_us
        result: RequestRecord | None = await self._submit(
            _Claim(
                department_id,
                request_id,
                envelope_sha256,
                method,
                now_us,
                holder or self.holder.name,
                lease,
            )
        )
        return result

    async def complete(
        self,
        department_id: str,
        request_id: str,
        state: int,
        response: bytes,
        holder: str | None = None,
    ) -> None:
        """Store the answer (a serialized response, or a serialized google.rpc.Status) of a
        call ``holder`` holds whose ledger transaction did not store it (its row is PENDING or
        COMMITTED). Returns once committed; raises errors.DatabaseUnavailable if not."""
        holder = holder or self.holder.name
        await self._submit(_Complete(department_id, request_id, holder, state, response))

    async def release(self, department_id: str, request_id: str, holder: str | None = None) -> None:
        """Free the request id of a call ``holder`` holds and that committed nothing (a
        refusal for a passing condition, an internal error), so a retry runs again. A row
        already answered or committed, or held by another, is kept."""
        await self._submit(_Release(department_id, request_id, holder or self.holder.name))

    def release_soon(self, department_id: str, request_id: str, holder: str | None = None) -> None:
        """``release`` without waiting: for a call being cancelled (its caller went away)."""
        operation = _Release(department_id, request_id, holder or self.holder.name)
        self._enqueue(operation).add_done_callback(_log_failure)

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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._thread.put(_Queued(operation, future, loop))
        return future

    # ------------------------------------------------------------------ writer thread

    def _commit(self, work: list[_Queued]) -> None:
        def batch(conn: Connection) -> list[Any]:
            conn.begin()
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                results = self._apply(cursor, [queued.operation for queued in work])
            finally:
                cursor.close()
            self._writer.commit(conn)
            return results

        try:
            results = self._writer.run(batch)
        except Exception as exc:  # every waiter learns it; the writer lives on
            log.error("request_log_commit_failed", error=type(exc).__name__)
            failure: Exception = errors.DatabaseUnavailable() if database_failure(exc) else exc
            settle((q.future, q.loop, failure) for q in work)
            return
        settle((q.future, q.loop, r) for q, r in zip(work, results, strict=True))

    # ------------------------------------------------------------------ statements

    def _apply(self, cursor: Any, operations: list[Operation]) -> list[Any]:
        # Plain SQL on the driver's cursor, in one transaction. A run of claims is one
        # multi-row INSERT … ON CONFLICT DO NOTHING RETURNING (a new id, the usual case,
        # inserts; an id in use inserts nothing and its record is read); answers and releases
        # are one executemany each. Operations on one id keep their order: a run ends before an
        # operation on an id already in it.
        results: list[Any] = [None] * len(operations)
        claims: dict[tuple[str, str], tuple[int, _Claim]] = {}
        completes: list[tuple[Any, ...]] = []
        releases: list[tuple[Any, ...]] = []
        touched: set[tuple[str, str]] = set()

        def flush() -> None:
            if completes:
                cursor.executemany(self._sql.complete, completes)
                completes.clear()
            if releases:
                cursor.executemany(self._sql.release, releases)
                releases.clear()
            touched.clear()

        for index, op in enumerate(operations):
            key = (op.department_id, op.request_id)
            if key in claims or key in touched:
                self._claim_run(cursor, claims, results)
                flush()
            if isinstance(op, _Claim):
                claims[key] = (index, op)
                continue
            touched.add(key)
            if isinstance(op, _Complete):
                completes.append((op.state, op.response, *key, op.holder))
            else:
                releases.append((*key, op.holder))
        self._claim_run(cursor, claims, results)
        flush()
        return results

    def _claim_run(
        self, cursor: Any, claims: dict[tuple[str, str], tuple[int, _Claim]], results: list[Any]
    ) -> None:
        if not claims:
            return
        values: list[Any] = []
        for _, op in claims.values():
            values += (op.department_id, op.request_id, op.envelope_sha256, op.method)
            values += (PENDING, None, op.now_us, op.holder, op.lease_until_us)
        cursor.execute(self._sql.claims(len(claims)), values)
        inserted = {(d, r) for d, r in cursor.fetchall()}
        for key, (index, op) in claims.items():
            if key in inserted:
                continue
            cursor.execute(self._sql.select, key)
            row = cursor.fetchone()
            found = None if row is None else _record(row)
            if found is not None and self._may_take_over(found, op):
                cursor.execute(
                    self._sql.take_over,
                    (op.holder, op.lease_until_us, op.now_us, *key, found.holder or ""),
                )
                if cursor.rowcount == 1:
                    log.info("request_claim_taken_over")
                    continue
                cursor.execute(self._sql.select, key)
                row = cursor.fetchone()
                found = None if row is None else _record(row)
            results[index] = found
        claims.clear()

    @staticmethod
    def _may_take_over(found: RequestRecord, op: _Claim) -> bool:
        """Whether a claim found is PENDING with the same bytes and its holder's lease passed
        (nothing of its call was committed: running it here is its only run)."""
        return (
            found.state == PENDING
            and found.envelope_sha256 == op.envelope_sha256
            and found.method == op.method
            and (found.lease_until_us or 0) < op.now_us
        )


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
        "holder",
        "lease_until_us",
    )

    def __init__(self, placeholder: str) -> None:
        p = placeholder
        key = f"department_id = {p} AND request_id = {p}"
        self._row = "(" + ", ".join([p] * len(self.COLUMNS)) + ")"
        self._claims: dict[int, str] = {}
        self.select = (
            "SELECT envelope_sha256, method, state, response, holder, lease_until_us, "
            f"ledger_sequence FROM {requests.name} WHERE {key}"
        )
        self.take_over = (
            f"UPDATE {requests.name} SET holder = {p}, lease_until_us = {p}, received_us = {p} "
            f"WHERE {key} AND state = {PENDING} AND COALESCE(holder, '') = {p}"
        )
        self.complete = (
            f"UPDATE {requests.name} SET state = {p}, response = {p} "
            f"WHERE {key} AND holder = {p} AND state IN ({PENDING}, {COMMITTED})"
        )
        self.release = (
            f"DELETE FROM {requests.name} WHERE {key} AND holder = {p} AND state = {PENDING}"
        )

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
    envelope_sha256, method, state, response, holder, lease, sequence = row
    return RequestRecord(
        envelope_sha256=bytes(envelope_sha256),
        method=method,
        state=state,
        response=None if response is None else bytes(response),
        holder=holder,
        lease_until_us=lease,
        ledger_sequence=sequence,
    )


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("request_record_failed", error=type(future.exception()).__name__)
