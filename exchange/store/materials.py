"""Repository of the material index and of correction proposals.

The index knows, per material type and keyed subject ref, every version's reference, keyed
content hash, keyed field hashes and holder. It never holds a subject id or a field value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, bindparam, insert, select, update

from exchange.store.exchange_tables import material_fields, materials, objections


@dataclass(frozen=True, slots=True)
class IndexedMaterial:
    """One version of one material as the hub knows it."""

    reference: str
    material_type: str
    subject_ref: bytes
    version: int
    content_hash: bytes
    holder: str
    submitted_by: str
    field_hashes: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A correction proposal filed against a material, waiting for its owner."""

    id: str
    material_type: str
    reference: str
    subject_ref: bytes
    filed_by: str
    owner: str
    reason: str
    proposed_fields: Mapping[str, str]
    filed_us: int
    deadline_us: int


# Built once: constructing a statement per call costs more CPU than executing it (the hot path
# of every Request and Prefill).
_CURRENT = (
    select(materials, material_fields.c.name, material_fields.c.field_hash)
    .select_from(
        materials.outerjoin(material_fields, material_fields.c.reference == materials.c.reference)
    )
    .where(
        materials.c.material_type == bindparam("material_type"),
        materials.c.subject_ref == bindparam("subject_ref"),
        materials.c.superseded_us.is_(None),
    )
)


class MaterialIndex:
    """Reads and writes the index. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def current(self, material_type: str, subject_ref: bytes) -> IndexedMaterial | None:
        """The current version of the material, with its field hashes, or None."""
        # One statement: the current version joined with its field hashes (one row per field).
        with self.engine.connect() as conn:
            rows = conn.execute(
                _CURRENT, {"material_type": material_type, "subject_ref": subject_ref}
            ).all()
        if not rows:
            return None
        m = rows[0]._mapping
        return IndexedMaterial(
            reference=m["reference"],
            material_type=m["material_type"],
            subject_ref=bytes(m["subject_ref"]),
            version=m["version"],
            content_hash=bytes(m["content_hash"]),
            holder=m["holder"],
            submitted_by=m["submitted_by"],
            field_hashes={r.name: bytes(r.field_hash) for r in rows if r.name is not None},
        )

    def put_version(self, material: IndexedMaterial, superseded: str | None, now_us: int) -> None:
        """Index a new version; mark ``superseded`` (the previous reference) as replaced.

        Raises sqlalchemy.exc.IntegrityError if that version or reference is already indexed
        (a concurrent submission by another hub process).
        """
        self.put_versions([(material, superseded)], now_us)

    def put_versions(
        self, changes: Sequence[tuple[IndexedMaterial, str | None]], now_us: int
    ) -> None:
        """Index several new versions in one transaction (see ``put_version``)."""
        if not changes:
            return
        with self.engine.begin() as conn:
            for _material, superseded in changes:
                if superseded is not None:
                    conn.execute(
                        update(materials)
                        .where(
                            materials.c.reference == superseded,
                            materials.c.superseded_us.is_(None),
                        )
                        .values(superseded_us=now_us)
                    )
            conn.execute(
                insert(materials),
                [
                    {
                        "reference": m.reference,
                        "material_type": m.material_type,
                        "subject_ref": m.subject_ref,
                        "version": m.version,
                        "content_hash": m.content_hash,
                        "holder": m.holder,
                        "submitted_by": m.submitted_by,
                        "indexed_us": now_us,
                        "superseded_us": None,
                    }
                    for m, _ in changes
                ],
            )
            rows = [
                {"reference": m.reference, "name": name, "field_hash": value}
                for m, _ in changes
                for name, value in sorted(m.field_hashes.items())
            ]
            if rows:
                conn.execute(insert(material_fields), rows)

    def add_proposal(self, proposal: Proposal) -> None:
        """Record a correction proposal (state OPEN) for the owner."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(objections).values(
                    id=proposal.id,
                    material_type=proposal.material_type,
                    reference=proposal.reference,
                    subject_ref=proposal.subject_ref,
                    filed_by=proposal.filed_by,
                    owner=proposal.owner,
                    reason=proposal.reason,
                    proposed_fields=json.dumps(
                        dict(proposal.proposed_fields), ensure_ascii=False, sort_keys=True
                    ),
                    state="OPEN",
                    filed_us=proposal.filed_us,
                    deadline_us=proposal.deadline_us,
                    resolution="",
                    resolved_us=None,
                )
            )

    def proposals_for(self, owner: str) -> list[Proposal]:
        """Open proposals against ``owner``'s material, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(objections)
                .where(objections.c.owner == owner, objections.c.state == "OPEN")
                .order_by(objections.c.filed_us)
            ).all()
        return [
            Proposal(
                id=r.id,
                material_type=r.material_type,
                reference=r.reference,
                subject_ref=bytes(r.subject_ref),
                filed_by=r.filed_by,
                owner=r.owner,
                reason=r.reason,
                proposed_fields=json.loads(r.proposed_fields),
                filed_us=r.filed_us,
                deadline_us=r.deadline_us,
            )
            for r in rows
        ]
