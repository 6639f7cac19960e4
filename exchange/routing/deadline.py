"""The caller's deadline, carried from the servicer to the provider call as a plain float.

The servicer layer (exchange.api) knows the gRPC deadline; the flows do not touch gRPC. The
servicer stores the absolute deadline (``time.monotonic()`` seconds) in a context variable,
which is task-local, so every concurrent call sees its own.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("exchange_call_deadline", default=None)


def set_call_deadline(remaining_seconds: float | None) -> None:
    """Record that the current call must be answered within ``remaining_seconds`` (None: no
    deadline)."""
    _DEADLINE.set(None if remaining_seconds is None else time.monotonic() + remaining_seconds)


def call_deadline() -> float | None:
    """Seconds left before the current call's deadline, or None if it has none."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()
