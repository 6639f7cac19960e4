"""Following the log: one database read per commit for any number of followers, slow followers
dropped with their cursor, resuming from it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from exchange.ledger import Ledger, StoredEntry
from exchange.ledger.feed import EntryFeed, FollowerTooSlow

from .support import draft


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (checked every 5 ms, for at most 20 s)."""
    for _ in range(4000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


@pytest.fixture
async def feed(ledger: Ledger) -> AsyncIterator[EntryFeed]:
    # No polling in these tests: every read the feed makes is one a commit woke.
    feed = EntryFeed(ledger, buffer=4, poll_seconds=3600)
    yield feed
    await feed.close()


async def collect(feed: EntryFeed, start: int, into: list[int], stop_at: int) -> None:
    async for stored in feed.follow(start):
        into.append(stored.sequence)
        if stored.sequence + 1 >= stop_at:
            return


@pytest.mark.parametrize("followers", [1, 25])
async def test_one_database_read_per_commit_whatever_the_number_of_followers(
    ledger: Ledger, feed: EntryFeed, followers: int
) -> None:
    for i in range(3):
        await ledger.append(draft(i))
    commits = 6
    seen: list[list[int]] = [[] for _ in range(followers)]
    tasks = [asyncio.create_task(collect(feed, 0, into, 3 + commits)) for into in seen]
    await until(lambda: feed.followers == followers)
    reads_before = feed.reads
    for i in range(commits):
        await ledger.append(draft(100 + i))
        # Each commit is handed out before the next, so each is a batch of its own.
        await until(lambda n=4 + i: all(len(into) == n for into in seen))
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert all(into == list(range(3 + commits)) for into in seen)
    assert feed.reads - reads_before == commits


async def test_a_slow_follower_is_dropped_and_resumes_from_its_cursor(
    ledger: Ledger, feed: EntryFeed
) -> None:
    await ledger.append(draft(0))
    slow = feed.follow(0)
    first: StoredEntry = await anext(slow)
    assert first.sequence == 0
    fast: list[int] = []
    fast_task = asyncio.create_task(collect(feed, 0, fast, 13))
    await until(lambda: feed.followers == 1)  # the fast one
    # The slow follower joins the feed when it next reads: let it read one entry, then no more
    # until the log is well ahead.
    slow_task = asyncio.create_task(anext(slow))
    await until(lambda: feed.followers == 2)
    for i in range(1, 13):
        await ledger.append(draft(i))
        await until(lambda n=i + 1: len(fast) == n)
    await fast_task
    assert fast == list(range(13))  # the fast follower got everything
    received = [(await slow_task).sequence]
    with pytest.raises(FollowerTooSlow) as caught:
        async for stored in slow:
            received.append(stored.sequence)
    # What it got is gapless, and the cursor is right after it.
    assert received == list(range(1, 1 + len(received)))
    assert caught.value.resume_from == received[-1] + 1 < 13
    assert caught.value.reason_name == "FOLLOWER_TOO_SLOW"
    resumed: list[int] = []
    await collect(feed, caught.value.resume_from, resumed, 13)
    assert resumed == list(range(caught.value.resume_from, 13))
