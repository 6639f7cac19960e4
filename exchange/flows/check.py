"""Check: is material of a type on file for a subject? Reference, version and holder; no
content. Asked before collecting anything from a person (collect once).

A department on its own account (consumer, collector, provider) checks as it always has: that is
how the same material is submitted at most once. A person-facing member (a form tool,
``exchange.policy.roles.PERSON_FACING``) learns nothing about a person who has not authenticated
to it: it checks with the person's subject assertion (``exchange.flows.person.require_person``,
the check Prefill makes), or names a catalogued LEGAL_BASIS purpose under which a grant in force,
held by it or by its owning department (the grants Prefill draws on), allows that material type:
then the law, not the person, is the basis, and the person sees the check in their history. An
assertion, when sent, is always verified. Every refusal is an entry with its precise reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exchange import errors
from exchange.catalog.model import MaterialType, PurposeBasis, SharingClass
from exchange.clock import now_us
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.person import require_person
from exchange.flows.record import record, with_receipt
from exchange.flows.request import grants_for
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.policy.roles import person_facing
from exchange.policy.sharing import granted
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

CHECK_ROLES = (Role.CONSUMER, Role.COLLECTOR, Role.FORM_TOOL, Role.PROVIDER)


async def _on_what_basis(
    hub: Hub,
    caller: Caller,
    body: exchange_pb2.CheckRequest,
    material_type: MaterialType,
    known: EntryFacts,
) -> str:
    """Why the caller may learn whether the subject's material is on file: "person" (their
    assertion), "legal_basis" (a granted legal-basis purpose) or "department" (its own account).

    Raises the refusals of ``require_person`` (ASSERTION_REQUIRED when a form tool sends neither
    an assertion nor a purpose, or a purpose that rests on the person), NotFound
    (UNKNOWN_PURPOSE), PermissionDenied (MATERIAL_NOT_SHARED, NO_GRANT, GRANT_REVOKED,
    GRANT_EXPIRED, PURPOSE_NOT_GRANTED).
    """
    if body.HasField("assertion") or (person_facing(caller) and not body.purpose):
        await require_person(hub, caller, body.assertion, body.subject_id, known)
        return "person"
    if not person_facing(caller):
        if body.purpose:  # named, so recorded: it must be catalogued
            await lookups.purpose(hub, body.purpose)
        return "department"
    purpose = await lookups.purpose(hub, body.purpose)
    if purpose.basis is not PurposeBasis.LEGAL_BASIS:
        raise errors.Unauthenticated(
            common_pb2.ASSERTION_REQUIRED,
            f"purpose {purpose.id!r} rests on the person ({purpose.basis.value}), not on a legal "
            "basis alone: a form tool checks for them only with their subject assertion",
        )
    if material_type.sharing_class is SharingClass.NOT_SHARED:
        raise errors.PermissionDenied(
            common_pb2.MATERIAL_NOT_SHARED,
            f"material type {material_type.id!r} is not shared: no legal basis lets a form tool "
            "check it without the person",
        )
    grants = await grants_for(hub, await lookups.acting_for(hub, caller), material_type.id)
    # A grant must name the purpose even for UNCONDITIONAL material: the owner's grant is what
    # ties this form tool to the law it invokes.
    grant = granted(material_type, grants, (), purpose.id, now_us()).grant
    assert grant is not None  # granted() always names the grant it used
    known.attributes["grant_id"] = grant.id
    return "legal_basis"


async def check(
    hub: Hub, caller: Caller, body: exchange_pb2.CheckRequest
) -> exchange_pb2.CheckResponse:
    """Answer whether material is on file; "not on file" is an answer, not a refusal.

    Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument (missing subject or type),
    NotFound (UNKNOWN_MATERIAL_TYPE), and for a form tool the refusals of ``_on_what_basis``
    (its person's assertion, or the legal basis and grant it names).
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(
        EntryFacts(
            material_type=body.material_type[:128],
            subject_ref=subject_ref,
            purpose=body.purpose[:128],
        )
    ) as known:
        lookups.require_role(caller, *CHECK_ROLES, what="Check")
        lookups.require_text(body.subject_id, "subject_id", 128)
        material_type = await lookups.material_type(hub, body.material_type)
        lookups.subject_id(body.subject_id, material_type.subject_id_scheme)
        known.counterparty = material_type.owner
        known.attributes["checked_for"] = await _on_what_basis(
            hub, caller, body, material_type, known
        )
        current = await lookups.indexed(hub, material_type.id, subject_ref)
        if current is None:
            answer = exchange_pb2.CheckResponse(on_file=False, holder=material_type.owner)
        else:
            answer = exchange_pb2.CheckResponse(
                on_file=True,
                reference=current.reference,
                version=current.version,
                holder=current.holder,
            )
        said = known.copy(on_file="true" if current else "false")
        said.material_type, said.purpose = material_type.id, body.purpose
        if current is not None:
            said.reference, said.version = current.reference, current.version
            said.content_hash = current.content_hash

        # The answer is built in the entry's transaction, and stored with it for retries.
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.CHECK,
            facts=said,
            answer=with_receipt(answer),
        )
    return with_receipt(answer)(receipt)
