"""Engines and schema migration for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from exchange.store.files import create_private

MIGRATIONS = Path(__file__).parent / "migrations"

_log = structlog.get_logger("exchange.store")

# A writer's lock wait and statement time limits (``KeptConnection(timeouts=True)``): shorter
# than the deadlines callers give (the SDK's default is several seconds), so that a stuck
# database is reported to them as UNAVAILABLE while they still wait.
WRITER_LOCK_TIMEOUT_MS = 2000
WRITER_STATEMENT_TIMEOUT_MS = 4000
# Every other SQLite connection's busy timeout (set at connect, below).
SQLITE_BUSY_TIMEOUT_MS = 10000

# Connections each SQLite file engine keeps open (SQLAlchemy's default pool allowed 5 kept and
# 10 more opened on demand).
HELD_SQLITE_CONNECTIONS = 15


def open_engine(
    url: str, *, synchronous: str = "FULL", create: bool = True, **kwargs: Any
) -> Engine:
    """Create an engine for ``url``.

    SQLite files are created owner-readable only (exchange.store.files) and put in WAL mode
    with ``synchronous=FULL`` so that a committed transaction survives a crash of the process
    or the machine (an acknowledged call is durable), and the parent directory is created.
    ``synchronous="NORMAL"`` (SQLite only) skips the fsync at commit: the transaction survives
    a crash of the process, and becomes machine-crash durable with the next FULL commit on the
    same file (WAL frames are appended in order). On
    PostgreSQL, NORMAL is ``synchronous_commit=off`` for the engine's sessions, with the same
    guarantee: the WAL is flushed in order, so the next synchronous commit flushes it too.
    Statement parameters are never put in error messages (``hide_parameters``): they can hold
    personal data. (PostgreSQL's own DETAIL line can still quote a value; the log withholds
    database errors' messages altogether: exchange.logs.withhold_database_messages.)
    With ``create=False`` (readers: audit export, backup) a SQLite file that does not exist is
    refused with FileNotFoundError instead of being created empty, folder and all.
    Raises sqlalchemy.exc.ArgumentError for an unparseable URL.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            if not create and not Path(database).is_file():
                raise FileNotFoundError(f"no SQLite database at {database}")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            create_private(Path(database))  # owner-readable only (exchange.store.files)
            # A fixed pool, opened at start by ``hold_connections`` and never closed while the
            # hub runs: a connection opened on demand needs three new file descriptors, and
            # once callers' connections have taken them all the call would fail.
            kwargs.setdefault("pool_size", HELD_SQLITE_CONNECTIONS)
            kwargs.setdefault("max_overflow", 0)
        engine = create_engine(url, hide_parameters=True, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        url = _with_psycopg(parsed).render_as_string(hide_password=False)
    if synchronous == "NORMAL" and parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)

        # Per transaction (SET LOCAL), never per session: a session setting could outlive a
        # pooler's reset or reach another client's transactions through a transaction-mode
        # pooler, and make the ledger's commits asynchronous too.
        @event.listens_for(engine, "begin")
        def _asynchronous_commit(conn: Connection) -> None:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)


def hold_connections(engine: Engine) -> int:
    """Open every connection of a SQLite file engine's fixed pool now, so that later calls never
    need a new file descriptor for one; return how many are held (0 for other engines, whose
    pool opens connections on demand). Raises the driver's error if the file cannot be opened.
    """
    size = getattr(engine.pool, "size", None)
    if engine.dialect.name != "sqlite" or not callable(size):
        return 0
    held = [engine.connect() for _ in range(int(size()))]
    for connection in held:
        connection.close()  # back to the pool, still open
    return len(held)


def _with_psycopg(url: URL) -> URL:
    """A PostgreSQL URL naming no driver, given the psycopg (3) one the project installs."""
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


_WRITE_LOCKS: dict[str, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> contextlib.AbstractContextManager[object]:
    """A lock every writer of the hub holds around its transactions on one SQLite file (the
    ledger, request-log and supervision writers, and each repository's writes through
    ``writing``), shared by every engine of that file in this process.

    SQLite has one write lock per file, and a writer that finds it taken sleeps in its busy
    handler (1, 2, 5, 10… ms) rather than being woken when it is free: taking turns on a
    Python lock first is woken at once. PostgreSQL locks rows, so there it is a no-op. Writers
    in other processes still meet at SQLite's lock, as before. Re-entrant, so that a nested
    write fails on SQLite's busy timeout rather than hanging.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return contextlib.nullcontext()
    key = str(Path(engine.url.database).resolve())
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(key, threading.RLock())
    return lock


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, in turn with the hub's other writers of the same SQLite file."""
    with write_lock(engine), engine.begin() as connection:
        yield connection


def database_failure(error: BaseException) -> bool:
    """Whether ``error`` is the database failing rather than a statement being wrong: a
    connection refused or lost, a full disk, a file that cannot be opened or written, a lock
    or statement timeout. Such a failure is a passing condition (``errors.DatabaseUnavailable``,
    UNAVAILABLE), never an internal error. Recognised through SQLAlchemy's wrapping and on
    the drivers' own cursors alike."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated)
    if isinstance(error, (sqlite3.OperationalError, sqlite3.InterfaceError)):
        return True
    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the database connection itself is gone (server restart,
    failover, idle timeout)."""
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


T = TypeVar("T")


class KeptConnection:
    """A writer thread's own connection, kept between its batches: checking one out of the
    pool and resetting it for every batch costs more than the batch's statements.

    ``run`` holds the file's ``write_lock`` around a batch. If the database dropped the kept
    connection (a restart, a failover, an idle timeout), the batch fails before anything was
    sent for commit, and ``run`` runs it once more on a new connection; a failure once the
    commit was sent (``commit``), or any other failure, is raised. After a failure the
    connection is discarded.
    """

    def __init__(self, engine: Engine, name: str, *, timeouts: bool = False) -> None:
        """A kept connection of ``engine`` for the writer ``name``. With ``timeouts``, the
        connection waits at most WRITER_LOCK_TIMEOUT_MS for a lock and runs no statement
        longer than WRITER_STATEMENT_TIMEOUT_MS (PostgreSQL), or waits at most the lock
        timeout for SQLite's write lock: a batch then fails (``database_failure``) within its
        callers' deadlines instead of after them."""
        self.engine = engine
        self.name = name
        self._lock = write_lock(engine)
        self._connection: Connection | None = None
        self._sent = False
        self._timeouts = timeouts

    def run(self, batch: Callable[[Connection], T]) -> T:
        """``batch(connection)``, which ends with ``commit``; see the class."""
        for attempt in (1, 2):
            self._sent = False
            try:
                with self._lock:
                    if self._connection is None:
                        self._connection = self._open()
                    return batch(self._connection)
            except Exception as exc:
                lost = connection_lost(exc) or self._driver_broken()
                if lost and self._connection is not None:
                    self._connection.invalidate()  # nothing to roll back on a dead connection
                self.close()
                if attempt == 2 or self._sent or not lost:
                    raise
                _log.warning(f"{self.name}_reconnected", error=type(exc).__name__)
        raise AssertionError("unreachable")

    def _open(self) -> Connection:
        connection = self.engine.connect()
        if self._timeouts:
            try:
                _set_timeouts(connection, WRITER_LOCK_TIMEOUT_MS, WRITER_STATEMENT_TIMEOUT_MS)
            except BaseException:
                connection.invalidate()
                connection.close()
                raise
        return connection

    def _driver_broken(self) -> bool:
        """Whether the kept connection's driver says it is gone (a batch may run statements on
        the driver's cursor, whose errors SQLAlchemy has not examined)."""
        connection = self._connection
        if connection is None or connection.closed:
            return False
        driver = connection.connection.driver_connection
        return bool(getattr(driver, "broken", False))  # psycopg; SQLite files are not dropped

    def commit(self, connection: Connection) -> None:
        """Commit the batch's transaction (after which its outcome is unknown on failure)."""
        self._sent = True
        connection.commit()

    def close(self) -> None:
        """Return the connection (rolling back what is open); the next batch opens anew."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                if self._timeouts and not connection.invalidated:
                    # Back to the pool as other users expect it.
                    if connection.in_transaction():
                        connection.rollback()
                    _set_timeouts(connection, SQLITE_BUSY_TIMEOUT_MS, 0)
                connection.close()
            except Exception as exc:  # the database may be gone: nothing left to release
                _log.warning(f"{self.name}_connection_close_failed", error=type(exc).__name__)


def _set_timeouts(connection: Connection, lock_ms: int, statement_ms: int) -> None:
    """Set a connection's lock wait and statement time limits (0: none on PostgreSQL), on the
    driver's connection, outside SQLAlchemy's transaction (which stays as it was)."""
    driver: Any = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        driver.execute(f"SET lock_timeout = {int(lock_ms if statement_ms else 0)}")
        driver.execute(f"SET statement_timeout = {int(statement_ms)}")
        driver.commit()
    elif connection.dialect.name == "sqlite":
        driver.execute(f"PRAGMA busy_timeout = {int(lock_ms)}")


_END_SESSIONS = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n")


@contextlib.contextmanager
def scratch_postgres(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database named ``prefix`` plus a random suffix on the PostgreSQL server of
    ``admin_url`` (whose role may create databases), dropped on exit with its sessions: for
    tests and benchmarks, which must not meet an earlier run's rows.

    Raises ValueError for a URL that is not PostgreSQL's or a prefix that is not a short
    lower-case identifier.
    """
    admin_parsed = make_url(admin_url)
    if admin_parsed.get_backend_name() != "postgresql":
        raise ValueError(f"a scratch database needs a PostgreSQL server, not {admin_url!r}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
        raise ValueError(f"{prefix!r} is not a lower-case identifier of at most 41 characters")
    admin_parsed = _with_psycopg(admin_parsed)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_parsed, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield admin_parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(_END_SESSIONS, {"n": name})
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()


class AsyncConnections:
    """A few autocommit psycopg connections of the event loop, for a hub on PostgreSQL: awaiting
    the server costs the loop nothing, where a worker thread would cost a hand-off each way, a
    pool checkout and a rollback. At most ``size`` connections are open; a caller waits for one
    to be free, in turn. A connection whose use failed or was cancelled is closed, not reused.
    A caller cancelled anywhere (its deadline, its client gone) takes no slot and no turn with
    it.
    """

    CONNECT_TIMEOUT_SECONDS = 5

    def __init__(self, engine: Engine, name: str, size: int = 4) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._name = name
        self._size = size
        self._free: list[Any] = []
        self._opened = 0
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._closed = False
        self._closing: set[asyncio.Future[Any]] = set()

    @property
    def opened(self) -> int:
        """Connections open now, idle or in use (at most ``size``)."""
        return self._opened

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for the caller alone until the block ends."""
        connection = await self._take()
        try:
            yield connection
        except BaseException:
            await self._give_back(connection, discard=True)  # its state is unknown
            raise
        await self._give_back(connection)

    async def fetchall(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one statement. If the server dropped the connection (a restart, a
        failover), the idle ones are closed too and the statement is run once more on a new
        connection. Raises the driver's error."""
        for attempt in (1, 2):
            broken = False
            try:
                async with self.connection() as connection:
                    try:
                        cursor = await connection.execute(sql, params)
                        rows: list[tuple[Any, ...]] = await cursor.fetchall()
                        return rows
                    except Exception:
                        broken = bool(connection.broken)
                        raise
            except Exception:
                if attempt == 2 or not broken:
                    raise
                await self._reconnecting()
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def advisory_lock(self, key: int) -> AsyncIterator[None]:
        """Hold PostgreSQL's session advisory lock ``key`` for the block: whichever hub process
        asks second waits until the first leaves its block.

        A caller that gives up while waiting closes its connection, which withdraws its
        request. If the session ends during the block (a failover, a network cut), the lock
        ends with it: the block is not told, and is no longer alone. An unlock that fails is
        logged, not raised (the block's own outcome stands), and its connection is closed,
        which releases the lock.
        """
        connection = await self._locked(key)
        released = False
        try:
            yield
        finally:
            try:
                released = await self._unlock(connection, key)
            except Exception as exc:
                _log.warning(f"{self._name}_unlock_failed", error=type(exc).__name__)
            finally:
                await self._give_back(connection, discard=not released)

    async def close(self) -> None:
        """Close the idle connections, and every other one as it is given back; callers
        waiting for one are refused (at shutdown)."""
        self._closed = True
        while (waiter := self._next_waiter()) is not None:
            waiter.set_result(_CLOSED)
        await self._close_idle()

    async def _locked(self, key: int) -> Any:
        """A connection holding advisory lock ``key``; tried once more on a new connection if
        the server dropped the one taken (nothing is held yet)."""
        for attempt in (1, 2):
            connection = await self._take()
            try:
                await connection.execute("SELECT pg_advisory_lock(%s)", (key,))
                return connection
            except BaseException as exc:
                broken = isinstance(exc, Exception) and bool(connection.broken)
                await self._give_back(connection, discard=True)
                if attempt == 2 or not broken:
                    raise
                await self._reconnecting()
        raise AssertionError("unreachable")

    async def _unlock(self, connection: Any, key: int) -> bool:
        async with asyncio.timeout(self.CONNECT_TIMEOUT_SECONDS):
            cursor = await connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def _reconnecting(self) -> None:
        # The server went away (a restart, a failover): the idle connections with it.
        _log.warning(f"{self._name}_reconnected")
        await self._close_idle()

    async def _close_idle(self) -> None:
        free, self._free = self._free, []
        for _ in free:
            self._release_slot()
        for connection in free:
            with contextlib.suppress(Exception):
                await connection.close()

    # A connection is handed straight to the first caller waiting, or the slot of a closed one
    # (_SLOT: that caller opens a new connection in it), so a caller that comes later never
    # overtakes one that waits. Every count is settled before the next ``await``.

    async def _take(self) -> Any:
        if self._closed:
            raise RuntimeError(f"the {self._name} connections are closed")
        if self._free:
            return self._free.pop()
        if self._opened < self._size:
            self._opened += 1
            return await self._connect()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.result() is not _CLOSED:
                self._pass_on(waiter.result())  # handed over, then cancelled: pass it on
            raise
        if handed is _CLOSED:
            raise RuntimeError(f"the {self._name} connections are closed")
        if handed is _SLOT:
            return await self._connect()
        return handed

    async def _connect(self) -> Any:
        """A new connection in a slot already counted for the caller."""
        import psycopg  # only a hub on PostgreSQL gets here

        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self.CONNECT_TIMEOUT_SECONDS,
                # A cut network (no reset) ends the session within seconds, not TCP's minutes.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                tcp_user_timeout=10_000,
            )
        except BaseException:
            self._release_slot()
            raise

    async def _give_back(self, connection: Any, *, discard: bool = False) -> None:
        if discard or self._closed:
            self._release_slot()
            with contextlib.suppress(Exception):
                await connection.close()
        else:
            self._pass_on(connection)

    def _pass_on(self, handed: Any) -> None:
        """Give ``handed`` (a healthy connection, or _SLOT) to the next caller waiting."""
        if handed is _SLOT:
            self._release_slot()
            return
        if self._closed:  # handed over before close(), its caller cancelled after it
            self._release_slot()
            closing = asyncio.ensure_future(handed.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            return
        waiter = self._next_waiter()
        if waiter is None:
            self._free.append(handed)
        else:
            waiter.set_result(handed)

    def _release_slot(self) -> None:
        waiter = self._next_waiter()
        if waiter is None:
            self._opened -= 1
        else:
            waiter.set_result(_SLOT)

    def _next_waiter(self) -> asyncio.Future[Any] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None


_SLOT = object()  # handed to a waiting caller: open a new connection in the slot freed
_CLOSED = object()  # handed to a waiting caller: the connections are closed


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of ``engine``'s database to ``revision`` with Alembic, one process at
    a time (``exchange.store.schema.upgrade``). Raises exchange.store.schema.SchemaError for a
    schema newer than this code."""
    from exchange.store import schema

    schema.upgrade(engine, revision)
