"""Supervision values as plain dataclasses: what a rule sees of an entry, and what it raises.

``Observation`` is the one conversion of a ``LedgerEntry`` into what the rules and the burden
counters read (docs/supervision.md lists the conventions); nothing else in this package touches
the entry message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exchange.v1 import common_pb2, ledger_pb2

_EMPTY: Mapping[str, str] = MappingProxyType({})


class AlertLevel(enum.IntEnum):
    """Severity (the contract's ``AlertLevel``; ordered, so ``>=`` compares severity)."""

    YELLOW = 1
    RED = 2


class AlertCategory(enum.Enum):
    """What an alert is about (the contract's ``AlertCategory``)."""

    TIMELINESS = "TIMELINESS"
    PROCESS = "PROCESS"
    CONTENT = "CONTENT"
    DISCRETION = "DISCRETION"
    RISK = "RISK"


@dataclass(frozen=True, slots=True)
class Observation:
    """The facts of one committed entry that supervision reads.

    ``kind``, ``outcome`` and ``reason`` are the contract's enum values (``ledger_pb2.REQUEST``,
    ``ledger_pb2.OK``, ``common_pb2.NO_GRANT``; a value newer than this hub's contract stays a
    number); ``time_us`` is the hub's sequencing time. ``subject_ref`` is the keyed
    subject reference; it is kept in memory by the bulk-access rule only and never persisted.
    """

    sequence: int
    time_us: int
    kind: ledger_pb2.EntryKind.ValueType
    actor: str
    outcome: ledger_pb2.Outcome.ValueType
    reason: common_pb2.Reason.ValueType = common_pb2.REASON_UNSPECIFIED
    counterparty: str = ""
    material_type: str = ""
    subject_ref: bytes = b""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def of(cls, sequence: int, entry: ledger_pb2.LedgerEntry) -> Observation:
        """The observation of ``entry`` committed at ``sequence``."""
        return cls(
            sequence=sequence,
            time_us=entry.time.seconds * 1_000_000 + entry.time.nanos // 1000,
            kind=entry.kind,
            actor=entry.actor,
            outcome=entry.outcome,
            reason=entry.reason,
            counterparty=entry.counterparty,
            material_type=entry.material_type,
            subject_ref=entry.subject_ref,
            attributes=MappingProxyType(dict(entry.attributes)),
        )

    @property
    def kind_name(self) -> str:
        """The kind's contract name ("REQUEST"), for messages."""
        return _name(ledger_pb2.EntryKind.Name, self.kind)

    @property
    def reason_name(self) -> str:
        """The reason's contract name ("NO_GRANT"), or "" when the entry gives none."""
        return _name(common_pb2.Reason.Name, self.reason) if self.reason else ""

    def attribute_int(self, name: str) -> int | None:
        """The attribute ``name`` as a decimal integer, or None if absent or not a number."""
        text = self.attributes.get(name, "")
        try:
            return int(text)
        except ValueError:
            try:
                return int(float(text))  # tolerate "1234.5" latencies
            except ValueError:
                return None

    def material_types(self) -> tuple[str, ...]:
        """The material types the entry concerns: the "material_types" attribute (prefill,
        comma-separated) or else the entry's material type."""
        listed = self.attributes.get("material_types", "")
        if listed:
            return tuple(sorted({t.strip() for t in listed.split(",") if t.strip()}))
        return (self.material_type,) if self.material_type else ()


def _name(namer: object, value: int) -> str:
    try:
        return str(namer(value))  # type: ignore[operator]
    except ValueError:  # a value newer than this hub's contract
        return str(value)


@dataclass(frozen=True, slots=True)
class Finding:
    """An alert as a rule raises it, before it is stored.

    ``key`` makes the alert's id unique and stable: a rule raises at most one alert per key
    (usually the entry's sequence), so processing the same entry twice stores it once.
    """

    level: AlertLevel
    category: AlertCategory
    rule: str
    department: str
    material_type: str
    message: str
    sequence: int
    raised_us: int
    key: str

    @property
    def alert_id(self) -> str:
        """The stored alert's id: the rule and the finding's key."""
        return f"{self.rule}:{self.key}"


@dataclass(frozen=True, slots=True)
class Alert:
    """A stored alert. Holds no personal data: messages may count subjects, never name them."""

    id: str
    level: AlertLevel
    category: AlertCategory
    rule: str
    department: str
    material_type: str
    message: str
    sequence: int
    raised_us: int
