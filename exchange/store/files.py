"""Files the hub creates that hold what it keeps: readable by their owner only.

The database file (and SQLite's -wal and -shm files, which SQLite creates with the database
file's permissions) holds sealed answers, sealed objection values and keyed subject references;
a ledger export holds every entry and envelope. Neither is for other users of the machine, so
both are created 0600 whatever the process's umask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

PRIVATE = 0o600


def create_private(path: Path) -> None:
    """Create ``path`` empty and owner-readable only if it does not exist yet (an existing file
    keeps the permissions its operator gave it)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return
    os.close(descriptor)


def open_private_text(path: Path) -> TextIO:
    """``path`` opened for writing text (UTF-8), created or truncated, owner-readable only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    os.fchmod(descriptor, PRIVATE)  # a file that existed keeps its mode through os.open
    return os.fdopen(descriptor, "w", encoding="utf-8")
