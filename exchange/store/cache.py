"""A small time-bounded cache for hot-path reads (catalog entries, grants, index answers).

Writes through this process invalidate at once; another hub process sharing the database is seen
within ``ttl_seconds``. Safe to use from the event loop and from worker threads: a race between
two misses only reads the database twice, and a load that an invalidation overtook (it may have
read the database before the change was committed) is returned to its caller but not kept, so
it cannot serve the old value for another ``ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()

CACHES: weakref.WeakSet[TtlCache[object, object]] = weakref.WeakSet()
"""Every live cache, for the metrics of hits and misses (exchange.observability.metrics)."""


class TtlCache(Generic[K, V]):
    """Remembers ``load(key)`` for ``ttl_seconds``; at most ``max_entries`` keys."""

    def __init__(
        self, load: Callable[[K], V], ttl_seconds: float = 2.0, max_entries: int = 10_000
    ) -> None:
        self._load = load
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._invalidations = 0  # a load keeps its value only if none happened meanwhile
        # Held only to compare-and-store after a load and to invalidate, never while loading:
        # an invalidation must not slip between a load's check and its store.
        self._lock = threading.Lock()
        # Named after what it loads ("CatalogStore.load_purpose"), for the metrics. Counted
        # without the lock: a lost increment under a race costs a metric nothing worth a lock.
        self.name = getattr(load, "__qualname__", "cache").replace("._", ".")
        self.hits = 0
        self.misses = 0
        CACHES.add(self)  # type: ignore[arg-type]

    def peek(self, key: K) -> V | object:
        """The cached value if fresh, else the module's ``MISSING`` marker (never loads)."""
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_seconds:
            return hit[1]
        return _MISSING

    def get(self, key: K) -> V:
        """The cached value, loading it (blocking) when absent or stale."""
        value = self.peek(key)
        if value is not _MISSING:
            self.hits += 1
            return value  # type: ignore[return-value]
        self.misses += 1
        invalidations = self._invalidations
        loaded_at = time.monotonic()  # the value is as old as the start of its read
        loaded = self._load(key)
        with self._lock:
            if invalidations != self._invalidations:
                return loaded
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (loaded_at, loaded)
        return loaded

    async def read(self, key: K) -> V:
        """The cached value, on the event loop when it is fresh; else ``get`` in a worker thread
        (a load blocks on the database)."""
        value = self.peek(key)
        if value is not _MISSING:
            self.hits += 1
            return value  # type: ignore[return-value]
        return await asyncio.to_thread(self.get, key)

    def invalidate(self, key: K | None = None) -> None:
        """Forget ``key``, or everything."""
        with self._lock:
            self._invalidations += 1
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


MISSING = _MISSING
