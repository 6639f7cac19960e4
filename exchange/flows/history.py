"""Access history: every ledger entry that touched a subject's material, for that person.

Served to the person, through a form tool or portal holding their subject assertion, or to a
supervisor. It shows every access: department requests under a legal basis as well as prefills
made for the person, and refused attempts as well as served ones; for each, who, when, which
material types (for a prefill, each type read), why (the purpose), how it ended, and, for calls
made with the person's assertion, the identity provider and assurance level. Reading it is
itself an entry, so the person sees who looked at who looked.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.person import require_person
from exchange.flows.record import record, with_receipt
from exchange.membership import Role
from exchange.policy.assertions import Assurance
from exchange.policy.identity import Caller
from exchange.v1 import exchange_pb2, ledger_pb2, person_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

# Kinds that are about a subject's material or the person's say over it.
SUBJECT_KINDS = frozenset(
    {
        ledger_pb2.CHECK,
        ledger_pb2.SUBMIT,
        ledger_pb2.REQUEST,
        ledger_pb2.PREFILL,
        ledger_pb2.ACCESS_HISTORY,
        ledger_pb2.OBJECTION_FILING,
        ledger_pb2.OBJECTION_RESOLUTION,
        ledger_pb2.CONSENT_GIVEN,
        ledger_pb2.CONSENT_REVOCATION,
        ledger_pb2.CONSENT_LISTING,
        ledger_pb2.FORM_CONFIRMATION,
    }
)


def access_record(entry: ledger_pb2.LedgerEntry) -> exchange_pb2.AccessRecord:
    """What the person is shown of one entry (nothing the entry does not hold)."""
    attributes = entry.attributes
    listed = [t for t in attributes.get("material_types", "").split(",") if t]
    types = listed or ([entry.material_type] if entry.material_type else [])
    assurance = attributes.get("assurance_level", "")
    return exchange_pb2.AccessRecord(
        sequence=entry.sequence,
        time=entry.time,
        actor=entry.actor,
        kind=entry.kind,
        material_type=entry.material_type,
        purpose=entry.purpose,
        outcome=entry.outcome,
        reason=entry.reason,
        material_types=types,
        counterparty=entry.counterparty,
        identity_provider=attributes.get("identity_provider", ""),
        assurance_level=(
            Assurance[assurance].value
            if assurance in Assurance.__members__
            else person_pb2.ASSURANCE_LEVEL_UNSPECIFIED
        ),
        consent_id=attributes.get("consent_id", ""),
    )


async def access_history(
    hub: Hub, caller: Caller, body: exchange_pb2.AccessHistoryRequest
) -> exchange_pb2.AccessHistoryResponse:
    """Who touched the subject's material, when, which types, why, and how it ended.

    Served to a form tool holding the person's subject assertion, or to a supervisor (role
    SUPERVISOR, no assertion needed). The subject id is used only to compute its keyed reference;
    it is not recorded. Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument (missing subject
    id), and the refusals of ``require_person``.
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id.strip() else b""
    with lookups.facts(EntryFacts(subject_ref=subject_ref)) as known:
        lookups.require_role(caller, Role.FORM_TOOL, Role.SUPERVISOR, what="AccessHistory")
        lookups.require_text(body.subject_id.strip(), "subject_id", 128)
        if body.HasField("assertion") or Role.SUPERVISOR not in caller.roles:
            await require_person(hub, caller, body.assertion, body.subject_id, known)
            known.attributes["served_to"] = "person"
        else:
            known.attributes["served_to"] = "supervisor"
        stored = await asyncio.to_thread(hub.ledger.entries_for_subject, subject_ref)
        records = [
            access_record(entry)
            for entry in (item.decode() for item in stored)
            if entry.kind in SUBJECT_KINDS
        ]
        response = exchange_pb2.AccessHistoryResponse(records=records)
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.ACCESS_HISTORY,
            facts=known.copy(records=str(len(records))),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)
