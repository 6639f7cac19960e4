"""Group commit: one writer thread commits, in one transaction, everything queued meanwhile.

The ledger (exchange.ledger.writer) and the request log (exchange.store.requests) each run one.
Callers on any event loop ``put`` an item holding their future; the thread takes what is
queued (up to a batch's limit), calls ``commit`` with it, and ``commit`` answers each caller
through ``settle``: one wake-up of each event loop concerned, however many of its callers the
batch holds. A thread rather than an asyncio task because SQLite and the psycopg driver block:
run on the event loop they would stall every call while a batch is being fsynced.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("exchange.store")

Item = TypeVar("Item")
_STOP = object()

# (the caller's future, its event loop, the value or the exception it gets)
Outcome = tuple["asyncio.Future[Any]", asyncio.AbstractEventLoop, object]


def settle(outcomes: Iterable[Outcome]) -> None:
    """Answer each caller of a batch (from the writer thread): its future gets its value, or
    its exception if the value is one. A caller that has gone (future cancelled, loop closed)
    is skipped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = {}
    for future, loop, value in outcomes:
        by_loop.setdefault(loop, []).append((future, value))
    for loop, items in by_loop.items():
        call_soon(loop, _resolve, items)


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    """``fn(*args)`` on ``loop`` from another thread; nothing if the loop is closed (nobody
    waits on it any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        log.warning("group_commit_caller_loop_closed")


def _resolve(items: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, value in items:
        if future.done():  # the caller gave up (cancelled); what it asked may still be done
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class GroupCommit(Generic[Item]):
    """A writer thread committing queued items in batches.

    ``commit(batch)`` is called on the thread with at most ``max_batch`` items (fewer when
    ``full(batch)`` says so first); it must answer every item's caller and never raise.
    ``wait()`` says how long the thread may sleep for the next item (None: until one comes),
    ``idle()`` runs when that time passed with nothing queued, and ``finish()`` once at stop,
    after everything queued before ``stop`` was committed.
    """

    def __init__(
        self,
        name: str,
        commit: Callable[[list[Item]], None],
        *,
        max_batch: int,
        full: Callable[[list[Item]], bool] | None = None,
        wait: Callable[[], float | None] | None = None,
        idle: Callable[[], None] | None = None,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._commit = commit
        self._max_batch = max_batch
        self._full = full
        self._wait = wait
        self._idle = idle
        self._finish = finish
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is started and not stopped."""
        return self._thread is not None

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def put(self, item: Item) -> None:
        """Queue ``item`` for the next batch (from any thread). Raises RuntimeError if the
        writer is not running."""
        if self._thread is None:
            raise RuntimeError(f"the {self.name} writer is not started")
        self._queue.put(item)

    async def stop(self) -> list[Item]:
        """Commit everything queued, run ``finish`` and stop the thread; return the items
        queued too late to be committed (their callers are not answered: the owner fails
        them)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return []
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)
        leftovers: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return leftovers
            if item is not _STOP:
                leftovers.append(item)  # type: ignore[arg-type]

    def _run(self) -> None:
        stopping = False
        while True:
            if stopping:  # commit what was queued before stop, then leave
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                try:
                    item = self._queue.get(timeout=self._wait() if self._wait else None)
                except queue.Empty:
                    if self._idle is not None:
                        self._idle()
                    continue
            batch: list[Item] = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if batch and (
                    len(batch) >= self._max_batch or (self._full is not None and self._full(batch))
                ):
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
        if self._finish is not None:
            self._finish()
