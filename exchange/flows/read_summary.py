"""Which auditor reads of checkpoints and proofs become ledger entries.

A watcher polls the latest checkpoint and a consistency proof every few seconds; one entry per
read would add tens of thousands of entries a day per watcher, and a log that grows because it
is watched is never still. These reads disclose nothing personal (tree sizes and hashes), so they
are **summarised**: the first read of each kind (checkpoint, inclusion, consistency) by a
department in an interval (an hour by default) is recorded with its signed envelope, as every
call; the reads that follow within the interval are counted, not recorded, and the next
recorded read of that kind carries their number (attribute ``unrecorded_reads``). Refused reads
are always recorded. The counts live in the hub process: a restart loses at most one
interval's count, never an entry.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a read is recorded and, if so, how many reads of its kind since the last
    recorded one went unrecorded."""

    record: bool
    unrecorded: int = 0


class ReadSummary:
    """Per (department, kind of read): the time of the last recorded read and the reads
    counted since. Thread-safe."""

    def __init__(
        self,
        interval_seconds: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def admit(self, department: str, what: str) -> Admission:
        """Decide one read of ``what`` by ``department``."""
        now = self._clock()
        key = (department, what)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.interval_seconds:
                self._last[key] = (last[0], last[1] + 1)
                return Admission(record=False)
            self._last[key] = (now, 0)
            return Admission(record=True, unrecorded=0 if last is None else last[1])

    def forget(self, department: str, what: str) -> None:
        """Record the next read of ``what`` by ``department`` (its entry was not written)."""
        with self._lock:
            self._last.pop((department, what), None)


_BY_HUB: weakref.WeakKeyDictionary[object, ReadSummary] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def summary_of(hub: object) -> ReadSummary:
    """The read summary of one hub object (made on first use)."""
    with _GUARD:
        found = _BY_HUB.get(hub)
        if found is None:
            found = _BY_HUB[hub] = ReadSummary()
        return found
