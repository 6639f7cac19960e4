"""How the flow commands print answers: plain values for ``--json``, and readable lines.

The JSON shapes are documented in docs/cli.md; ``material_type_as_dict`` is also the shape
``exchange catalog publish`` reads back (exchange.cli.material_file).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from adapters.client import CheckResult, Material, Prefill, SubmitResult
from exchange.clock import from_timestamp
from exchange.ledger import Receipt
from exchange.v1 import catalog_pb2, grants_pb2


def echo_json(value: object) -> None:
    """Print ``value`` as indented JSON (UTF-8 text kept as is)."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def iso(us: int) -> str:
    """Microseconds since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


def ledger(receipt: Receipt | None) -> str:
    """``ledger entry #N`` for a receipt (empty without one)."""
    return f"ledger entry #{receipt.sequence}" if receipt is not None else ""


def check_as_dict(material_type: str, result: CheckResult) -> dict[str, Any]:
    """A check's answer as the JSON output."""
    return {
        "material_type": material_type,
        "on_file": result.on_file,
        "holder": result.holder,
        "reference": result.reference,
        "version": result.version,
        "ledger_sequence": result.receipt.sequence,
    }


def submit_as_dict(material_type: str, result: SubmitResult) -> dict[str, Any]:
    """A submission's answer as the JSON output."""
    return {
        "material_type": material_type,
        "outcome": result.outcome,
        "reference": result.reference,
        "version": result.version,
        "content_hash": result.content_hash.hex(),
        "objection_id": result.objection_id,
        "ledger_sequence": result.receipt.sequence,
    }


def material_as_dict(material: Material) -> dict[str, Any]:
    """Delivered material (verified end to end) as the JSON output."""
    return {
        "material_type": material.material_type,
        "holder": material.holder,
        "reference": material.reference,
        "version": material.version,
        "fields": dict(material.fields),
        "issued_at": iso(material.issued_us),
        "request_id": material.request_id,
        "ledger_sequence": material.receipt.sequence if material.receipt else None,
    }


def prefill_withheld(prefill: Prefill) -> tuple[str, ...]:
    """Form fields on file that the form may not receive (ask the person these too)."""
    return prefill.withheld


def prefill_unavailable(prefill: Prefill) -> tuple[str, ...]:
    """Form fields whose holder did not answer (retry later)."""
    return prefill.unavailable


def prefill_as_dict(form_id: str, prefill: Prefill) -> dict[str, Any]:
    """A prefilled form, each value with its source, as the JSON output."""
    return {
        "form": form_id,
        "fields": [
            {
                "name": f.name,
                "value": f.value,
                "holder": f.holder,
                "material_type": f.material_type,
                "reference": f.reference,
                "version": f.version,
                "content_hash": f.content_hash.hex(),
                "source_class": f.source_class,
                "submitted_by": f.submitted_by,
            }
            for f in prefill.fields
        ],
        "missing": list(prefill.missing),
        "withheld": list(prefill_withheld(prefill)),
        "unavailable": list(prefill_unavailable(prefill)),
        "ledger_sequence": prefill.receipt.sequence,
    }


def grant_as_dict(grant: grants_pb2.Grant) -> dict[str, Any]:
    """A grant as the JSON output."""
    return {
        "id": grant.id,
        "owner": grant.owner,
        "consumer": grant.consumer,
        "material_type": grant.material_type,
        "fields": list(grant.fields),
        "purposes": list(grant.purposes),
        "valid_from": iso(from_timestamp(grant.valid_from)),
        "valid_until": (
            iso(from_timestamp(grant.valid_until)) if grant.HasField("valid_until") else None
        ),
        "rate_per_minute": grant.rate_per_minute,
        "revoked_at": (
            iso(from_timestamp(grant.revoked_at)) if grant.HasField("revoked_at") else None
        ),
    }


def material_type_as_dict(value: catalog_pb2.MaterialType) -> dict[str, Any]:
    """A catalogued material type as the JSON output (the shape ``catalog publish`` reads)."""
    return {
        "id": value.id,
        "owner": value.owner,
        "name": value.name,
        "sharing_class": catalog_pb2.SharingClass.Name(value.sharing_class),
        "retention_days": value.retention_days,
        "version": value.version,
        "subject_id_scheme": catalog_pb2.SubjectIdScheme.Name(value.subject_id_scheme),
        "fields": [
            {
                "name": f.name,
                "type": catalog_pb2.FieldType.Name(f.type),
                "required": f.required,
                "description": f.description,
            }
            for f in value.fields
        ],
    }


def catalog_as_dict(answer: catalog_pb2.ListCatalogResponse) -> dict[str, Any]:
    """The whole catalog (material types, purposes, forms) as the JSON output."""
    return {
        "material_types": [material_type_as_dict(m) for m in answer.material_types],
        "purposes": [purpose_as_dict(p) for p in answer.purposes],
        "forms": [
            {
                "id": f.id,
                "name": f.name,
                "owner": f.owner,
                "purpose": f.purpose,
                "fields": [
                    {
                        "name": x.name,
                        "label": x.label,
                        "material_type": x.material_type,
                        "material_field": x.material_field,
                    }
                    for x in f.fields
                ],
            }
            for f in answer.forms
        ],
    }


def show_grant(grant: grants_pb2.Grant) -> None:
    value = grant_as_dict(grant)
    state = f"revoked {value['revoked_at']}" if value["revoked_at"] else "in force"
    until = value["valid_until"] or "no end"
    rate = f", {grant.rate_per_minute}/min" if grant.rate_per_minute else ""
    click.echo(
        f"{grant.id}  {grant.owner} -> {grant.consumer}  {grant.material_type} "
        f"[{','.join(grant.fields)}] for {','.join(grant.purposes)}  "
        f"{value['valid_from']} .. {until}{rate}  {state}"
    )


def show_material_type(value: catalog_pb2.MaterialType) -> None:
    sharing = catalog_pb2.SharingClass.Name(value.sharing_class)
    retention = f"{value.retention_days} days" if value.retention_days else "indefinitely"
    click.echo(f"{value.id} v{value.version}: {value.name}")
    click.echo(f"  owner {value.owner}, {sharing}, kept {retention}")
    for f in value.fields:
        required = "required" if f.required else "optional"
        described = f"  {f.description}" if f.description else ""
        click.echo(f"  {f.name:24} {catalog_pb2.FieldType.Name(f.type):8} {required}{described}")


def purpose_as_dict(purpose: catalog_pb2.Purpose) -> dict[str, Any]:
    """A purpose as the JSON output."""
    return {"id": purpose.id, "name": purpose.name, "legal_basis": purpose.legal_basis}
