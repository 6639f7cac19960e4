"""Supervision's tables and their repository (SQLite and PostgreSQL, one schema).

- ``supervision_cursor``: one row, the sequence of the next entry whose effects are to be
  stored. Every write transaction locks it first (as the ledger locks its head), so the effects
  of each entry are stored exactly once, whichever hub process sees the entry first and however
  often a process restarts.
- ``supervision_alerts``: raised alerts; no personal data (no subject refs, messages count).
- ``supervision_objections``: open objections and the alert level each has reached.
- ``supervision_burden``: the burden counters per material type.
- ``supervision_usage``: successful prefills and submissions per department and UTC day, so
  "uses in the last N days" is a sum over at most N rows per form tool.

Times are integer microseconds since the Unix epoch, as everywhere in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from exchange.store.metadata import metadata
from exchange.store.write_lock import write_lock
from exchange.supervision.burden import CounterChange, Counters, ToolUse, Usage
from exchange.supervision.model import Alert, AlertCategory, AlertLevel, Finding
from exchange.supervision.objections import (
    ObjectionClosed,
    ObjectionOpened,
    level_due,
    overdue_finding,
)

CURSOR_ID = 1

supervision_cursor = Table(
    "supervision_cursor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("next_sequence", BigInteger, nullable=False),
)

supervision_alerts = Table(
    "supervision_alerts",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("level", SmallInteger, nullable=False),
    Column("category", String(16), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("department", String(128), nullable=False),
    Column("material_type", String(128), nullable=False),
    Column("message", Text, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("raised_us", BigInteger, nullable=False),
    Index("ix_supervision_alerts_raised_us", "raised_us"),
)

supervision_objections = Table(
    "supervision_objections",
    metadata,
    Column("objection_id", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("material_type", String(128), nullable=False),
    Column("filed_us", BigInteger, nullable=False),
    Column("deadline_us", BigInteger, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("level", SmallInteger, nullable=False),  # 0 none yet, else the AlertLevel reached
    Index("ix_supervision_objections_deadline_us", "deadline_us"),
)

supervision_burden = Table(
    "supervision_burden",
    metadata,
    Column("material_type", String(128), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("stored", BigInteger, nullable=False),
    Column("avoided", BigInteger, nullable=False),
    Column("served", BigInteger, nullable=False),
    Column("refused", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("prefills", BigInteger, nullable=False),
    Column("last_use_us", BigInteger, nullable=True),
    Column("listed_us", BigInteger, nullable=True),
)

supervision_usage = Table(
    "supervision_usage",
    metadata,
    Column("department", String(128), primary_key=True),
    Column("day", Integer, primary_key=True, autoincrement=False),
    Column("uses", BigInteger, nullable=False),
    Column("last_use_us", BigInteger, nullable=False),
)

_COUNTS = ("stored", "avoided", "served", "refused", "failed", "prefills")


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything one entry changes in the stored supervision state."""

    sequence: int
    findings: tuple[Finding, ...] = ()
    counters: tuple[CounterChange, ...] = ()
    usage: Usage | None = None
    objection: ObjectionOpened | ObjectionClosed | None = None

    @property
    def empty(self) -> bool:
        """True if the entry changes nothing."""
        return not (self.findings or self.counters or self.usage or self.objection)


def _alert(row: Any) -> Alert:
    return Alert(
        id=row.id,
        level=AlertLevel(row.level),
        category=AlertCategory(row.category),
        rule=row.rule,
        department=row.department,
        material_type=row.material_type,
        message=row.message,
        sequence=int(row.sequence),
        raised_us=int(row.raised_us),
    )


def _later(a: int | None, b: int) -> int | None:
    if not b:
        return a
    return b if a is None else max(a, b)


def _earlier(a: int | None, b: int) -> int | None:
    if not b:
        return a
    return b if a is None else min(a, b)


class SupervisionStore:
    """Reads and writes the supervision tables. Every method blocks: call it in a thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = write_lock(engine)

    # ---------------------------------------------------------------- cursor

    def ensure_cursor(self) -> None:
        """Create the cursor row at 0 if it is missing (idempotent, race-safe)."""
        with self._write_lock, self.engine.connect() as conn:
            if conn.execute(select(supervision_cursor.c.id)).first() is not None:
                return
            try:
                conn.execute(insert(supervision_cursor).values(id=CURSOR_ID, next_sequence=0))
                conn.commit()
            except IntegrityError:  # another process created it first
                conn.rollback()

    def cursor(self) -> int:
        """The sequence of the next entry whose effects are not yet stored."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(supervision_cursor.c.next_sequence).where(
                    supervision_cursor.c.id == CURSOR_ID
                )
            ).scalar()
        return int(value or 0)

    @staticmethod
    def _lock(conn: Connection) -> int:
        # SQLite: take the write lock before reading; PostgreSQL: lock the row until commit.
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        query = select(supervision_cursor.c.next_sequence).where(
            supervision_cursor.c.id == CURSOR_ID
        )
        if conn.dialect.name != "sqlite":
            query = query.with_for_update()
        value = conn.execute(query).scalar()
        if value is None:
            raise LookupError("supervision_cursor row is missing (run the migrations)")
        return int(value)

    # ---------------------------------------------------------------- writes

    def apply(self, effects: Sequence[Effects], end: int) -> list[Finding]:
        """Store the effects of the entries before ``end`` not stored yet, and move the cursor
        to ``end``. Effects of entries another process (or an earlier run) already stored are
        skipped. Returns the findings stored as alerts."""
        with self._write_lock, self.engine.connect() as conn:
            start = self._lock(conn)
            todo = [e for e in effects if e.sequence >= start]
            findings = [f for e in todo for f in e.findings]
            self._insert_alerts(conn, findings)
            self._add_counters(conn, [c for e in todo for c in e.counters])
            self._add_usage(conn, [e.usage for e in todo if e.usage is not None])
            for e in todo:
                if isinstance(e.objection, ObjectionOpened):
                    self._open(conn, e.objection)
                elif isinstance(e.objection, ObjectionClosed):
                    conn.execute(
                        delete(supervision_objections).where(
                            supervision_objections.c.objection_id == e.objection.objection_id
                        )
                    )
            if end > start:
                conn.execute(
                    update(supervision_cursor)
                    .where(supervision_cursor.c.id == CURSOR_ID)
                    .values(next_sequence=end)
                )
            conn.commit()
        return findings

    def tick(self, now_us: int) -> list[Finding]:
        """Raise the objection alerts due at ``now_us`` (each level once). Returns them."""
        raised: list[Finding] = []
        with self._write_lock, self.engine.connect() as conn:
            self._lock(conn)
            t = supervision_objections.c
            rows = conn.execute(
                select(supervision_objections).where(
                    t.deadline_us < now_us, t.level < int(AlertLevel.RED)
                )
            ).all()
            for row in rows:
                level = level_due(int(row.filed_us), int(row.deadline_us), now_us)
                if level is None or int(level) <= int(row.level):
                    continue
                opened = ObjectionOpened(
                    objection_id=row.objection_id,
                    owner=row.owner,
                    material_type=row.material_type,
                    filed_us=int(row.filed_us),
                    deadline_us=int(row.deadline_us),
                    sequence=int(row.sequence),
                )
                raised.append(overdue_finding(opened, level, now_us))
                conn.execute(
                    update(supervision_objections)
                    .where(t.objection_id == row.objection_id)
                    .values(level=int(level))
                )
            self._insert_alerts(conn, raised)
            conn.commit()
        return raised

    @staticmethod
    def _insert_alerts(conn: Connection, findings: Sequence[Finding]) -> None:
        for f in findings:
            exists = conn.execute(
                select(supervision_alerts.c.id).where(supervision_alerts.c.id == f.alert_id)
            ).first()
            if exists is not None:  # the same finding twice (cannot happen past the cursor)
                continue
            conn.execute(
                insert(supervision_alerts).values(
                    id=f.alert_id,
                    level=int(f.level),
                    category=f.category.value,
                    rule=f.rule,
                    department=f.department[:128],
                    material_type=f.material_type[:128],
                    message=f.message,
                    sequence=f.sequence,
                    raised_us=f.raised_us,
                )
            )

    @staticmethod
    def _open(conn: Connection, opened: ObjectionOpened) -> None:
        t = supervision_objections.c
        if conn.execute(
            select(t.objection_id).where(t.objection_id == opened.objection_id)
        ).first():
            return
        conn.execute(
            insert(supervision_objections).values(
                objection_id=opened.objection_id,
                owner=opened.owner,
                material_type=opened.material_type,
                filed_us=opened.filed_us,
                deadline_us=opened.deadline_us,
                sequence=opened.sequence,
                level=0,
            )
        )

    @staticmethod
    def _add_counters(conn: Connection, changes: Sequence[CounterChange]) -> None:
        merged: dict[str, dict[str, Any]] = {}
        for c in changes:
            m = merged.setdefault(
                c.material_type,
                {"holder": "", "last_use_us": None, "listed_us": None} | dict.fromkeys(_COUNTS, 0),
            )
            for name in _COUNTS:
                m[name] += getattr(c, name)
            m["holder"] = c.holder or m["holder"]
            m["last_use_us"] = _later(m["last_use_us"], c.used_us)
            m["listed_us"] = _earlier(m["listed_us"], c.listed_us)
        t = supervision_burden.c
        for material_type, m in merged.items():
            row = conn.execute(
                select(supervision_burden).where(t.material_type == material_type)
            ).first()
            if row is None:
                conn.execute(insert(supervision_burden).values(material_type=material_type, **m))
                continue
            values: dict[str, Any] = {name: getattr(row, name) + m[name] for name in _COUNTS}
            values["holder"] = m["holder"] or row.holder
            values["last_use_us"] = _later(row.last_use_us, m["last_use_us"] or 0)
            values["listed_us"] = _earlier(row.listed_us, m["listed_us"] or 0)
            conn.execute(
                update(supervision_burden).where(t.material_type == material_type).values(values)
            )

    @staticmethod
    def _add_usage(conn: Connection, usages: Sequence[Usage]) -> None:
        merged: dict[tuple[str, int], tuple[int, int]] = {}
        for u in usages:
            uses, last = merged.get((u.department, u.day), (0, 0))
            merged[(u.department, u.day)] = (uses + 1, max(last, u.time_us))
        t = supervision_usage.c
        for (department, day), (uses, last) in merged.items():
            where = (t.department == department) & (t.day == day)
            row = conn.execute(select(supervision_usage).where(where)).first()
            if row is None:
                conn.execute(
                    insert(supervision_usage).values(
                        department=department, day=day, uses=uses, last_use_us=last
                    )
                )
            else:
                conn.execute(
                    update(supervision_usage)
                    .where(where)
                    .values(uses=row.uses + uses, last_use_us=max(int(row.last_use_us), last))
                )

    # ---------------------------------------------------------------- reads

    def alerts(
        self,
        min_level: AlertLevel | None = None,
        category: AlertCategory | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Stored alerts, newest first, at least ``min_level`` and of ``category`` if given."""
        t = supervision_alerts.c
        query = select(supervision_alerts).order_by(t.raised_us.desc(), t.sequence.desc())
        if min_level is not None:
            query = query.where(t.level >= int(min_level))
        if category is not None:
            query = query.where(t.category == category.value)
        with self.engine.connect() as conn:
            return [_alert(row) for row in conn.execute(query.limit(limit))]

    def counters(self) -> list[Counters]:
        """The burden counters of every material type seen."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(supervision_burden).order_by(supervision_burden.c.material_type)
            ).all()
        return [
            Counters(
                material_type=r.material_type,
                holder=r.holder,
                stored=int(r.stored),
                avoided=int(r.avoided),
                served=int(r.served),
                refused=int(r.refused),
                failed=int(r.failed),
                prefills=int(r.prefills),
                last_use_us=None if r.last_use_us is None else int(r.last_use_us),
                listed_us=None if r.listed_us is None else int(r.listed_us),
            )
            for r in rows
        ]

    def usage(self, since_day: int) -> dict[str, ToolUse]:
        """Per department: uses on UTC days from ``since_day`` on, and the last use ever."""
        t = supervision_usage.c
        with self.engine.connect() as conn:
            recent = dict(
                conn.execute(
                    select(t.department, func.sum(t.uses))
                    .where(t.day >= since_day)
                    .group_by(t.department)
                ).all()
            )
            last = conn.execute(
                select(t.department, func.max(t.last_use_us)).group_by(t.department)
            ).all()
        return {
            department: ToolUse(int(recent.get(department) or 0), int(latest))
            for department, latest in last
        }
