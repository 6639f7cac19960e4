"""Scratch PostgreSQL databases for the tests (tests/conftest.py) and the benchmarks (bench/)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exchange.store.engines import with_psycopg

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
    admin_parsed = with_psycopg(admin_parsed)
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


def drop_other_sessions(url: str) -> int:
    """Terminate every other session on the database of ``url`` (a server restart, as its
    clients see it), waiting until each has ended; return how many."""
    admin = create_engine(with_psycopg(make_url(url)))
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    # Waits (up to 5 s) until each session has ended.
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        return int(killed or 0)
    finally:
        admin.dispose()
