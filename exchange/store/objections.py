"""Repository of objections and correction proposals (filed, listed, resolved)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, select, update

from exchange.crypto.sealing import AtRest
from exchange.store.exchange_tables import objections


@dataclass(frozen=True, slots=True)
class ObjectionRecord:
    """An objection or correction proposal, as filed (state OPEN) or as stored since;
    ``proposed_fields`` are values in flight to the owner."""

    id: str
    material_type: str
    reference: str
    subject_ref: bytes
    filed_by: str
    owner: str
    reason: str
    proposed_fields: dict[str, str]
    filed_us: int
    deadline_us: int
    state: str = "OPEN"
    resolution: str = ""
    resolved_us: int | None = None


def _record(row: Row[Any], at_rest: AtRest) -> ObjectionRecord:
    m = row._mapping
    return ObjectionRecord(
        id=m["id"],
        material_type=m["material_type"],
        reference=m["reference"],
        subject_ref=bytes(m["subject_ref"]),
        filed_by=m["filed_by"],
        owner=m["owner"],
        reason=at_rest.open_text(m["reason"], m["id"]),
        proposed_fields=json.loads(at_rest.open_text(m["proposed_fields"], m["id"])),
        state=m["state"],
        filed_us=m["filed_us"],
        deadline_us=m["deadline_us"],
        resolution=at_rest.open_text(m["resolution"], m["id"]),
        resolved_us=m["resolved_us"],
    )


class Objections:
    """Reads and resolves objections. Filing goes through ``MaterialIndex.add_proposal``."""

    def __init__(self, engine: Engine, at_rest: AtRest) -> None:
        """``at_rest`` opens the sealed reasons and proposed values (see ``add_proposal``)."""
        self.engine = engine
        self.at_rest = at_rest

    def get(self, objection_id: str, conn: Connection | None = None) -> ObjectionRecord | None:
        """The objection with this id, or None; read through ``conn`` if given (inside a
        change's transaction), else on a connection of its own."""
        if conn is None:
            with self.engine.connect() as own:
                return self.get(objection_id, own)
        row = conn.execute(select(objections).where(objections.c.id == objection_id)).first()
        return None if row is None else _record(row, self.at_rest)

    def for_owner(self, owner: str, open_only: bool) -> list[ObjectionRecord]:
        """Objections against ``owner``'s material, oldest first."""
        query = select(objections).where(objections.c.owner == owner)
        if open_only:
            query = query.where(objections.c.state == "OPEN")
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(objections.c.filed_us, objections.c.id)).all()
        return [_record(r, self.at_rest) for r in rows]

    def resolve(
        self, conn: Connection, objection_id: str, state: str, resolution: str, now_us: int
    ) -> bool:
        """Resolve an OPEN objection in ``conn``'s transaction (the resolution's ledger entry's);
        False if it was no longer open (resolved concurrently).

        Resolving erases the proposed values: they were only in flight to the owner. (The
        reason stays, sealed: the objection's record shows it to the owner and the filer. The
        resolution is kept the same way: the owner's answer travels as personal data, in the
        disclosure, so it is sealed under the at-rest key, bound to the objection id.)
        """
        sealed = self.at_rest.seal_text(resolution, objection_id)
        result = conn.execute(
            update(objections)
            .where(objections.c.id == objection_id, objections.c.state == "OPEN")
            .values(state=state, resolution=sealed, resolved_us=now_us, proposed_fields="{}")
        )
        return bool(result.rowcount)
