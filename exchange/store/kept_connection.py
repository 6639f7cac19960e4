"""A writer thread's own connection, kept between its batches and reopened once if dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine

from exchange.store.engines import SQLITE_BUSY_TIMEOUT_MS
from exchange.store.failures import connection_lost
from exchange.store.write_lock import write_lock

_log = structlog.get_logger("exchange.store")

# A writer's lock wait and statement time limits (``KeptConnection(timeouts=True)``): shorter
# than the deadlines callers give (the SDK's default is several seconds), so that a stuck
# database is reported to them as UNAVAILABLE while they still wait.
WRITER_LOCK_TIMEOUT_MS = 2000
WRITER_STATEMENT_TIMEOUT_MS = 4000

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
