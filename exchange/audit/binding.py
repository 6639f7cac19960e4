"""What an OK entry takes from the signed request stored beside it, checked field by field.

The hub builds an entry from the caller's request: its actor and request id from the signed
header, its kind from the method (the body's type), and for most calls its material type,
purpose, fields, counterparty or object id from the body. A dishonest hub can rewrite any of
them and re-sign its checkpoints, but it cannot re-sign the department's envelope. So the
verifier reads the signed body of every OK entry whose envelope verified and requires:

- **kind**: the body's type is one the entry's kind is recorded for (a Check is never
  recorded as a Request);
- **fields taken from the body**: equal to the signed value, allowing for the hub's documented
  truncation of free text to its first 128 characters (``TRUNCATE``);
- **field lists** (the ``fields`` and ``purposes`` attributes): every name the entry records
  was signed; the hub may record fewer (what a grant permits), never another;
- **subject reference**: the subject id travels in the disclosure, never in the stored body, and
  ``subject_ref`` is a keyed hash under a hub secret, so it cannot be recomputed; but a request
  that names no subject (an empty ``subject_id`` and no disclosure) must have an empty
  ``subject_ref``, and one that names a subject (in its body, or in a disclosure where the
  subject id is the body's only personal field) a 32-byte one.

Bodies of types not listed here (a newer contract) are bound by their header only. Stateless:
runs in the verifier's worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from exchange.v1 import (
    audit_pb2,
    catalog_pb2,
    exchange_pb2,
    grants_pb2,
    ledger_pb2,
    registry_pb2,
    supervision_pb2,
)

TRUNCATE = 128  # the hub keeps at most this many characters of free text in an entry
SUBJECT_REF_BYTES = 32

Mismatch = str  # a human message naming the field
Entry = ledger_pb2.LedgerEntry
Check = Callable[[Entry, Any, list[Mismatch]], None]


def _same(what: str, recorded: str, signed: str, out: list[Mismatch]) -> None:
    # Callers on the verifier's per-entry path test ``recorded != signed`` first, to spare a call.
    if recorded != signed and not (len(signed) > TRUNCATE and recorded == signed[:TRUNCATE]):
        out.append(
            f"the entry records {what} {recorded[:TRUNCATE]!r}, the signed request "
            f"{signed[:TRUNCATE]!r}"
        )


def _attribute(entry: Entry, name: str, signed: str, out: list[Mismatch]) -> None:
    _same(f"attribute {name}", entry.attributes.get(name, ""), signed, out)


def _listed(entry: Entry, name: str, signed: Any, out: list[Mismatch]) -> None:
    recorded = entry.attributes.get(name, "")
    extra = sorted(set(recorded.split(",")) - set(signed)) if recorded else []
    if extra:
        named = ", ".join(extra)[:TRUNCATE]
        out.append(f"the entry records {name} {named!r} the signed request did not name")


def _subject(
    entry: Entry, body: Any, out: list[Mismatch], only_personal_field: bool = True
) -> None:
    # Where the subject id is the body's only personal field, a disclosure is the subject's.
    disclosed = bool(body.header.disclosure_sha256)
    if body.subject_id or (disclosed and only_personal_field):
        if len(entry.subject_ref) != SUBJECT_REF_BYTES:
            out.append("the signed request names a subject, the entry records no subject reference")
    elif not disclosed and entry.subject_ref:
        out.append("the entry records a subject reference, the signed request names no subject")


def _material(entry: Entry, body: Any, out: list[Mismatch]) -> None:
    recorded, signed = entry.material_type, body.material_type
    if recorded != signed:
        _same("material type", recorded, signed, out)


def _material_and_subject(entry: Entry, body: Any, out: list[Mismatch]) -> None:
    _material(entry, body, out)
    _subject(entry, body, out)


def _material_and_subject_among_others(entry: Entry, body: Any, out: list[Mismatch]) -> None:
    _material(entry, body, out)
    _subject(entry, body, out, only_personal_field=False)


def _check(entry: Entry, body: exchange_pb2.CheckRequest, out: list[Mismatch]) -> None:
    _material_and_subject(entry, body, out)
    _same("purpose", entry.purpose, body.purpose, out)


def _request(entry: Entry, body: exchange_pb2.MaterialRequest, out: list[Mismatch]) -> None:
    # the bulk of a ledger: what _material_and_subject does, inline
    recorded, signed = entry.material_type, body.material_type
    if recorded != signed:
        _same("material type", recorded, signed, out)
    _subject(entry, body, out)
    recorded, signed = entry.purpose, body.purpose
    if recorded != signed:
        _same("purpose", recorded, signed, out)
    fields = body.fields
    if fields:
        _listed(entry, "fields", fields, out)


def _prefill(entry: Entry, body: exchange_pb2.PrefillRequest, out: list[Mismatch]) -> None:
    _subject(entry, body, out)
    _attribute(entry, "form", body.form_id, out)


def _history(entry: Entry, body: exchange_pb2.AccessHistoryRequest, out: list[Mismatch]) -> None:
    _subject(entry, body, out)


def _resolve(entry: Entry, body: exchange_pb2.ResolveObjectionRequest, out: list[Mismatch]) -> None:
    _attribute(entry, "objection_id", body.objection_id, out)


def _issue(entry: Entry, body: grants_pb2.IssueGrantRequest, out: list[Mismatch]) -> None:
    _same("material type", entry.material_type, body.grant.material_type, out)
    _same("counterparty", entry.counterparty, body.grant.consumer, out)
    _listed(entry, "fields", body.grant.fields, out)
    _listed(entry, "purposes", body.grant.purposes, out)


def _revoke_grant(entry: Entry, body: grants_pb2.RevokeGrantRequest, out: list[Mismatch]) -> None:
    _attribute(entry, "grant_id", body.grant_id, out)


def _publish_type(
    entry: Entry, body: catalog_pb2.PublishMaterialTypeRequest, out: list[Mismatch]
) -> None:
    _same("material type", entry.material_type, body.material_type.id, out)
    _listed(entry, "fields", [f.name for f in body.material_type.fields], out)


def _define_purpose(
    entry: Entry, body: catalog_pb2.DefinePurposeRequest, out: list[Mismatch]
) -> None:
    _same("purpose", entry.purpose, body.purpose.id, out)


def _register_form(
    entry: Entry, body: catalog_pb2.RegisterFormRequest, out: list[Mismatch]
) -> None:
    _same("purpose", entry.purpose, body.form.purpose, out)
    _attribute(entry, "form", body.form.id, out)


def _get_form(entry: Entry, body: catalog_pb2.GetFormRequest, out: list[Mismatch]) -> None:
    _attribute(entry, "form", body.form_id, out)


def _department(entry: Entry, body: Any, out: list[Mismatch]) -> None:
    _same("department", entry.counterparty, body.department_id, out)


def _register(
    entry: Entry, body: registry_pb2.RegisterDepartmentRequest, out: list[Mismatch]
) -> None:
    _same("department", entry.counterparty, body.department.id, out)


def _nothing(entry: Entry, body: Any, out: list[Mismatch]) -> None:
    return


def _reconciliation(
    entry: Entry, body: ledger_pb2.ReconciliationRequest, out: list[Mismatch]
) -> None:
    _same("holder", entry.counterparty, body.holder, out)
    _same("material type", entry.material_type, body.material_type, out)
    _same("reference", entry.reference, body.reference, out)
    if entry.version != body.version:
        out.append(f"the entry records version {entry.version}, the signed request {body.version}")
    _attribute(entry, "difference", body.difference, out)
    _attribute(entry, "repair", body.repair, out)


_RULES: dict[str, tuple[type[Message], frozenset[int], Check]] = {
    f"exchange.v1.{body_type.__name__}": (body_type, frozenset(kinds), check)
    for body_type, kinds, check in (
        (exchange_pb2.CheckRequest, [ledger_pb2.CHECK], _check),
        (exchange_pb2.SubmitRequest, [ledger_pb2.SUBMIT], _material_and_subject_among_others),
        (exchange_pb2.MaterialRequest, [ledger_pb2.REQUEST], _request),
        (exchange_pb2.PrefillRequest, [ledger_pb2.PREFILL], _prefill),
        (exchange_pb2.PublishHoldingsRequest, [ledger_pb2.SUBMIT], _material),
        (exchange_pb2.AccessHistoryRequest, [ledger_pb2.ACCESS_HISTORY], _history),
        (
            exchange_pb2.FileObjectionRequest,
            [ledger_pb2.OBJECTION_FILING],
            _material_and_subject_among_others,
        ),
        (exchange_pb2.ListObjectionsRequest, [ledger_pb2.READ], _nothing),
        (exchange_pb2.ResolveObjectionRequest, [ledger_pb2.OBJECTION_RESOLUTION], _resolve),
        (grants_pb2.IssueGrantRequest, [ledger_pb2.GRANT_ISSUANCE], _issue),
        (grants_pb2.RevokeGrantRequest, [ledger_pb2.GRANT_REVOCATION], _revoke_grant),
        (grants_pb2.ListGrantsRequest, [ledger_pb2.READ], _nothing),
        (
            catalog_pb2.PublishMaterialTypeRequest,
            [ledger_pb2.MATERIAL_TYPE_PUBLICATION],
            _publish_type,
        ),
        (catalog_pb2.GetMaterialTypeRequest, [ledger_pb2.READ], _material),
        (catalog_pb2.ListCatalogRequest, [ledger_pb2.READ], _nothing),
        (catalog_pb2.DefinePurposeRequest, [ledger_pb2.PURPOSE_DEFINITION], _define_purpose),
        (catalog_pb2.RegisterFormRequest, [ledger_pb2.FORM_REGISTRATION], _register_form),
        (catalog_pb2.GetFormRequest, [ledger_pb2.READ], _get_form),
        (registry_pb2.RegisterDepartmentRequest, [ledger_pb2.DEPARTMENT_REGISTRATION], _register),
        (registry_pb2.RotateKeyRequest, [ledger_pb2.KEY_ROTATION], _department),
        (registry_pb2.RevokeKeyRequest, [ledger_pb2.KEY_REVOCATION], _department),
        (registry_pb2.SetStateRequest, [ledger_pb2.STATE_CHANGE], _department),
        (registry_pb2.UpdateDepartmentRequest, [ledger_pb2.DEPARTMENT_REGISTRATION], _department),
        (registry_pb2.GetDepartmentRequest, [ledger_pb2.READ], _department),
        (registry_pb2.ListDepartmentsRequest, [ledger_pb2.READ], _nothing),
        (audit_pb2.GetCheckpointRequest, [ledger_pb2.READ], _nothing),
        (audit_pb2.InclusionProofRequest, [ledger_pb2.READ], _nothing),
        (audit_pb2.ConsistencyProofRequest, [ledger_pb2.READ], _nothing),
        (audit_pb2.StreamEntriesRequest, [ledger_pb2.READ], _nothing),
        (supervision_pb2.ListAlertsRequest, [ledger_pb2.READ], _nothing),
        (supervision_pb2.BurdenReportRequest, [ledger_pb2.READ], _nothing),
        (ledger_pb2.ReconciliationRequest, [ledger_pb2.RECONCILIATION], _reconciliation),
    )
}

# A stream is not claimed by its request id (a retried or resumed stream is served, and
# recorded, again), so its request id may recur; it discloses only what an auditor may read.
UNCLAIMED = frozenset({"exchange.v1.StreamEntriesRequest"})


def parse(payload_type: str, payload: bytes) -> Any:
    """The signed body: a message of ``payload_type`` if this contract knows it, else any body
    with its header (field 1 of every request body). Raises DecodeError if not decodable."""
    rule = _RULES.get(payload_type)
    return (rule[0] if rule is not None else registry_pb2.ListDepartmentsRequest).FromString(
        payload
    )


def mismatches(entry: Entry, payload_type: str, body: Any) -> list[Mismatch]:
    """Every field of ``entry`` that differs from what the signed ``body`` of ``payload_type``
    says (the header's department and request id are checked by the caller)."""
    rule = _RULES.get(payload_type)
    if rule is None:
        return []
    _, kinds, check = rule
    kind_value = entry.kind
    if kind_value not in kinds:
        kind = (
            ledger_pb2.EntryKind.Name(kind_value)
            if kind_value in ledger_pb2.EntryKind.values()
            else str(kind_value)
        )
        return [f"the entry's kind {kind} is not what a {payload_type} records"]
    found: list[Mismatch] = []
    check(entry, body, found)
    return found
