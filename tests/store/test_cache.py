"""TtlCache: fresh values are served from memory, invalidation is at once, and a load that an
invalidation overtook is not kept."""

from __future__ import annotations

import threading

from exchange.store.cache import MISSING, TtlCache


def test_a_fresh_value_is_served_without_loading_again() -> None:
    loads: list[str] = []
    cache: TtlCache[str, str] = TtlCache(lambda key: loads.append(key) or f"v-{key}", 60)
    assert cache.get("a") == "v-a" and cache.get("a") == "v-a"
    assert loads == ["a"]
    cache.invalidate("a")
    assert cache.peek("a") is MISSING
    assert cache.get("a") == "v-a" and loads == ["a", "a"]


def test_a_value_older_than_the_ttl_is_loaded_again() -> None:
    loads: list[str] = []
    cache: TtlCache[str, str] = TtlCache(lambda key: loads.append(key) or key, ttl_seconds=0)
    cache.get("a")
    cache.get("a")
    assert loads == ["a", "a"]


def test_a_load_overtaken_by_an_invalidation_is_not_kept() -> None:
    # A worker thread reads the old grant; the revocation commits and invalidates; then the
    # worker's load returns. The old value goes to that caller only, never into the cache.
    database = {"grant": "valid"}
    read, release = threading.Event(), threading.Event()

    def slow_load(key: str) -> str:
        value = database[key]
        read.set()
        release.wait(5)
        return value

    cache: TtlCache[str, str] = TtlCache(slow_load, 60)
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(cache.get("grant")))
    worker.start()
    assert read.wait(5)
    database["grant"] = "revoked"
    cache.invalidate("grant")
    release.set()
    worker.join(5)
    assert seen == ["valid"]
    assert cache.peek("grant") is MISSING
    assert cache.get("grant") == "revoked"


async def test_read_serves_a_fresh_value_on_the_loop_and_loads_a_miss_in_a_thread() -> None:
    threads: list[str] = []

    def load(key: str) -> str:
        threads.append(threading.current_thread().name)
        return f"v-{key}"

    cache: TtlCache[str, str] = TtlCache(load, 60)
    assert await cache.read("a") == "v-a"
    assert threads and threads[0] != threading.current_thread().name  # a miss: a worker thread
    assert await cache.read("a") == "v-a" and len(threads) == 1  # a hit: no load
    assert (cache.hits, cache.misses) == (1, 1)
