"""The hub's writers of one SQLite file take turns on a lock in the process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine

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
