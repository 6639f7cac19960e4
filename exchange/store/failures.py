"""What counts as the database failing (UNAVAILABLE) rather than a statement being wrong."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


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
