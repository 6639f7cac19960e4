"""The event loop's own PostgreSQL connections: point reads and session advisory locks awaited
on the loop, through psycopg's pool (psycopg_pool)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine

_log = structlog.get_logger("exchange.store")

# A connection attempt's limit, an unlock's, and by default a caller's wait for a connection.
CONNECT_TIMEOUT_SECONDS = 5
# The pool's wait when the callers bound their own (``wait_seconds=None``): never reached.
_UNBOUNDED_WAIT_SECONDS = 24 * 3600.0

Connection = psycopg.AsyncConnection[Any]


class AsyncConnections:
    """A few autocommit psycopg connections of the event loop, for a hub on PostgreSQL: awaiting
    the server costs the loop nothing, where a worker thread would cost a hand-off each way, a
    pool checkout and a rollback.

    psycopg_pool's ``AsyncConnectionPool`` keeps them: at most ``size`` are open, opened on
    demand; a connection given back, or a new one, goes to the caller that has waited longest;
    a caller cancelled while it waits leaves the queue, and one cancelled after a connection
    was handed to it passes the connection on; ``close`` refuses every caller waiting and
    every later one (``PoolClosed``). A caller waits at most ``wait_seconds`` for a connection
    (``PoolTimeout``; None: the callers bound their own wait). Both errors are
    ``psycopg.OperationalError``, so the caller's call is refused as the database failing
    (``store.failures.database_failure``: UNAVAILABLE, DATABASE_UNAVAILABLE).

    What this class adds: a connection whose use failed or was cancelled is closed rather than
    given back, since its state (a statement still running, an advisory lock) is unknown; a
    statement or lock on a connection the server dropped is tried once more on a new one.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        size: int = 4,
        wait_seconds: float | None = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        """Connections to ``engine``'s PostgreSQL database, named ``name`` in logs. Nothing is
        opened before the first use, which must be on the event loop that uses them all."""
        self._name = name
        self._closed = False
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                # A cut network (no reset) ends the session within seconds, not TCP's minutes.
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": 10_000,
            },
            min_size=0,
            max_size=size,
            open=False,
            name=name,
            timeout=_UNBOUNDED_WAIT_SECONDS if wait_seconds is None else wait_seconds,
        )

    @property
    def opened(self) -> int:
        """Connections open or being opened now, idle or in use (at most ``size``)."""
        return self._pool.get_stats()["pool_size"]

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for the caller alone until the block ends. Raises
        psycopg_pool.PoolTimeout or PoolClosed (see the class) or the driver's error."""
        connection = await self._take()
        try:
            yield connection
        except BaseException:
            await self._give_back(connection, discard=True)  # its state is unknown
            raise
        await self._give_back(connection)

    async def fetchall(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one statement. If the server dropped the connection (a restart, a
        failover), the idle ones are replaced too and the statement is run once more on a new
        connection. Raises the driver's error."""
        for attempt in (1, 2):
            broken = False
            try:
                async with self.connection() as connection:
                    try:
                        cursor = await connection.execute(sql, params)
                        return await cursor.fetchall()
                    except Exception:
                        broken = connection.broken
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
        waiting for one, and later callers, are refused (at shutdown)."""
        self._closed = True
        await self._pool.close()

    async def _take(self) -> Connection:
        if self._pool.closed and not self._closed:
            await self._pool.open()  # on the first use, on the loop that uses it
        return await self._pool.getconn()

    async def _give_back(self, connection: Connection, *, discard: bool = False) -> None:
        if discard:
            # Closed, the pool drops it (and opens another in its slot when asked).
            await connection.close()
        await self._pool.putconn(connection)

    async def _locked(self, key: int) -> Connection:
        """A connection holding advisory lock ``key``; tried once more on a new connection if
        the server dropped the one taken (nothing is held yet)."""
        for attempt in (1, 2):
            connection = await self._take()
            try:
                await connection.execute("SELECT pg_advisory_lock(%s)", (key,))
                return connection
            except BaseException as exc:
                broken = isinstance(exc, Exception) and connection.broken
                await self._give_back(connection, discard=True)
                if attempt == 2 or not broken:
                    raise
                await self._reconnecting()
        raise AssertionError("unreachable")

    async def _unlock(self, connection: Connection, key: int) -> bool:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            cursor = await connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def _reconnecting(self) -> None:
        # The server went away (a restart, a failover): the idle connections with it.
        _log.warning(f"{self._name}_reconnected")
        await self._pool.drain()
