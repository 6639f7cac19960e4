"""Prefill (一表通): a form tool gets every field of a registered form that is on file.

The form's fields are grouped by material type; for each type the hub decides what the form
tool may receive for the form's purpose (sharing class, grants held by the form tool or by the
department that owns it), looks the material up in its index, and fetches only those fields from
the holders, all holders concurrently. The answer gives each filled field with its provenance
(holder, reference, version, content hash) and lists the rest: ``missing`` (not on file: ask
the person), ``withheld`` (on file, not permitted here: ask the person) and ``unavailable`` (the
holder did not answer: retry later). ``withheld`` is only said of material that is on file
for the person: with nothing on file a field is ``missing``, whatever the grants.

Prefill is made for a person: it needs their subject assertion (exchange.flows.person), and its
entry records the identity provider, the assurance level and the assertion's hash. Each filled
field carries its source class: AUTHORITATIVE when the holder stored that version itself,
PERSON_PROVIDED when a collector submitted it on the person's word. One ledger entry records the
whole prefill, naming every material type read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from exchange import errors
from exchange.catalog.model import FormField, MaterialType, SharingClass
from exchange.clock import now_us
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.material import fetch_checked
from exchange.flows.person import require_person
from exchange.flows.record import record, with_receipt
from exchange.flows.request import grants_for, take_rate
from exchange.flows.validity import Share
from exchange.membership import Role
from exchange.policy.grants import Grant
from exchange.policy.identity import Caller
from exchange.policy.sharing import Permit
from exchange.store.materials import IndexedMaterial
from exchange.v1 import envelope_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

log = structlog.get_logger("exchange.prefill")


@dataclass(slots=True)
class _Part:
    """The form fields served by one material type, and what became of them."""

    material_type: MaterialType | None
    form_fields: list[FormField]
    permit: Permit | None = None
    current: IndexedMaterial | None = None
    envelope: envelope_pb2.Envelope | None = None
    values: dict[str, str] | None = None
    failure: str = ""


def _permit_part(
    material_type: MaterialType, grants: list[Grant], wanted: set[str], purpose: str
) -> Permit | None:
    """The largest permitted subset of ``wanted`` under one grant, or None."""
    if material_type.sharing_class is SharingClass.NOT_SHARED:
        return None
    if material_type.sharing_class is SharingClass.UNCONDITIONAL:
        return Permit(tuple(sorted(wanted)), None)
    now = now_us()
    usable = [
        g for g in grants if not g.revoked_at(now) and g.valid_at(now) and purpose in g.purposes
    ]
    best = max(usable, key=lambda g: len(wanted & g.fields), default=None)
    if best is None or not wanted & best.fields:
        return None
    return Permit(tuple(sorted(wanted & best.fields)), best)


async def prefill(
    hub: Hub, caller: Caller, body: exchange_pb2.PrefillRequest
) -> exchange_pb2.PrefillResponse:
    """Prefill a registered form for a subject.

    Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument, NotFound (UNKNOWN_FORM), the
    refusals of ``exchange.flows.person.require_person`` (the person's assertion),
    ResourceExhausted (RATE_LIMITED on a grant used). A holder that is down, slow or answers
    content that disagrees with the index does not fail the call: its fields are listed as
    ``unavailable`` and the entry says so.
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(
        EntryFacts(subject_ref=subject_ref, attributes={"form": body.form_id[:128]})
    ) as known:
        lookups.require_role(caller, Role.FORM_TOOL, what="Prefill")
        lookups.require_text(body.subject_id, "subject_id", 128)
        form = await lookups.form(hub, body.form_id)
        known.purpose = form.purpose  # a refused attempt shows the person its purpose too
        subject_id = lookups.subject_id(body.subject_id)
        await require_person(hub, caller, body.assertion, subject_id, known)
        consumers = await lookups.acting_for(hub, caller)

        parts: dict[str, _Part] = {}
        unmapped: list[str] = []
        for field in form.fields:
            if not field.material_type:
                unmapped.append(field.name)
                continue
            parts.setdefault(field.material_type, _Part(None, [])).form_fields.append(field)
        for type_id, part in parts.items():
            part.material_type = await hub.catalog.by_type.read(type_id)
            if part.material_type is None:
                continue
            lookups.subject_id(body.subject_id, part.material_type.subject_id_scheme)
            grants: list[Grant] = (
                list(await grants_for(hub, consumers, type_id))
                if part.material_type.sharing_class is SharingClass.CONDITIONAL
                else []
            )
            wanted = {f.material_field for f in part.form_fields}
            part.permit = _permit_part(part.material_type, grants, wanted, form.purpose)
            if part.permit is not None:
                take_rate(hub, part.permit.grant)
            # Looked up even when nothing is permitted: only material actually on file may be
            # reported as withheld (the index holds no content, so nothing leaks).
            part.current = await lookups.indexed(hub, type_id, subject_ref)

        latencies: list[float] = []  # of holders asked, for supervision

        async def fetch(part: _Part) -> None:
            assert part.material_type is not None and part.permit is not None
            assert part.current is not None
            try:
                holder = await lookups.holder(hub, part.current.holder)
                envelope, values = await fetch_checked(
                    hub,
                    holder,
                    part.current,
                    part.material_type,
                    subject_id,
                    part.permit.fields,
                    caller=caller.department_id,
                    request_id=caller.request_id,
                    kind="prefill",
                    purpose=form.purpose,
                    timed=latencies.append,
                )
            except (errors.Unavailable, errors.DeadlineExceeded, errors.FailedPrecondition) as exc:
                part.failure = exc.reason_name
                log.warning(
                    "prefill_holder_failed",
                    material_type=part.material_type.id,
                    holder=part.current.holder,
                    reason=exc.reason_name,
                )
                return
            part.envelope = envelope
            part.values = dict(values)

        fetching = [p for p in parts.values() if p.current is not None and p.permit is not None]
        if fetching:
            # No entry, no access: no holder is asked while the ledger cannot commit.
            await hub.ledger.ensure_writable()
        await asyncio.gather(*(fetch(p) for p in fetching))

        response = exchange_pb2.PrefillResponse()
        missing, withheld, unavailable = list(unmapped), [], []
        failures: dict[str, str] = {}
        for part in parts.values():
            permitted = set(part.permit.fields) if part.permit else set()
            for field in part.form_fields:
                if part.material_type is None or part.current is None:
                    missing.append(field.name)
                elif part.permit is None or field.material_field not in permitted:
                    withheld.append(field.name)
                elif part.values is None:
                    unavailable.append(field.name)
                elif field.material_field not in part.values:
                    missing.append(field.name)
                else:
                    response.fields.add(
                        name=field.name,
                        value=part.values[field.material_field],
                        holder=part.current.holder,
                        material_type=part.current.material_type,
                        reference=part.current.reference,
                        version=part.current.version,
                        content_hash=part.current.content_hash,
                        source_class=(
                            exchange_pb2.AUTHORITATIVE
                            if part.current.submitted_by == part.current.holder
                            else exchange_pb2.PERSON_PROVIDED
                        ),
                        submitted_by=part.current.submitted_by,
                    )
            if part.envelope is not None:
                response.materials.append(part.envelope)
            if part.failure and part.material_type is not None:
                failures[part.material_type.id] = part.failure
        order = {f.name: i for i, f in enumerate(form.fields)}
        response.missing.extend(sorted(missing, key=order.__getitem__))
        response.withheld.extend(sorted(withheld, key=order.__getitem__))
        response.unavailable.extend(sorted(unavailable, key=order.__getitem__))
        # Every material type read from its holder, whether or not a field was filled from it.
        used = sorted(
            p.material_type.id
            for p in parts.values()
            if p.material_type is not None and p.values is not None
        )
        # What was delivered, and under which grant: checked again as the entry is appended.
        shares = [
            Share(p.material_type.id, p.permit.grant.id if p.permit.grant else None)
            for p in parts.values()
            if p.material_type is not None and p.permit is not None and p.values is not None
        ]
        said = known.copy(
            form=form.id,
            material_types=",".join(used),
            filled=str(len(response.fields)),
            missing=str(len(response.missing)),
            withheld=str(len(response.withheld)),
            unavailable=str(len(response.unavailable)),
        )
        said.material_type = used[0] if len(used) == 1 else ""
        said.counterparty = ",".join(sorted({f.holder for f in response.fields}))[:128]
        if latencies:
            said.attributes["provider_latency_ms"] = f"{max(latencies):.1f}"
        if failures:
            said.attributes["failures"] = ",".join(f"{t}:{r}" for t, r in sorted(failures.items()))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.PREFILL,
            facts=said,
            shares=shares,
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)
