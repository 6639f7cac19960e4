"""Catalog flows: owners publish material types, the operator defines purposes, form tools
register forms; every registered department reads."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from exchange import errors
from exchange.catalog.model import (
    FieldSpec,
    FieldType,
    Form,
    FormField,
    MaterialType,
    Purpose,
    SharingClass,
    form_to_proto,
    material_type_to_proto,
    purpose_basis,
    purpose_to_proto,
)
from exchange.catalog.schema import check_field_name, check_identifier
from exchange.clock import now_us
from exchange.crypto.subject import SubjectIdScheme
from exchange.errors import EntryFacts, quote
from exchange.flows import lookups
from exchange.flows.record import record, with_receipt
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.v1 import catalog_pb2, common_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

MAX_FIELDS = 200


def _invalid(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, message)


def _material_type(given: catalog_pb2.MaterialType, owner: str) -> MaterialType:
    check_identifier(given.id, "material_type.id")
    lookups.require_text(given.name.strip(), "material_type.name", 500)
    if given.sharing_class == catalog_pb2.SHARING_CLASS_UNSPECIFIED:
        raise _invalid("material_type.sharing_class must be set")
    if not 0 < len(given.fields) <= MAX_FIELDS:
        raise _invalid(f"material_type.fields must hold 1 to {MAX_FIELDS} fields")
    fields: list[FieldSpec] = []
    for spec in given.fields:
        check_field_name(spec.name, "field name")
        if spec.type == catalog_pb2.FIELD_TYPE_UNSPECIFIED:
            raise _invalid(f"field {spec.name!r} needs a type")
        if any(f.name == spec.name for f in fields):
            raise _invalid(f"field {spec.name!r} is declared twice")
        fields.append(
            FieldSpec(
                name=spec.name,
                type=FieldType(catalog_pb2.FieldType.Name(spec.type)),
                required=spec.required,
                description=spec.description[:1000],
            )
        )
    return MaterialType(
        id=given.id,
        owner=owner,
        name=given.name.strip(),
        fields=tuple(fields),
        sharing_class=SharingClass(catalog_pb2.SharingClass.Name(given.sharing_class)),
        retention_days=given.retention_days,
        version=1,
        subject_id_scheme=(
            SubjectIdScheme(catalog_pb2.SubjectIdScheme.Name(given.subject_id_scheme))
            if given.subject_id_scheme != catalog_pb2.SUBJECT_ID_SCHEME_UNSPECIFIED
            else SubjectIdScheme.CN_MAINLAND
        ),
    )


async def publish_material_type(
    hub: Hub, caller: Caller, body: catalog_pb2.PublishMaterialTypeRequest
) -> catalog_pb2.MaterialTypeResponse:
    """Publish a new material type, or a new version of one the caller owns.

    The hub assigns the version (1, then +1 on every change; an unchanged republish keeps it).
    Raises PermissionDenied (ROLE_REQUIRED without the provider role, NOT_OWNER for another's
    type or owner), InvalidArgument for a malformed type, Unavailable on a concurrent publish.
    """
    with lookups.facts(EntryFacts(material_type=body.material_type.id[:128])):
        lookups.require_role(caller, Role.PROVIDER, what="publishing a material type")
        if body.material_type.owner and body.material_type.owner != caller.department_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, "a department publishes only its own material types"
            )
        value = _material_type(body.material_type, caller.department_id)
        previous = await asyncio.to_thread(hub.catalog.material_type, value.id)
        if previous is not None and previous.owner != caller.department_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, f"material type {value.id!r} belongs to {previous.owner!r}"
            )
        changed = True
        if previous is not None:
            changed = replace(value, version=previous.version) != previous
            value = replace(value, version=previous.version + (1 if changed else 0))
        response = catalog_pb2.MaterialTypeResponse(material_type=material_type_to_proto(value))
        try:
            receipt = await record(
                hub.ledger,
                caller,
                ledger_pb2.MATERIAL_TYPE_PUBLICATION,
                answer=with_receipt(response),
                effect=(
                    (lambda conn: hub.catalog.add_material_type(conn, value, now_us()))
                    if changed
                    else None
                ),
                on_commit=lambda: hub.catalog.forget_material_type(value.id),
                facts=EntryFacts(
                    material_type=value.id,
                    version=value.version,
                    attributes={
                        "sharing_class": value.sharing_class.value,
                        "fields": ",".join(value.field_names),
                        "changed": "true" if changed else "false",
                    },
                ),
            )
        except IntegrityError as exc:
            raise errors.Unavailable(
                common_pb2.INTERNAL_ERROR,
                f"material type {value.id!r} was published concurrently; retry",
            ) from exc
    return with_receipt(response)(receipt)


async def get_material_type(
    hub: Hub, caller: Caller, body: catalog_pb2.GetMaterialTypeRequest
) -> catalog_pb2.MaterialTypeResponse:
    """Read the latest version of one material type. Raises NotFound (UNKNOWN_MATERIAL_TYPE)."""
    with lookups.facts(EntryFacts(material_type=body.material_type[:128])):
        found = await lookups.material_type(hub, body.material_type)
        response = catalog_pb2.MaterialTypeResponse(material_type=material_type_to_proto(found))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.READ,
            facts=EntryFacts(material_type=found.id, version=found.version),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)


async def list_catalog(
    hub: Hub, caller: Caller, body: catalog_pb2.ListCatalogRequest
) -> catalog_pb2.ListCatalogResponse:
    """The whole catalog: every material type (latest version), purpose and form."""
    types, purposes, forms = await asyncio.to_thread(
        lambda: (hub.catalog.material_types(), hub.catalog.purposes(), hub.catalog.forms())
    )
    response = catalog_pb2.ListCatalogResponse(
        material_types=[material_type_to_proto(t) for t in types],
        purposes=[purpose_to_proto(p) for p in purposes],
        forms=[form_to_proto(f) for f in forms],
    )
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "catalog"}),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)


async def define_purpose(
    hub: Hub, caller: Caller, body: catalog_pb2.DefinePurposeRequest
) -> catalog_pb2.PurposeResponse:
    """Add or update a purpose (legal basis). Operator only.

    Raises PermissionDenied (OPERATOR_ONLY), InvalidArgument (id, name or legal basis).
    """
    with lookups.facts(EntryFacts(purpose=body.purpose.id[:128])):
        if not caller.is_operator:
            raise errors.PermissionDenied(
                common_pb2.OPERATOR_ONLY, "only the hub operator may define purposes"
            )
        check_identifier(body.purpose.id, "purpose.id")
        lookups.require_text(body.purpose.name.strip(), "purpose.name", 500)
        lookups.require_text(body.purpose.legal_basis.strip(), "purpose.legal_basis", 2000)
        try:
            basis = purpose_basis(body.purpose.basis)
        except ValueError:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD, "purpose.basis is not a known PurposeBasis"
            ) from None
        value = Purpose(
            body.purpose.id, body.purpose.name.strip(), body.purpose.legal_basis.strip(), basis
        )
        response = catalog_pb2.PurposeResponse(purpose=purpose_to_proto(value))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.PURPOSE_DEFINITION,
            effect=lambda conn: hub.catalog.put_purpose(conn, value, now_us()),
            on_commit=lambda: hub.catalog.forget_purpose(value.id),
            facts=EntryFacts(purpose=value.id),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)


async def register_form(
    hub: Hub, caller: Caller, body: catalog_pb2.RegisterFormRequest
) -> catalog_pb2.FormResponse:
    """Register or update a form whose fields map to catalogued material type fields.

    Form tools and the operator only; a form is updated only by its owner (or the operator).
    Raises PermissionDenied (ROLE_REQUIRED, NOT_OWNER), InvalidArgument, NotFound
    (UNKNOWN_MATERIAL_TYPE, UNKNOWN_PURPOSE).
    """
    given = body.form
    with lookups.facts(
        EntryFacts(purpose=given.purpose[:128], attributes={"form": given.id[:128]})
    ):
        if not caller.is_operator:
            lookups.require_role(caller, Role.FORM_TOOL, what="registering a form")
        check_identifier(given.id, "form.id")
        lookups.require_text(given.name.strip(), "form.name", 500)
        await lookups.purpose(hub, given.purpose)
        if not given.fields:
            raise _invalid("form.fields must hold at least one field")
        fields: list[FormField] = []
        for spec in given.fields:
            check_field_name(spec.name, "form field name")
            if any(f.name == spec.name for f in fields):
                raise _invalid(f"form field {spec.name!r} is declared twice")
            if spec.material_type:
                mapped = await lookups.material_type(hub, spec.material_type)
                if mapped.field(spec.material_field) is None:
                    raise _invalid(
                        f"form field {spec.name!r} maps to {quote(spec.material_type)}."
                        f"{quote(spec.material_field)}, which is not a field of that type"
                    )
            elif spec.material_field:
                raise _invalid(f"form field {spec.name!r} names a field but no material type")
            fields.append(
                FormField(spec.name, spec.label[:500], spec.material_type, spec.material_field)
            )
        existing = await asyncio.to_thread(hub.catalog.form, given.id)
        if (
            existing is not None
            and existing.owner != caller.department_id
            and not (caller.is_operator)
        ):
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, f"form {given.id!r} belongs to {existing.owner!r}"
            )
        value = Form(
            id=given.id,
            name=given.name.strip(),
            owner=caller.department_id,
            fields=tuple(fields),
            purpose=given.purpose,
        )
        types = sorted({f.material_type for f in fields if f.material_type})
        response = catalog_pb2.FormResponse(form=form_to_proto(value))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.FORM_REGISTRATION,
            effect=lambda conn: hub.catalog.put_form(conn, value, now_us()),
            on_commit=lambda: hub.catalog.forget_form(value.id),
            facts=EntryFacts(
                purpose=value.purpose,
                attributes={"form": value.id, "material_types": ",".join(types)},
            ),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)


async def get_form(
    hub: Hub, caller: Caller, body: catalog_pb2.GetFormRequest
) -> catalog_pb2.FormResponse:
    """Read one form. Raises NotFound (UNKNOWN_FORM)."""
    with lookups.facts(EntryFacts(attributes={"form": body.form_id[:128]})):
        found = await lookups.form(hub, body.form_id)
        response = catalog_pb2.FormResponse(form=form_to_proto(found))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.READ,
            facts=EntryFacts(attributes={"form": found.id}),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)
