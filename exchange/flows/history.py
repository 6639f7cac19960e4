"""Access history: every ledger entry that touched a subject's material, for that person."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from exchange import errors
from exchange.flows import lookups
from exchange.flows.record import record
from exchange.policy.identity import Caller
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

# Kinds that are about a subject's material (reads of the history itself are included too, so
# the person sees who looked at who looked).
SUBJECT_KINDS = frozenset(
    {
        ledger_pb2.CHECK,
        ledger_pb2.SUBMIT,
        ledger_pb2.REQUEST,
        ledger_pb2.PREFILL,
        ledger_pb2.ACCESS_HISTORY,
        ledger_pb2.OBJECTION_FILING,
        ledger_pb2.OBJECTION_RESOLUTION,
    }
)


async def access_history(
    hub: Hub, caller: Caller, body: exchange_pb2.AccessHistoryRequest
) -> exchange_pb2.AccessHistoryResponse:
    """Who touched the subject's material, when, which type, why, and how it ended.

    Served to form tools acting for the person (role FORM_TOOL). The subject id is used only to
    compute its keyed reference; it is not recorded. Raises PermissionDenied (ROLE_REQUIRED),
    InvalidArgument (missing subject id).
    """
    if "FORM_TOOL" not in caller.roles:
        raise errors.PermissionDenied(
            common_pb2.ROLE_REQUIRED, "access history is served to form tools acting for a person"
        )
    lookups.subject_id(body.subject_id)
    subject_ref = hub.content_keys.subject_ref(body.subject_id)
    stored = await asyncio.to_thread(hub.ledger.entries_for_subject, subject_ref)
    records = []
    for item in stored:
        entry = item.decode()
        if entry.kind not in SUBJECT_KINDS:
            continue
        records.append(
            exchange_pb2.AccessRecord(
                sequence=entry.sequence,
                time=entry.time,
                actor=entry.actor,
                kind=entry.kind,
                material_type=entry.material_type,
                purpose=entry.purpose,
                outcome=entry.outcome,
                reason=entry.reason,
            )
        )
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.ACCESS_HISTORY,
        subject_ref=subject_ref,
        attributes={"records": str(len(records))},
    )
    return exchange_pb2.AccessHistoryResponse(records=records, receipt=receipt)
