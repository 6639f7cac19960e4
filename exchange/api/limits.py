"""Fairness: how many calls and streams one department, one certificate and the hub hold at once.

A department's system that floods the hub (or holds thousands of streams) must not slow down
everyone else's calls. So every call takes a slot before it runs and gives it back when it ends:
one of its department's, one of its client certificate's and one of the hub's.

A call whose slots are taken waits its turn in its department's queue; as slots free up, the
departments with calls waiting take turns (round robin), so a department with thousands of
calls queued delays another's next call by one turn, not by its whole queue. This is what keeps
a flood cheap: a refused call sent again at once costs the hub a call's whole overhead and an
entry each time, thousands of times a second; a waiting call costs a parked coroutine until its
turn. A call is refused at once, with RESOURCE_EXHAUSTED, a reason of its own (TOO_MANY_CALLS,
HUB_BUSY) and a RetryInfo, when its department's queue (or the hub's) is full, and when its turn
has not come before its deadline is near; the pipeline records it like any refusal. It is never
dropped unseen. Streams are held for long: one over its limit (TOO_MANY_STREAMS) is refused at
once.

A department with calls waiting (a backlog: it asks for more than its share) yields to the
departments without one: while a call of theirs is in progress, or one ended within the last
``LIGHT_WINDOW_SECONDS``, it runs at most ``calls_backlogged`` calls at once (1 by default).
Turns alone are not enough. The event loop shares its one core among the calls in progress
(processor sharing), so another department's latency grows with how many of the flood's calls
run beside its own, and a flooder that sends each call again as soon as it is answered keeps
its share full all the time: 4 of the flood's beside 4 of its own doubled that department's
latency (bench/abuse.py, docs/performance.md). Departments that all have a backlog take turns at
their full shares, and a backlogged department alone has the hub to itself after the window.

The counters live on the event loop (every call takes and gives back its slot there), so they
need no lock. A department or certificate with nothing in progress takes no memory.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from exchange import errors
from exchange.config import LimitsConfig
from exchange.v1 import common_pb2


class Scope(enum.Enum):
    """Whose share a limit is: the caller's department, its client certificate, or the hub's."""

    DEPARTMENT = "department"
    CERTIFICATE = "certificate"
    HUB = "hub"


class Kind(enum.Enum):
    """What a slot is for: a unary call or an open server stream."""

    CALL = "call"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The limits of one kind: per department, per certificate, for the hub."""

    department: int
    certificate: int
    hub: int


@dataclass(slots=True)
class _Gauge:
    ceiling: Ceiling
    hub: int = 0
    departments: dict[str, int] = field(default_factory=dict)
    certificates: dict[bytes, int] = field(default_factory=dict)

    def full(self, department: str, certificate: bytes | None) -> Scope | None:
        if self.departments.get(department, 0) >= self.ceiling.department:
            return Scope.DEPARTMENT
        if certificate is not None and (
            self.certificates.get(certificate, 0) >= self.ceiling.certificate
        ):
            return Scope.CERTIFICATE
        if self.hub >= self.ceiling.hub:
            return Scope.HUB
        return None

    def add(self, department: str, certificate: bytes | None) -> None:
        self.hub += 1
        self.departments[department] = self.departments.get(department, 0) + 1
        if certificate is not None:
            self.certificates[certificate] = self.certificates.get(certificate, 0) + 1

    def remove(self, department: str, certificate: bytes | None) -> None:
        self.hub -= 1
        _decrement(self.departments, department)
        if certificate is not None:
            _decrement(self.certificates, certificate)


def _fingerprint(certificate: bytes | None) -> bytes | None:
    # Keyed by a digest: the certificate's bytes need not stay in memory for the count.
    return None if certificate is None else hashlib.sha256(certificate).digest()


def _decrement(counts: dict[str, int] | dict[bytes, int], key: str | bytes) -> None:
    left = counts[key] - 1  # type: ignore[index]
    if left:
        counts[key] = left  # type: ignore[index]
    else:
        del counts[key]  # type: ignore[arg-type]


class Slot:
    """A call's or stream's place in its department's, certificate's and the hub's share.

    ``release`` gives it back; releasing twice is harmless.
    """

    __slots__ = ("_certificate", "_department", "_freed", "_gauge")

    def __init__(
        self,
        gauge: _Gauge,
        department: str,
        certificate: bytes | None,
        freed: Callable[[str], None] | None = None,
    ) -> None:
        self._gauge: _Gauge | None = gauge
        self._department = department
        self._certificate = certificate
        self._freed = freed

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing), to the next call waiting."""
        if self._gauge is not None:
            self._gauge.remove(self._department, self._certificate)
            self._gauge = None
            if self._freed is not None:
                self._freed(self._department)


# A waiting call gives up this long before its deadline, so that its refusal (and entry) still
# reaches the caller in time.
DEADLINE_MARGIN_SECONDS = 0.25
# And waits at most this long when it has no deadline.
LONGEST_WAIT_SECONDS = 30.0
# A department without a backlog counts as present this long after its last call began or
# ended, so that the gap between one of its calls and the next (a client's turnaround) does not
# let a backlogged department take its whole share back in between.
LIGHT_WINDOW_SECONDS = 1.0


@dataclass(slots=True)
class _Waiter:
    certificate: bytes | None
    # True once a slot is taken for it; False when its wait ran out first.
    turn: asyncio.Future[bool]


class Limits:
    """The hub's fairness limits (``LimitsConfig``) and what is in use of them now."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        # Departments with calls waiting, in turn order, and their queues.
        self._queues: dict[str, deque[_Waiter]] = {}
        self._waiting = 0
        # Until when (event loop time) each department without a backlog counts as present.
        self._light_until: dict[str, float] = {}
        # At least one, so that a backlogged department always has a call running (whose end
        # gives the next turn) and is never starved.
        self._backlogged = max(1, config.calls_backlogged)
        self._gauges = {
            Kind.CALL: _Gauge(
                Ceiling(config.calls_per_department, config.calls_per_certificate, config.calls)
            ),
            Kind.STREAM: _Gauge(
                Ceiling(
                    config.streams_per_department, config.streams_per_certificate, config.streams
                )
            ),
        }

    def in_use(self, kind: Kind, department: str | None = None) -> int:
        """How many slots of ``kind`` are taken: by ``department``, or in the whole hub."""
        gauge = self._gauges[kind]
        return gauge.hub if department is None else gauge.departments.get(department, 0)

    def waiting(self, department: str | None = None) -> int:
        """How many calls wait for their turn: of ``department``, or in the whole hub."""
        if department is None:
            return self._waiting
        return len(self._queues.get(department, ()))

    async def call(
        self, department: str, certificate: bytes | None, time_remaining: float | None
    ) -> Slot:
        """A call slot for ``department`` over ``certificate`` (PEM bytes, or None without
        TLS): at once if its shares have room and nobody of its department waits, else after
        waiting its turn, for at most ``time_remaining`` (the caller's deadline, in seconds;
        None: none) less a margin.

        Raises ResourceExhausted at once if the department's queue (TOO_MANY_CALLS) or the
        hub's (HUB_BUSY) is full, and when its turn has not come in time (the reason of the
        share that held it back), with a RetryInfo and the limit's scope in the entry.
        """
        gauge = self._gauges[Kind.CALL]
        fingerprint = _fingerprint(certificate)
        queue = self._queues.get(department)
        if queue is None and gauge.full(department, fingerprint) is None:
            gauge.add(department, fingerprint)
            return Slot(gauge, department, fingerprint, self._released)
        if (queue is not None and len(queue) >= self.config.calls_queued_per_department) or (
            self._waiting >= self.config.calls_queued
        ):
            scope = Scope.HUB if self._waiting >= self.config.calls_queued else Scope.DEPARTMENT
            raise self._refusal(Kind.CALL, scope, department, queued=True)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(fingerprint, loop.create_future())
        self._queues.setdefault(department, deque()).append(waiter)
        self._waiting += 1
        wait = LONGEST_WAIT_SECONDS
        if time_remaining is not None:
            wait = min(wait, time_remaining - DEADLINE_MARGIN_SECONDS)
        # A timer and the one future, no wait_for and shield: thousands of calls may wait at
        # once, and every object a waiting call holds is walked by each garbage collection.
        timer = loop.call_later(max(wait, 0.0), self._expire, department, waiter)
        try:
            served = await waiter.turn
        except asyncio.CancelledError:  # the caller went away
            timer.cancel()
            if self._withdraw(department, waiter):
                Slot(gauge, department, fingerprint, self._released).release()
            raise
        timer.cancel()
        if not served:
            scope = gauge.full(department, fingerprint) or Scope.DEPARTMENT
            raise self._refusal(Kind.CALL, scope, department, waited=True)
        return Slot(gauge, department, fingerprint, self._released)

    def _expire(self, department: str, waiter: _Waiter) -> None:
        """The wait of ``waiter`` ran out before its turn came: its call is refused."""
        if not waiter.turn.done():
            self._withdraw(department, waiter)
            waiter.turn.set_result(False)

    def _withdraw(self, department: str, waiter: _Waiter) -> bool:
        """Take ``waiter`` out of its queue if it is still there; return whether a slot was
        taken for it (its turn had come)."""
        turn = waiter.turn
        if turn.done() and not turn.cancelled():
            return turn.result()
        queue = self._queues.get(department)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._waiting -= 1
            if not queue:
                del self._queues[department]
        return False

    def _released(self, department: str) -> None:
        """A call of ``department`` gave its slot back: note a department without a backlog as
        present, and give the slot to the next call waiting."""
        if department not in self._queues:
            now = asyncio.get_running_loop().time()
            self._light_until[department] = now + LIGHT_WINDOW_SECONDS
        self._dispatch()

    def _light_present(self) -> set[str] | None:
        """None if a department without a backlog has a call in progress; else the departments
        whose last call (without a backlog) ended within the window, each present for the
        others (a department does not yield to its own past)."""
        gauge = self._gauges[Kind.CALL]
        backlogged = sum(gauge.departments.get(department, 0) for department in self._queues)
        if gauge.hub > backlogged:
            return None
        now = asyncio.get_running_loop().time()
        for department in [d for d, until in self._light_until.items() if until <= now]:
            del self._light_until[department]
        return set(self._light_until)

    def _dispatch(self) -> None:
        """Give freed slots to waiting calls, one department after another; while departments
        without a backlog are present, each backlogged one runs at most ``calls_backlogged``."""
        if not self._queues:
            return
        gauge = self._gauges[Kind.CALL]
        present = self._light_present()
        progressed = True
        while progressed and self._queues:
            progressed = False
            for department in list(self._queues):
                queue = self._queues[department]
                waiter = queue[0]
                if gauge.full(department, waiter.certificate) is not None:
                    continue
                yielding = present is None or bool(present - {department})
                if yielding and gauge.departments.get(department, 0) >= self._backlogged:
                    continue
                queue.popleft()
                self._waiting -= 1
                # Its turn is over: the department goes to the back of the line.
                del self._queues[department]
                if queue:
                    self._queues[department] = queue
                progressed = True
                if waiter.turn.done():  # cancelled: its caller went away, and takes no slot
                    continue
                gauge.add(department, waiter.certificate)
                waiter.turn.set_result(True)

    def take(self, kind: Kind, department: str, certificate: bytes | None) -> Slot:
        """Take a slot of ``kind`` for a call of ``department`` over ``certificate`` (PEM bytes,
        or None without TLS).

        Raises ResourceExhausted (TOO_MANY_CALLS or TOO_MANY_STREAMS for the department's or
        certificate's share, HUB_BUSY for the hub's), with a RetryInfo delay and the limit's
        scope in the refusal's entry (attribute ``limit``).
        """
        gauge = self._gauges[kind]
        fingerprint = _fingerprint(certificate)
        scope = gauge.full(department, fingerprint)
        if scope is not None:
            raise self._refusal(kind, scope, department)
        gauge.add(department, fingerprint)
        return Slot(gauge, department, fingerprint)

    def _refusal(
        self,
        kind: Kind,
        scope: Scope,
        department: str,
        *,
        queued: bool = False,
        waited: bool = False,
    ) -> errors.ExchangeError:
        ceiling = self._gauges[kind].ceiling
        what = "calls in progress" if kind is Kind.CALL else "open streams"
        reason = common_pb2.TOO_MANY_CALLS if kind is Kind.CALL else common_pb2.TOO_MANY_STREAMS
        if scope is Scope.HUB:
            reason = common_pb2.HUB_BUSY
        if queued and scope is Scope.HUB:
            message = f"the hub has {self.config.calls_queued} calls waiting; retry shortly"
        elif queued:
            message = (
                f"department {department} has {self.config.calls_queued_per_department} calls "
                "waiting, as many as it may; retry shortly"
            )
        elif scope is Scope.HUB:
            message = f"the hub has {ceiling.hub} {what}, as many as it takes; retry shortly"
        else:
            limit = ceiling.department if scope is Scope.DEPARTMENT else ceiling.certificate
            whose = (
                f"department {department}"
                if scope is Scope.DEPARTMENT
                else f"this client certificate of {department}"
            )
            message = f"{whose} already has {limit} {what}, as many as it may; retry shortly"
        if waited:
            message = f"no turn came before the call's deadline: {message}"
        error = errors.ResourceExhausted(
            reason, message, retry_after=self.config.retry_after_ms / 1000
        )
        error.facts.attributes.update(limit=scope.value, limit_kind=kind.value)
        return error
