"""The event loop's own PostgreSQL connections (exchange.store.loop_connections): turns,
cancellation, close, dropped sessions, advisory locks. A real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import PoolClosed, PoolTimeout
from sqlalchemy import text
from structlog.testing import capture_logs

from exchange.store.engines import open_engine
from exchange.store.failures import database_failure
from exchange.store.loop_connections import AsyncConnections
from tests.postgres import drop_other_sessions


async def _advisory_locks(url: str) -> None:
    engine = open_engine(url)
    one, other = AsyncConnections(engine, "one"), AsyncConnections(engine, "other")
    order: list[str] = []
    try:
        async with one.advisory_lock(42):
            # Another process's holder waits for this block to end.
            waiting = asyncio.create_task(_hold(other, 42, order, "other"))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            order.append("one")
            # A caller that gives up while waiting takes no lock with it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_hold(other, 42, order, "gave up"), 0.2)
        await asyncio.wait_for(waiting, 5)
        assert order == ["one", "other"]
        async with one.advisory_lock(42):  # free again
            order.append("again")
        assert one.opened == 1 and other.opened <= 2
    finally:
        await one.close()
        await other.close()
        engine.dispose()


async def _hold(connections: AsyncConnections, key: int, order: list[str], name: str) -> None:
    async with connections.advisory_lock(key):
        order.append(name)


def test_advisory_locks_order_processes_and_survive_a_caller_giving_up(postgres_url: str) -> None:
    asyncio.run(_advisory_locks(postgres_url))


def _advisory_locks_held(url: str) -> int:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            held = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalar()
        return int(held or 0)
    finally:
        engine.dispose()


async def _no_advisory_lock_within(url: str, seconds: float) -> bool:
    """Whether the database holds no advisory lock within ``seconds``: a closed connection's
    session ends on the server a moment later, and its locks with it; a lock left on a
    connection the pool keeps never goes."""
    for _ in range(int(seconds / 0.05)):
        if await asyncio.to_thread(_advisory_locks_held, url) == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def _locks_cancelled_at_any_moment(url: str) -> None:
    # A lock's caller cancelled while it waits, just as it is granted, or in its block leaves
    # no lock behind on a connection the pool keeps: its connection is closed, not reused.
    engine = open_engine(url)
    locks = AsyncConnections(engine, "locks", size=2)
    try:
        for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
            tasks = [asyncio.create_task(_hold_a_while(locks, 9)) for _ in range(3)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert await _no_advisory_lock_within(url, 10.0)
            async with locks.advisory_lock(9):  # and the key is free for the next caller
                pass
        assert locks.opened <= 2
    finally:
        await locks.close()
        engine.dispose()


async def _hold_a_while(connections: AsyncConnections, key: int) -> None:
    async with connections.advisory_lock(key):
        await asyncio.sleep(0.01)


def test_a_cancelled_lock_leaves_no_lock_on_a_kept_connection(postgres_url: str) -> None:
    asyncio.run(_locks_cancelled_at_any_moment(postgres_url))


async def _pool_survives_cancellation(url: str) -> None:
    engine = open_engine(url)
    pool = AsyncConnections(engine, "probe", size=2)
    try:
        # Callers cancelled while connecting, while waiting for a turn and mid-statement
        # take no connection with them.
        for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
            tasks = [
                asyncio.create_task(pool.fetchall("SELECT pg_sleep(0.03)", {})) for _ in range(5)
            ]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert pool.opened <= 2
            both = [pool.fetchall("SELECT pg_sleep(0.01)", {}) for _ in range(2)]
            assert await asyncio.wait_for(asyncio.gather(*both), 10) == [[("",)], [("",)]]

        # A waiter woken and then cancelled before it runs passes its turn to the next.
        one = AsyncConnections(engine, "one", size=1)
        try:
            async with one.connection():
                woken = asyncio.create_task(one.fetchall("SELECT 1", {}))
                next_in_line = asyncio.create_task(one.fetchall("SELECT 2", {}))
                await asyncio.sleep(0.05)
            woken.cancel()  # its turn came with the end of the block above, before it ran
            assert await asyncio.wait_for(next_in_line, 5) == [(2,)]

            # A caller that comes when a connection is given back does not overtake one that
            # waits for it.
            order: list[str] = []

            async def use(name: str) -> None:
                async with one.connection():
                    order.append(name)

            async with one.connection():
                waited = asyncio.create_task(use("waited"))
                await asyncio.sleep(0.05)
            later = asyncio.create_task(use("later"))
            await asyncio.wait_for(asyncio.gather(waited, later), 5)
            assert order == ["waited", "later"]

            # Closing refuses every caller still waiting, and every later one, as the
            # database failing (UNAVAILABLE).
            async with one.connection():
                refused = [asyncio.create_task(use("refused")) for _ in range(2)]
                await asyncio.sleep(0.05)
                await one.close()
            outcomes = await asyncio.gather(*refused, return_exceptions=True)
            assert all(isinstance(o, PoolClosed) and database_failure(o) for o in outcomes)
            with pytest.raises(PoolClosed):
                await one.fetchall("SELECT 1", {})
        finally:
            await one.close()
    finally:
        await pool.close()
        engine.dispose()


def test_the_loop_connections_survive_cancelled_callers(postgres_url: str) -> None:
    asyncio.run(_pool_survives_cancellation(postgres_url))


async def _waits_are_bounded(url: str) -> None:
    engine = open_engine(url)
    busy = AsyncConnections(engine, "busy", size=1, wait_seconds=0.2)
    try:
        # Every connection in use for longer than a caller may wait: the caller is refused as
        # the database failing (UNAVAILABLE), not left waiting.
        async with busy.connection():
            with pytest.raises(PoolTimeout) as caught:
                await busy.fetchall("SELECT 1", {})
        assert database_failure(caught.value)
        assert await busy.fetchall("SELECT 1", {}) == [(1,)]
    finally:
        await busy.close()
        engine.dispose()
    # No database answering at all (nothing listens on the port): the same refusal.
    nowhere = open_engine(
        engine.url.set(host="127.0.0.1", port=44001).render_as_string(hide_password=False)
    )
    down = AsyncConnections(nowhere, "down", wait_seconds=0.5)
    try:
        with pytest.raises(PoolTimeout) as caught:
            await down.fetchall("SELECT 1", {})
        assert database_failure(caught.value)
    finally:
        await down.close()
        nowhere.dispose()


def test_a_caller_waits_for_a_connection_no_longer_than_its_bound(postgres_url: str) -> None:
    asyncio.run(_waits_are_bounded(postgres_url))


async def _locks_across_server_drops(url: str) -> None:
    engine = open_engine(url)
    locks = AsyncConnections(engine, "locks")
    try:
        async with locks.advisory_lock(7):
            pass
        assert locks.opened == 1
        # The server drops the idle session: the next lock is taken on a new one.
        assert drop_other_sessions(url) >= 1
        with capture_logs() as events:
            async with locks.advisory_lock(7):
                # ...and dropped again during the block: the block's outcome stands (the
                # unlock's failure is logged, and the session's end released the lock).
                assert drop_other_sessions(url) >= 1
        names = [event["event"] for event in events]
        assert names == ["locks_reconnected", "locks_unlock_failed"], names
        async with locks.advisory_lock(7):
            pass
    finally:
        await locks.close()
        engine.dispose()


def test_advisory_locks_outlive_dropped_sessions(postgres_url: str) -> None:
    asyncio.run(_locks_across_server_drops(postgres_url))
