"""Following the log: one reader for every follower.

A follower (an auditor's StreamEntries with ``follow``) first reads the entries it has not seen
on its own, a page at a time, until it reaches the feed's position; then it joins the feed. The
feed reads each new batch of entries once, when this process commits (or every
``poll_seconds``, for commits of other hub processes sharing the database), and hands the same
entries to every follower's buffer. So a commit costs one database read whatever the number of
followers; before, every commit woke every stream and each read the database on its own, and
2,000 followers starved every other caller.

A follower that still has ``buffer`` entries waiting when the next batch comes (its caller
reads more slowly than the log grows) is dropped: it gets the entries already in its buffer,
then ``FollowerTooSlow`` naming the sequence to resume from. Entries are shared between buffers,
so a slow follower holds references (fewer than ``buffer`` plus one page), not copies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import structlog

from exchange import errors
from exchange.ledger.entry import StoredEntry
from exchange.v1 import common_pb2

if TYPE_CHECKING:
    from exchange.ledger.writer import Ledger

log = structlog.get_logger(__name__)

PAGE = 500
POLL_SECONDS = 1.0


class FollowerTooSlow(errors.ResourceExhausted):
    """The follower fell more than its buffer behind; ``resume_from`` is the next sequence it
    has not received."""

    def __init__(self, resume_from: int, buffer: int) -> None:
        super().__init__(
            common_pb2.FOLLOWER_TOO_SLOW,
            f"the stream fell {buffer} entries behind the log; resume from sequence {resume_from}",
            retry_after=0.0,
        )
        self.resume_from = resume_from


class _Follower:
    __slots__ = ("buffered", "dropped", "failed", "wake")

    def __init__(self) -> None:
        self.buffered: deque[StoredEntry] = deque()
        self.dropped = False
        self.failed = False
        self.wake = asyncio.Event()


class EntryFeed:
    """New entries of ``ledger``, read once and handed to every follower (see the module)."""

    def __init__(
        self,
        ledger: Ledger,
        buffer: int = 256,
        *,
        poll_seconds: float = POLL_SECONDS,
        page: int = PAGE,
    ) -> None:
        self._ledger = ledger
        self._buffer = buffer
        self._poll_seconds = poll_seconds
        self._page = page
        self._followers: set[_Follower] = set()
        self._position = 0
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # database reads by the feed itself (not followers catching up)

    @property
    def followers(self) -> int:
        """Followers being fed now (not those still catching up)."""
        return len(self._followers)

    async def follow(self, from_sequence: int) -> AsyncIterator[StoredEntry]:
        """Every entry from ``from_sequence`` on, in order, then each new one as it commits,
        until the caller stops iterating.

        Raises FollowerTooSlow (after the entries already buffered) if the caller fell more
        than the buffer behind, Unavailable (LEDGER_UNAVAILABLE) if the feed's read failed; the
        database errors of its own catch-up reads propagate.
        """
        position = from_sequence
        follower: _Follower | None = None
        try:
            while follower is None:
                if self._running() and position >= self._position:
                    follower = self._join()
                    break
                page = await asyncio.to_thread(self._ledger.entries, position, self._page)
                for stored in page:
                    yield stored
                    position = stored.sequence + 1
                if len(page) < self._page and not self._running():
                    # At the end of the log and nobody reads it: the feed starts here.
                    self._position = position
                    follower = self._join()
            while True:
                if follower.buffered:
                    stored = follower.buffered.popleft()
                    if stored.sequence < position:  # read while catching up
                        continue
                    yield stored
                    position = stored.sequence + 1
                    continue
                if follower.failed:
                    raise errors.Unavailable(
                        common_pb2.LEDGER_UNAVAILABLE,
                        f"the ledger cannot be read now; resume from sequence {position}",
                    )
                if follower.dropped:
                    raise FollowerTooSlow(position, self._buffer)
                follower.wake.clear()
                await follower.wake.wait()
        finally:
            if follower is not None:
                self._followers.discard(follower)

    async def close(self) -> None:
        """Stop reading; followers still waiting wait for good (their calls are being ended)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _join(self) -> _Follower:
        follower = _Follower()
        self._followers.add(follower)
        if not self._running():
            self._task = asyncio.create_task(self._run(), name="entry-feed")
        return follower

    async def _run(self) -> None:
        try:
            while self._followers:
                page = await asyncio.to_thread(self._ledger.entries, self._position, self._page)
                self.reads += 1
                if page:
                    self._position = page[-1].sequence + 1
                    self._hand_out(page)
                if len(page) == self._page:
                    continue
                # Woken at once by this process's commits; the timeout picks up other
                # processes'.
                await self._ledger.wait_beyond(self._position, timeout=self._poll_seconds)
        except Exception as exc:  # any driver or OS error means the same: cannot read
            # Every follower ends (their callers resume), and the next one starts a new feed.
            log.warning("entry_feed_failed", error=type(exc).__name__)
            for follower in self._followers:
                follower.failed = True
                follower.wake.set()
            self._followers.clear()
        finally:
            self._task = None

    def _hand_out(self, page: Sequence[StoredEntry]) -> None:
        for follower in list(self._followers):
            if len(follower.buffered) >= self._buffer:
                follower.dropped = True
                self._followers.discard(follower)
            else:
                follower.buffered.extend(page)
            follower.wake.set()
