"""Catalog values as plain dataclasses, and their conversion to and from the contract."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from exchange.crypto.subject import SubjectIdScheme
from exchange.v1 import catalog_pb2


class SharingClass(enum.Enum):
    """How a material type may be shared (the contract's ``SharingClass``)."""

    UNCONDITIONAL = "UNCONDITIONAL"
    CONDITIONAL = "CONDITIONAL"
    NOT_SHARED = "NOT_SHARED"


class FieldType(enum.Enum):
    """Type of a material field; values travel as strings in their canonical form."""

    STRING = "STRING"
    INTEGER = "INTEGER"
    DATE = "DATE"
    BOOLEAN = "BOOLEAN"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a material type."""

    name: str
    type: FieldType
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class MaterialType:
    """A catalog entry: a kind of material, its owner (authoritative source) and schema."""

    id: str
    owner: str
    name: str
    fields: tuple[FieldSpec, ...]
    sharing_class: SharingClass
    retention_days: int = 0
    version: int = 1
    subject_id_scheme: SubjectIdScheme = SubjectIdScheme.CN_MAINLAND

    def field(self, name: str) -> FieldSpec | None:
        """The field named ``name``, or None."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        """Every field name, in schema order."""
        return tuple(f.name for f in self.fields)


class PurposeBasis(enum.Enum):
    """On what a purpose rests (the contract's ``PurposeBasis``): the law alone, the person's
    presence (a subject assertion), or the person's consent."""

    LEGAL_BASIS = "LEGAL_BASIS"
    PERSON_PRESENT = "PERSON_PRESENT"
    PERSON_CONSENT = "PERSON_CONSENT"


@dataclass(frozen=True, slots=True)
class Purpose:
    """A catalogued purpose: the legal basis a request names, and what else it needs."""

    id: str
    name: str
    legal_basis: str
    basis: PurposeBasis = PurposeBasis.LEGAL_BASIS


@dataclass(frozen=True, slots=True)
class FormField:
    """One field of a form; ``material_type`` empty for a field only the person can give."""

    name: str
    label: str = ""
    material_type: str = ""
    material_field: str = ""


@dataclass(frozen=True, slots=True)
class Form:
    """A registered form (一表通), the unit of prefill."""

    id: str
    name: str
    owner: str
    fields: tuple[FormField, ...]
    purpose: str


# ----------------------------------------------------------------------- contract conversion


def material_type_to_proto(value: MaterialType) -> catalog_pb2.MaterialType:
    """The contract form of a material type."""
    return catalog_pb2.MaterialType(
        id=value.id,
        owner=value.owner,
        name=value.name,
        fields=[
            catalog_pb2.FieldSpec(
                name=f.name,
                type=catalog_pb2.FieldType.Value(f.type.value),
                required=f.required,
                description=f.description,
            )
            for f in value.fields
        ],
        sharing_class=catalog_pb2.SharingClass.Value(value.sharing_class.value),
        retention_days=value.retention_days,
        version=value.version,
        subject_id_scheme=catalog_pb2.SubjectIdScheme.Value(value.subject_id_scheme.value),
    )


def purpose_to_proto(value: Purpose) -> catalog_pb2.Purpose:
    """The contract form of a purpose."""
    return catalog_pb2.Purpose(
        id=value.id,
        name=value.name,
        legal_basis=value.legal_basis,
        basis=catalog_pb2.PurposeBasis.Value(value.basis.value),
    )


def purpose_basis(value: catalog_pb2.PurposeBasis.ValueType) -> PurposeBasis:
    """The basis a contract value names; unset means LEGAL_BASIS (purposes defined before bases
    existed rest on the law alone). Raises ValueError for a value the contract does not know."""
    if value == catalog_pb2.PURPOSE_BASIS_UNSPECIFIED:
        return PurposeBasis.LEGAL_BASIS
    return PurposeBasis(catalog_pb2.PurposeBasis.Name(value))


def form_to_proto(value: Form) -> catalog_pb2.Form:
    """The contract form of a form."""
    return catalog_pb2.Form(
        id=value.id,
        name=value.name,
        owner=value.owner,
        purpose=value.purpose,
        fields=[
            catalog_pb2.FormField(
                name=f.name,
                label=f.label,
                material_type=f.material_type,
                material_field=f.material_field,
            )
            for f in value.fields
        ],
    )
