"""Repository of the material index and of correction proposals.

The index knows, per material type and keyed subject ref, every version's reference, keyed
content hash, keyed field hashes and holder. It never holds a subject id or a field value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import PoolProxiedConnection

from exchange.crypto.sealing import AtRest
from exchange.store.exchange_tables import material_fields, materials, objections
from exchange.store.loop_connections import AsyncConnections
from exchange.store.objections import ObjectionRecord


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


# Built once: constructing a statement per call costs more CPU than executing it (the hot path
# of every Request and Prefill).
# A material's columns, in the order ``_material`` reads them.
_MATERIAL_COLUMNS = (
    materials.c.reference,
    materials.c.material_type,
    materials.c.subject_ref,
    materials.c.version,
    materials.c.content_hash,
    materials.c.holder,
    materials.c.submitted_by,
)
_CURRENT = (
    select(*_MATERIAL_COLUMNS, material_fields.c.name, material_fields.c.field_hash)
    .select_from(
        materials.outerjoin(material_fields, material_fields.c.reference == materials.c.reference)
    )
    .where(
        materials.c.material_type == bindparam("material_type"),
        materials.c.subject_ref == bindparam("subject_ref"),
        materials.c.superseded_us.is_(None),
    )
)


# The same statement as SQLite's driver SQL, for the event loop's own connection, which passes
# its parameters by position.
_compiled = _CURRENT.compile(dialect=sqlite.dialect())
if _compiled.positiontup != ["material_type", "subject_ref"]:
    raise RuntimeError(f"unexpected parameter order {_compiled.positiontup}")
_CURRENT_SQLITE = str(_compiled)
# And as psycopg's SQL, with named parameters, for the event loop's PostgreSQL readers.
_CURRENT_POSTGRES = str(_CURRENT.compile(dialect=psycopg.dialect()))  # type: ignore[no-untyped-call]


def _material(row: Sequence[Any], field_hashes: dict[str, bytes]) -> IndexedMaterial:
    """The material of a row that starts with ``_MATERIAL_COLUMNS``."""
    return IndexedMaterial(
        reference=row[0],
        material_type=row[1],
        subject_ref=bytes(row[2]),
        version=row[3],
        content_hash=bytes(row[4]),
        holder=row[5],
        submitted_by=row[6],
        field_hashes=field_hashes,
    )


def _indexed(rows: Sequence[Sequence[Any]]) -> IndexedMaterial | None:
    """The material of ``_CURRENT`` rows (one per field, columns in the statement's order)."""
    if not rows:
        return None
    return _material(rows[0], {row[7]: bytes(row[8]) for row in rows if row[7] is not None})


class MaterialIndex:
    """Reads and writes the index. Every method is one transaction."""

    def __init__(self, engine: Engine, *, at_rest: AtRest | None = None) -> None:
        """``at_rest`` seals correction proposals' reasons and values; without it the index
        refuses to store proposals (a read-only index, as tools and tests open it)."""
        self.engine = engine
        self.at_rest = at_rest
        self._loop_connection: PoolProxiedConnection | None = None
        self._readers = (
            AsyncConnections(engine, "index_reader")
            if engine.dialect.name == "postgresql"
            else None
        )

    def current(self, material_type: str, subject_ref: bytes) -> IndexedMaterial | None:
        """The current version of the material, with its field hashes, or None."""
        # One statement: the current version joined with its field hashes (one row per field).
        with self.engine.connect() as conn:
            rows = conn.execute(
                _CURRENT, {"material_type": material_type, "subject_ref": subject_ref}
            ).all()
        return _indexed([tuple(row) for row in rows])

    def current_on_loop(self, material_type: str, subject_ref: bytes) -> IndexedMaterial | None:
        """``current`` for the event loop thread of a hub on SQLite only.

        One statement on a driver connection the loop keeps (in autocommit: the read is its
        own transaction): a pool checkout and the statement machinery would cost several times
        the read itself, on the thread every call shares.
        """
        if self._loop_connection is None:
            self._loop_connection = self.engine.raw_connection()
        driver: DBAPIConnection = self._loop_connection.driver_connection  # type: ignore[assignment]
        try:
            cursor = driver.cursor()
            try:
                cursor.execute(_CURRENT_SQLITE, (material_type, subject_ref))
                return _indexed(cursor.fetchall())
            finally:
                cursor.close()
        except Exception:
            self.close()  # a driver error may have left it unusable: the next read opens anew
            raise

    async def current_async(self, material_type: str, subject_ref: bytes) -> IndexedMaterial | None:
        """``current`` for the event loop of a hub on PostgreSQL: one statement, awaited on a
        connection of the loop's own (``AsyncConnections``)."""
        assert self._readers is not None, "current_async is for PostgreSQL"
        rows = await self._readers.fetchall(
            _CURRENT_POSTGRES, {"material_type": material_type, "subject_ref": subject_ref}
        )
        return _indexed(rows)

    def currents_held_by(self, material_type: str, holder: str) -> list[IndexedMaterial]:
        """Every current version of ``material_type`` held by ``holder`` (without field
        hashes), for exchange reconcile."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*_MATERIAL_COLUMNS).where(
                    materials.c.material_type == material_type,
                    materials.c.holder == holder,
                    materials.c.superseded_us.is_(None),
                )
            ).all()
        return [_material(row, {}) for row in rows]

    async def close_readers(self) -> None:
        """Close the event loop's PostgreSQL readers (at shutdown)."""
        if self._readers is not None:
            await self._readers.close()

    def close(self) -> None:
        """Return the event loop's connection to the pool."""
        connection, self._loop_connection = self._loop_connection, None
        if connection is not None:
            connection.close()

    # The writes below run in ``conn``'s transaction: the submission's ledger entry's (the flows
    # pass them as the entry's effect), so the index never holds a version without its entry.

    def put_version(
        self, conn: Connection, material: IndexedMaterial, superseded: str | None, now_us: int
    ) -> None:
        """Index a new version; mark ``superseded`` (the previous reference) as replaced.

        Raises sqlalchemy.exc.IntegrityError if that version or reference is already indexed
        (a concurrent submission by another hub process).
        """
        self.put_versions(conn, [(material, superseded)], now_us)

    def put_versions(
        self,
        conn: Connection,
        changes: Sequence[tuple[IndexedMaterial, str | None]],
        now_us: int,
    ) -> None:
        """Index several new versions (see ``put_version``)."""
        if not changes:
            return
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

    def add_proposal(self, conn: Connection, proposal: ObjectionRecord) -> None:
        """Record a correction proposal or objection (as filed: state OPEN) for the owner, its
        reason and proposed values sealed (exchange.crypto.sealing.AtRest, bound to its id);
        read back through ``exchange.store.objections.Objections``.

        Raises RuntimeError if the index was opened without an at-rest key."""
        if self.at_rest is None:
            raise RuntimeError(
                "this index was opened without an at-rest key: it stores no proposals"
            )
        if proposal.state != "OPEN" or proposal.resolution or proposal.resolved_us is not None:
            raise ValueError("a proposal is recorded as filed: OPEN, not resolved")
        values = json.dumps(dict(proposal.proposed_fields), ensure_ascii=False, sort_keys=True)
        conn.execute(
            insert(objections).values(
                id=proposal.id,
                material_type=proposal.material_type,
                reference=proposal.reference,
                subject_ref=proposal.subject_ref,
                filed_by=proposal.filed_by,
                owner=proposal.owner,
                reason=self.at_rest.seal_text(proposal.reason, proposal.id),
                proposed_fields=self.at_rest.seal_text(values, proposal.id),
                state="OPEN",
                filed_us=proposal.filed_us,
                deadline_us=proposal.deadline_us,
                resolution="",
                resolved_us=None,
            )
        )
