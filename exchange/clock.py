"""Time as the exchange stores it: integer microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2


def now_us() -> int:
    """The current wall-clock time in microseconds."""
    return time.time_ns() // 1000


def to_timestamp(us: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for ``us`` microseconds."""
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> int:
    """Microseconds of a protobuf Timestamp."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000
