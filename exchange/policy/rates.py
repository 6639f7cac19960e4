"""Rate limits of grants: a token bucket per grant, refilled continuously.

The buckets live in the hub process. Several hub processes behind a load balancer each enforce
the limit, so a consumer spread over N hubs could get up to N times the rate; the supervision
rules over the ledger (bulk access) catch what gets through.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``take(key, per_minute)`` spends one token or says how long to wait for one."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int, now: float | None = None) -> float:
        """Spend one token of ``key``'s bucket (capacity ``per_minute``).

        Returns 0.0 if allowed, else the seconds until a token is available (nothing spent).
        ``per_minute`` <= 0 means no limit.
        """
        if per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(per_minute), now)
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate
