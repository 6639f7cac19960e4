"""Repository of the catalog: material types (every version), purposes and forms."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, select

from exchange.catalog.model import (
    FieldSpec,
    FieldType,
    Form,
    FormField,
    MaterialType,
    Purpose,
    PurposeBasis,
    SharingClass,
)
from exchange.crypto.subject import SubjectIdScheme
from exchange.store.cache import TtlCache
from exchange.store.exchange_tables import forms, material_types, purposes


def _material_type(row: Row[Any]) -> MaterialType:
    m = row._mapping
    return MaterialType(
        id=m["id"],
        owner=m["owner"],
        name=m["name"],
        fields=tuple(
            FieldSpec(
                name=f["name"],
                type=FieldType(f["type"]),
                required=bool(f["required"]),
                description=f.get("description", ""),
            )
            for f in json.loads(m["fields"])
        ),
        sharing_class=SharingClass(m["sharing_class"]),
        retention_days=m["retention_days"],
        version=m["version"],
        subject_id_scheme=SubjectIdScheme(m["subject_id_scheme"]),
    )


def _form(row: Row[Any]) -> Form:
    m = row._mapping
    return Form(
        id=m["id"],
        name=m["name"],
        owner=m["owner"],
        purpose=m["purpose"],
        fields=tuple(FormField(**f) for f in json.loads(m["fields"])),
    )


class CatalogStore:
    """Reads and writes the catalog tables; hot reads are cached (see TtlCache).

    The caches (``by_type``, ``by_purpose``, ``by_form``) are public for the flows, which read
    them on the event loop with ``TtlCache.read``; the methods of the same names block.
    """

    def __init__(self, engine: Engine, ttl_seconds: float = 2.0) -> None:
        self.engine = engine
        self.by_type: TtlCache[str, MaterialType | None] = TtlCache(
            self._load_material_type, ttl_seconds
        )
        self.by_purpose: TtlCache[str, Purpose | None] = TtlCache(self._load_purpose, ttl_seconds)
        self.by_form: TtlCache[str, Form | None] = TtlCache(self._load_form, ttl_seconds)

    # ------------------------------------------------------------------ material types

    def material_type(self, type_id: str) -> MaterialType | None:
        """The latest version of a material type, or None. May block on a cache miss."""
        return self.by_type.get(type_id)

    def _load_material_type(self, type_id: str) -> MaterialType | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(material_types)
                .where(material_types.c.id == type_id)
                .order_by(material_types.c.version.desc())
                .limit(1)
            ).first()
        return None if row is None else _material_type(row)

    def material_types(self) -> list[MaterialType]:
        """The latest version of every material type, ordered by id."""
        latest = (
            select(material_types.c.id, func.max(material_types.c.version).label("version"))
            .group_by(material_types.c.id)
            .subquery()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(material_types)
                .join(
                    latest,
                    (material_types.c.id == latest.c.id)
                    & (material_types.c.version == latest.c.version),
                )
                .order_by(material_types.c.id)
            ).all()
        return [_material_type(r) for r in rows]

    def add_material_type(self, conn: Connection, value: MaterialType, now_us: int) -> None:
        """Insert one version of a material type in ``conn``'s transaction (its ledger entry's:
        the flow passes this as the entry's effect); ``forget_material_type`` once committed.

        Raises sqlalchemy.exc.IntegrityError if that (id, version) exists (a concurrent publish).
        """
        fields = [
            {
                "name": f.name,
                "type": f.type.value,
                "required": f.required,
                "description": f.description,
            }
            for f in value.fields
        ]
        conn.execute(
            insert(material_types).values(
                id=value.id,
                version=value.version,
                owner=value.owner,
                name=value.name,
                fields=json.dumps(fields, ensure_ascii=False, sort_keys=True),
                sharing_class=value.sharing_class.value,
                retention_days=value.retention_days,
                published_us=now_us,
                subject_id_scheme=value.subject_id_scheme.value,
            )
        )

    def forget_material_type(self, type_id: str) -> None:
        """Drop the cached material type: a new version of it was committed."""
        self.by_type.invalidate(type_id)

    # ------------------------------------------------------------------ purposes

    def purpose(self, purpose_id: str) -> Purpose | None:
        """A catalogued purpose, or None. May block on a cache miss."""
        return self.by_purpose.get(purpose_id)

    def _load_purpose(self, purpose_id: str) -> Purpose | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(purposes).where(purposes.c.id == purpose_id)).first()
        if row is None:
            return None
        m = row._mapping
        return Purpose(m["id"], m["name"], m["legal_basis"], PurposeBasis(m["basis"]))

    def purposes(self) -> list[Purpose]:
        """Every purpose, ordered by id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(purposes).order_by(purposes.c.id)).all()
        return [Purpose(r.id, r.name, r.legal_basis, PurposeBasis(r.basis)) for r in rows]

    def put_purpose(self, conn: Connection, value: Purpose, now_us: int) -> None:
        """Insert or replace a purpose in ``conn``'s transaction (its ledger entry's);
        ``forget_purpose`` once committed."""
        conn.execute(delete(purposes).where(purposes.c.id == value.id))
        conn.execute(
            insert(purposes).values(
                id=value.id,
                name=value.name,
                legal_basis=value.legal_basis,
                basis=value.basis.value,
                defined_us=now_us,
            )
        )

    def forget_purpose(self, purpose_id: str) -> None:
        """Drop the cached purpose: a change to it was committed."""
        self.by_purpose.invalidate(purpose_id)

    # ------------------------------------------------------------------ forms

    def form(self, form_id: str) -> Form | None:
        """A registered form, or None. May block on a cache miss."""
        return self.by_form.get(form_id)

    def _load_form(self, form_id: str) -> Form | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(forms).where(forms.c.id == form_id)).first()
        return None if row is None else _form(row)

    def forms(self) -> list[Form]:
        """Every form, ordered by id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(forms).order_by(forms.c.id)).all()
        return [_form(r) for r in rows]

    def put_form(self, conn: Connection, value: Form, now_us: int) -> None:
        """Insert or replace a form in ``conn``'s transaction (its ledger entry's);
        ``forget_form`` once committed."""
        fields = [
            {
                "name": f.name,
                "label": f.label,
                "material_type": f.material_type,
                "material_field": f.material_field,
            }
            for f in value.fields
        ]
        conn.execute(delete(forms).where(forms.c.id == value.id))
        conn.execute(
            insert(forms).values(
                id=value.id,
                name=value.name,
                owner=value.owner,
                purpose=value.purpose,
                fields=json.dumps(fields, ensure_ascii=False, sort_keys=True),
                registered_us=now_us,
            )
        )

    def forget_form(self, form_id: str) -> None:
        """Drop the cached form: a change to it was committed."""
        self.by_form.invalidate(form_id)
