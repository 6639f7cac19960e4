"""Engines for SQLite (the embedded default) and PostgreSQL: how each database is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from exchange.store.files import create_private

# Every SQLite connection's busy timeout (set at connect, below).
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
    ``synchronous="NORMAL"`` skips the fsync at commit: the transaction survives a crash of the
    process, and becomes machine-crash durable with the next FULL commit on the same file (WAL
    frames are appended in order). On PostgreSQL, NORMAL is ``SET LOCAL synchronous_commit =
    off`` in each of the engine's transactions, with the same guarantee: the WAL is flushed in
    order, so the next synchronous commit flushes it too.
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
        url = with_psycopg(parsed).render_as_string(hide_password=False)
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


def with_psycopg(url: URL) -> URL:
    """A PostgreSQL URL naming no driver, given the psycopg (3) one the project installs."""
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url
