"""Check: is material of a type on file for a subject? Reference, version and holder; no
content. Asked before collecting anything from a person (collect once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exchange.flows import lookups
from exchange.flows.record import record
from exchange.policy.identity import Caller
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

CHECK_ROLES = ("CONSUMER", "COLLECTOR", "FORM_TOOL", "PROVIDER")


async def check(
    hub: Hub, caller: Caller, body: exchange_pb2.CheckRequest
) -> exchange_pb2.CheckResponse:
    """Answer whether material is on file; "not on file" is an answer, not a refusal.

    Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument (missing subject or type),
    NotFound (UNKNOWN_MATERIAL_TYPE).
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(material_type=body.material_type[:128], subject_ref=subject_ref):
        lookups.require_role(caller, *CHECK_ROLES, what="Check")
        lookups.require_text(body.subject_id, "subject_id", 128)
        material_type = await lookups.material_type(hub, body.material_type)
        lookups.subject_id(body.subject_id, material_type.subject_id_scheme)
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

        def answered(receipt: common_pb2.Receipt) -> exchange_pb2.CheckResponse:
            response = exchange_pb2.CheckResponse()
            response.CopyFrom(answer)
            response.receipt.CopyFrom(receipt)
            return response

        # The answer is built in the entry's transaction, and stored with it for retries.
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.CHECK,
            subject_ref=subject_ref,
            material_type=material_type.id,
            counterparty=material_type.owner,
            reference=current.reference if current else "",
            version=current.version if current else 0,
            content_hash=current.content_hash if current else b"",
            attributes={"on_file": "true" if current else "false"},
            answer=answered,
        )
    return answered(receipt)
