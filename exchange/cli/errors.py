"""Startup and connection errors as one line that says what to do.

``describe`` turns the exceptions a command meets before it can do its work (a database URL
that does not parse or names a driver that is not installed, a database that does not answer,
a key file missing, a hub that does not answer) into one sentence for ``error: …``. Anything
else is a bug and keeps its traceback. Modules are looked up by name, never imported here, so
that the CLI's start-up does not pay for SQLAlchemy or gRPC.

No message quotes a statement's parameters or a database's DETAIL line (they can hold personal
data): a database error is named by its class and, for a connection, the server's first line.
"""

from __future__ import annotations

import sys
from typing import Any

# Python driver module -> what to tell the operator. The URL schemes are SQLAlchemy's.
DRIVERS: dict[str, str] = {
    "MySQLdb": "use mysql+pymysql:// (pip install pymysql) or install mysqlclient",
    "pymysql": "install the driver (pip install pymysql) or use mysql+mysqldb://",
    "mysql": "use mysql+pymysql:// (pip install pymysql) or install mysql-connector-python",
    "mariadb": "use mariadb+pymysql:// (pip install pymysql) or install the mariadb connector",
    "psycopg2": "use postgresql+psycopg:// (the driver the exchange installs)",
    "psycopg": "install the driver: pip install 'psycopg[binary]'",
    "asyncpg": "use postgresql+psycopg:// (the driver the exchange installs)",
    "pg8000": "use postgresql+psycopg:// (the driver the exchange installs)",
    "cx_Oracle": "install the Oracle driver (pip install oracledb) or use another database",
    "oracledb": "install the Oracle driver (pip install oracledb) or use another database",
    "pyodbc": "install pyodbc and an ODBC driver for your database",
}


def _module(name: str) -> Any:
    """A module if it is already loaded, else None (an exception of it cannot exist then)."""
    return sys.modules.get(name)


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


# SQLSTATE classes of a connection that failed (08), a database that does not exist (3D), a
# login refused (28) and a server shutting down (57P): their messages name the server, not data.
CONNECTION_STATES = ("08", "3D", "28", "57P")


def _connection_cause(driver: BaseException | None) -> str:
    """What the driver says about a connection, or only its error class when its message could
    quote data (an operational error on a running query can name a row's value)."""
    if driver is None:
        return "no answer"
    message = _first_line(driver)
    state = getattr(driver, "sqlstate", None)
    if state is not None and str(state).startswith(CONNECTION_STATES):
        return message
    if state is None and ("unable to open database" in message or message.startswith("connection")):
        return message
    return type(driver).__name__ + (f" (SQLSTATE {state})" if state else "")


def _database_error(exc: BaseException) -> str | None:
    sa_exc = _module("sqlalchemy.exc")
    if sa_exc is None:
        return None
    if isinstance(exc, sa_exc.NoSuchModuleError):
        return (
            f"{_first_line(exc)}: the database URL names a dialect or driver SQLAlchemy does "
            "not have; use sqlite:///PATH, postgresql+psycopg://… or mysql+pymysql://…"
        )
    if isinstance(exc, sa_exc.ArgumentError):
        return (
            f"cannot parse the database URL ({_first_line(exc)}); expected e.g. "
            "sqlite:///var/exchange.db or postgresql+psycopg://USER@HOST:5432/DATABASE"
        )
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return (
            f"cannot use the database: {_connection_cause(exc.orig)}; check that it runs, "
            "that the database exists and the URL (--database-url)"
        )
    if isinstance(exc, sa_exc.DBAPIError):
        return (
            f"the database refused: {type(exc.orig).__name__ if exc.orig else type(exc).__name__}"
            "; check the database URL and that its schema is the exchange's"
        )
    return None


def _key_error(exc: BaseException) -> str | None:
    keys = _module("exchange.crypto.keys")
    if keys is not None and isinstance(exc, keys.KeyFileError):
        return f"{exc} (create keys with `exchange keys init` / `exchange keys department`)"
    return None


def _hub_error(exc: BaseException) -> str | None:
    grpc = _module("grpc")
    if grpc is not None and isinstance(exc, grpc.aio.AioRpcError):
        return (
            f"the hub did not answer: {exc.code().name} {exc.details()}; check --listen, that "
            "the hub runs and the keystore's certificates"
        )
    verification = _module("adapters.errors")
    if verification is not None and isinstance(exc, verification.VerificationError):
        return f"verification failed: {exc}"
    if verification is not None and isinstance(exc, verification.AdapterError):
        return str(exc)
    checkpoint = _module("exchange.ledger.checkpoint")
    if checkpoint is not None and isinstance(exc, checkpoint.CheckpointError):
        return str(exc)
    return None


def describe(exc: BaseException) -> str | None:
    """One line for a startup or connection error, or None for anything else (a bug)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in DRIVERS:
            return f"the database driver {top!r} is not installed: {DRIVERS[top]}"
        return None
    for describer in (_database_error, _key_error, _hub_error):
        message = describer(exc)
        if message is not None:
            return message
    config = _module("exchange.config")
    if config is not None and isinstance(exc, config.ConfigError):
        return str(exc)
    store_errors = _module("exchange.errors")
    if store_errors is not None and isinstance(exc, store_errors.Unavailable):
        return f"{exc}; check the database (--database-url) and retry"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or exc}; check the address, the path and permissions"
    return None
