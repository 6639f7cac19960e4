"""Fairness: how many calls and streams one department, one certificate and the hub hold at once.

A department's system that floods the hub (or holds thousands of streams) must not slow down
everyone else's calls. So every call takes a slot before it runs and gives it back when it ends:
one of its department's, one of its client certificate's and one of the hub's. A call that finds
one of them full is refused at once with RESOURCE_EXHAUSTED and a reason of its own
(TOO_MANY_CALLS, TOO_MANY_STREAMS, HUB_BUSY) and a RetryInfo, and the pipeline records it like
any refusal; it never waits in a queue where it could be cancelled unseen.

The counters live on the event loop (every call takes and gives back its slot there), so they
need no lock. A department or certificate with nothing in progress takes no memory.
"""

from __future__ import annotations

import enum
import hashlib
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

    __slots__ = ("_certificate", "_department", "_gauge")

    def __init__(self, gauge: _Gauge, department: str, certificate: bytes | None) -> None:
        self._gauge: _Gauge | None = gauge
        self._department = department
        self._certificate = certificate

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._gauge is not None:
            self._gauge.remove(self._department, self._certificate)
            self._gauge = None


class Limits:
    """The hub's fairness limits (``LimitsConfig``) and what is in use of them now."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
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

    def take(self, kind: Kind, department: str, certificate: bytes | None) -> Slot:
        """Take a slot of ``kind`` for a call of ``department`` over ``certificate`` (PEM bytes,
        or None without TLS).

        Raises ResourceExhausted (TOO_MANY_CALLS or TOO_MANY_STREAMS for the department's or
        certificate's share, HUB_BUSY for the hub's), with a RetryInfo delay and the limit's
        scope in the refusal's entry (attribute ``limit``).
        """
        gauge = self._gauges[kind]
        # Keyed by a digest: the certificate's bytes need not stay in memory for the count.
        fingerprint = None if certificate is None else hashlib.sha256(certificate).digest()
        scope = gauge.full(department, fingerprint)
        if scope is not None:
            raise self._refusal(kind, scope, department)
        gauge.add(department, fingerprint)
        return Slot(gauge, department, fingerprint)

    def _refusal(self, kind: Kind, scope: Scope, department: str) -> errors.ExchangeError:
        ceiling = self._gauges[kind].ceiling
        what = "calls in progress" if kind is Kind.CALL else "open streams"
        if scope is Scope.HUB:
            reason = common_pb2.HUB_BUSY
            message = f"the hub has {ceiling.hub} {what}, as many as it takes; retry shortly"
        else:
            reason = common_pb2.TOO_MANY_CALLS if kind is Kind.CALL else common_pb2.TOO_MANY_STREAMS
            limit = ceiling.department if scope is Scope.DEPARTMENT else ceiling.certificate
            whose = (
                f"department {department}"
                if scope is Scope.DEPARTMENT
                else f"this client certificate of {department}"
            )
            message = f"{whose} already has {limit} {what}, as many as it may; retry shortly"
        error = errors.ResourceExhausted(
            reason, message, retry_after=self.config.retry_after_ms / 1000
        )
        return error.about(attributes={"limit": scope.value, "limit_kind": kind.value})
