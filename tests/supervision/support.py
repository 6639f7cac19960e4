"""Helpers for supervision tests: real LedgerEntry messages at chosen times."""

from __future__ import annotations

import datetime as dt

from exchange.config import SupervisionConfig
from exchange.v1 import common_pb2, ledger_pb2

SECOND = 1_000_000
DAY = 86_400 * SECOND
CST = dt.timezone(dt.timedelta(hours=8))
# Wednesday 2025-03-12, 10:00 China Standard Time: inside office hours.
OFFICE_TIME = int(dt.datetime(2025, 3, 12, 10, 0, tzinfo=CST).timestamp()) * SECOND

CONFIG = SupervisionConfig(
    provider_time_limit_ms=2000,
    refusals_per_window=3,
    refusal_window_seconds=600,
    bulk_subjects_per_window=5,
    bulk_window_seconds=3600,
    office_hours_start=8,
    office_hours_end=18,
    objection_deadline_days=15,
    form_tool_min_uses=2,
    form_overlap=0.6,
)


def subject(i: int) -> bytes:
    """A stand-in keyed subject reference (32 bytes)."""
    return i.to_bytes(4, "big") * 8


def entry(
    kind: int,
    time_us: int,
    *,
    actor: str = "js.nj.social-security",
    outcome: int = ledger_pb2.OK,
    reason: int = common_pb2.REASON_UNSPECIFIED,
    counterparty: str = "js.nj.civil-affairs",
    material_type: str = "marriage-record",
    subject_ref: bytes = b"",
    **attributes: str,
) -> ledger_pb2.LedgerEntry:
    """A LedgerEntry as the hub would commit it (sequence is set by ``Stream``)."""
    message = ledger_pb2.LedgerEntry(
        kind=kind,  # type: ignore[arg-type]
        actor=actor,
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,  # type: ignore[arg-type]
        counterparty=counterparty,
        material_type=material_type,
        subject_ref=subject_ref,
        attributes=attributes,
    )
    message.time.seconds, nanos = divmod(time_us, SECOND)
    message.time.nanos = nanos * 1000
    return message


class Stream:
    """Numbers entries consecutively, as the ledger does."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(
        self, *entries: ledger_pb2.LedgerEntry
    ) -> list[tuple[int, ledger_pb2.LedgerEntry]]:
        batch = []
        for e in entries:
            e.sequence = self.next
            batch.append((self.next, e))
            self.next += 1
        return batch
