"""The schema's version: migrations serialised across processes, a newer schema refused.

Any number of hub processes may start at once on one database, each migrating it first: the
migration holds a lock across processes for its whole transaction (PostgreSQL: a transaction
advisory lock; SQLite: a lock on a file beside the database), so one process migrates and the
others then find the schema current. A database whose schema is newer than this code (a
revision its migrations do not know) is refused with one line naming both revisions.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, text

# The Alembic scripts, shipped in the package.
MIGRATIONS = Path(__file__).parent / "migrations"

# pg_advisory_xact_lock key of migrations: "exmigrat" as a big-endian int64.
MIGRATION_LOCK = int.from_bytes(b"exmigrat", "big") & 0x7FFF_FFFF_FFFF_FFFF


class SchemaError(Exception):
    """The database's schema cannot be used by this code; the message is one line."""


@dataclass(frozen=True, slots=True)
class Migration:
    """What ``upgrade`` did: the revision found (None for an empty database) and the one left."""

    before: str | None
    after: str


def _config() -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision this code's migrations know."""
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(_config()).get_current_head()  # type: ignore[arg-type]
    assert found is not None  # the package ships its migrations
    return found


def current(conn: Connection) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    path = Path(f"{database}.migrate-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def upgrade(engine: Engine, revision: str = "head") -> Migration:
    """Bring the schema to ``revision``, one process at a time; return what was done.

    Raises SchemaError if the database is at a revision this code does not know (a newer
    exchange migrated it).
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _config()
    known = ScriptDirectory.from_config(config)  # type: ignore[arg-type]
    newest = head()
    with _file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends: the migrations run in it (PostgreSQL's DDL is
            # transactional), so the next process sees them committed.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        before = current(connection)
        if before is not None:
            try:
                found = known.get_revision(before)
            except Exception:  # alembic raises its own errors for an unknown revision
                found = None
            if found is None:
                raise SchemaError(
                    f"the database's schema is at revision {before}, newer than this "
                    f"exchange's {newest}: run a newer exchange (or point this one at its own "
                    "database)"
                )
        config.attributes["connection"] = connection  # type: ignore[attr-defined]
        command.upgrade(config, revision)  # type: ignore[arg-type]
        after = current(connection)
    return Migration(before, after or newest)
