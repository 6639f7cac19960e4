"""The hub's door at shutdown: which calls start, and which are turned away with UNAVAILABLE.

On SIGTERM the hub must not leave a caller with a status it cannot act on. gRPC's own server
stop kills every call it has received but not yet handed to a handler, and after its grace
cancels the calls still running: both reach the caller as CANCELLED, which says neither whether
anything was done nor whether to retry. So the server (exchange.api.server) closes this door
before it stops gRPC:

1. ``close()``: every call that has not started is answered UNAVAILABLE ``SHUTTING_DOWN`` with
   a RetryInfo, at once, by the handler itself (``refusal()``): nothing was done, no ledger
   entry, the request id untouched, so the retry of the same bytes runs (on this hub once it
   is back, or on another hub of the same database).
   Open streams (StreamEntries) are cut at once: they are reads that resume from their
   cursor, and a following one would otherwise hold the shutdown for the whole grace. A stream
   waiting for entries is answered UNAVAILABLE ``SHUTTING_DOWN``; one whose caller has stopped
   reading (the hub is blocked writing to it) is ended by gRPC's stop, UNAVAILABLE without a
   reason.
2. ``drained(grace)``: the calls already running finish, for up to the grace period.
3. ``expire()``: a call still running when the grace is over is cancelled and answered
   UNAVAILABLE ``SHUTTING_DOWN`` too (``answer_cancelled``); the pipeline frees its request id
   as for any cancelled call, and a retry gets the committed answer if its entry had
   committed, or runs once.
4. ``quiet(...)``: the door stays closed, answering, until no call has arrived for a moment,
   so that gRPC's stop finds no call waiting to be killed. A caller that honours RetryInfo
   (the SDK does) is then waiting, not sending.

The counters live on the event loop (every handler admits and leaves there): no lock.
"""

from __future__ import annotations

import asyncio
import time

from exchange import errors
from exchange.v1 import common_pb2

# What RetryInfo tells a caller turned away: about the time a hub takes to restart.
RETRY_AFTER_SECONDS = 1.0
# How long no call may have arrived before gRPC is stopped (step 4).
QUIET_SECONDS = 0.25


def shutting_down() -> errors.Unavailable:
    """The refusal of a call the hub did not start because it is shutting down."""
    return errors.Unavailable(
        common_pb2.SHUTTING_DOWN,
        "the hub is shutting down and did not run this call; retry the same request",
        retry_after=RETRY_AFTER_SECONDS,
    )


class Drain:
    """Admits calls while the hub serves; once closed, turns new ones away and waits for the
    admitted ones."""

    def __init__(self) -> None:
        self.closed = False
        self.running: set[asyncio.Task[object]] = set()
        self._streams: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_refused = 0.0

    def admit(self, stream: bool = False) -> bool:
        """Whether a call (a ``stream``) may start now. If so, it must call ``leave()`` when it
        ends; if not, it must answer ``shutting_down()`` (and need not leave)."""
        if self.closed:
            self._last_refused = time.monotonic()
            return False
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
            if stream:
                self._streams.add(task)
            self._idle.clear()
        return True

    def leave(self) -> None:
        """An admitted call ended (answered, refused or cancelled)."""
        task = asyncio.current_task()
        self.running.discard(task)
        self._streams.discard(task)
        self._cut.discard(task)
        if not self.running:
            self._idle.set()

    def answer_cancelled(self) -> bool:
        """Whether a call whose handler was cancelled is to be answered ``shutting_down()``
        (the drain cut it) rather than left cancelled (its caller went away)."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        task.uncancel()
        return True

    def close(self) -> None:
        """Turn every later call away, and cut the open streams."""
        self.closed = True
        self._last_refused = time.monotonic()
        self._cancel(self._streams)

    def _cancel(self, tasks: set[asyncio.Task[object]]) -> int:
        cut = [task for task in tasks if task not in self._cut]
        for task in cut:
            self._cut.add(task)
            task.cancel()
        return len(cut)

    async def drained(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the admitted calls to end; return whether they all
        did."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(grace, 0.0))
        except TimeoutError:
            return False
        return True

    async def expire(self, wait: float = 2.0) -> int:
        """Cancel the admitted calls still running (each answers ``shutting_down()``) and wait
        up to ``wait`` seconds for them to answer; return how many there were."""
        cut = self._cancel(self.running)
        await self.drained(wait)
        return cut

    async def quiet(self, quiet: float = QUIET_SECONDS, limit: float = 2.0) -> None:
        """Return once no call has been turned away for ``quiet`` seconds, or after ``limit``
        seconds."""
        until = time.monotonic() + max(limit, 0.0)
        while True:
            now = time.monotonic()
            calm_at = self._last_refused + quiet
            if now >= calm_at or now >= until:
                return
            await asyncio.sleep(min(calm_at, until) - now)
