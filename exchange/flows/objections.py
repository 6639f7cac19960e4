"""Objections and corrections: a person (through a form tool) or a consumer objects to a
material; its owner corrects it (a new version on file) or rejects the objection with a reason.

Every step is a ledger entry. Filing records the deadline (``deadline_us``) so supervision can
raise alerts when the owner has not answered in time. A correction is made the way every
version is made — the owner submits the corrected material (NEW_VERSION) — and resolving the
objection as CORRECTED then checks that a version newer than the one objected to is on file.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from exchange import errors
from exchange.catalog.schema import canonical_fields
from exchange.clock import now_us, to_timestamp
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.person import require_person
from exchange.flows.record import ReadBack, record, record_change, with_receipt
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.policy.roles import person_facing
from exchange.store.objections import ObjectionRecord
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

DAY_US = 86_400 * 1_000_000
FILE_ROLES = (Role.FORM_TOOL, Role.CONSUMER)
STATES = {exchange_pb2.CORRECTED: "CORRECTED", exchange_pb2.REJECTED: "REJECTED"}


def to_proto(objection: ObjectionRecord) -> exchange_pb2.Objection:
    """The contract form of a stored objection."""
    return exchange_pb2.Objection(
        id=objection.id,
        material_type=objection.material_type,
        reference=objection.reference,
        filed_by=objection.filed_by,
        reason=objection.reason,
        proposed_fields=objection.proposed_fields,
        state=exchange_pb2.ObjectionState.Value(objection.state),
        filed_at=to_timestamp(objection.filed_us),
        deadline=to_timestamp(objection.deadline_us),
        resolution=objection.resolution,
        owner=objection.owner,
    )


async def file_objection(
    hub: Hub, caller: Caller, body: exchange_pb2.FileObjectionRequest
) -> exchange_pb2.ObjectionResponse:
    """File an objection against the current version of a material.

    A person's objection (filed by a form tool, whatever other roles it holds, or by anyone
    with an assertion) needs the person's subject assertion (exchange.flows.person); a consumer
    that is not a form tool, objecting on its own account, files without one.

    Raises PermissionDenied (ROLE_REQUIRED: form tools and consumers), the refusals of
    ``require_person``, InvalidArgument
    (missing subject or reason, proposed fields outside the schema), NotFound
    (UNKNOWN_MATERIAL_TYPE, NOT_ON_FILE).
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(
        EntryFacts(material_type=body.material_type[:128], subject_ref=subject_ref)
    ) as known:
        lookups.require_role(caller, *FILE_ROLES, what="FileObjection")
        lookups.require_text(body.subject_id, "subject_id", 128)
        # A form tool files for a person, even one that is also a consumer (a refusal of
        # NOT_ON_FILE would otherwise tell it about a person who never authenticated to it).
        if body.HasField("assertion") or person_facing(caller) or Role.CONSUMER not in caller.roles:
            await require_person(hub, caller, body.assertion, body.subject_id, known)
        reason = lookups.require_text(body.reason.strip(), "reason", 2000)
        material_type = await lookups.material_type(hub, body.material_type)
        lookups.subject_id(body.subject_id, material_type.subject_id_scheme)
        known.counterparty = material_type.owner
        proposed = (
            canonical_fields(material_type, body.proposed_fields, complete=False)
            if body.proposed_fields
            else {}
        )
        current = await lookups.indexed(hub, material_type.id, subject_ref)
        if current is None:
            raise errors.NotFound(
                common_pb2.NOT_ON_FILE,
                f"no {material_type.id!r} is on file for this subject: nothing to object to",
            )
        filed = now_us()
        proposal = ObjectionRecord(
            id="o-" + uuid.uuid4().hex[:24],
            material_type=material_type.id,
            reference=current.reference,
            subject_ref=subject_ref,
            filed_by=caller.department_id,
            owner=material_type.owner,
            reason=reason,
            proposed_fields=proposed,
            filed_us=filed,
            deadline_us=filed + hub.config.supervision.objection_deadline_days * DAY_US,
        )
        file = ReadBack(
            lambda conn: hub.index.add_proposal(conn, proposal),
            lambda conn: hub.objections.get(proposal.id, conn),
        )
        said = known.copy(objection_id=proposal.id, deadline_us=str(proposal.deadline_us))
        said.reference, said.version = current.reference, current.version
        return await record_change(
            hub.ledger, caller, ledger_pb2.OBJECTION_FILING, file, _objection_response, said
        )


async def list_objections(
    hub: Hub, caller: Caller, body: exchange_pb2.ListObjectionsRequest
) -> exchange_pb2.ListObjectionsResponse:
    """Objections against the caller's material (as owner), oldest first."""
    found = await asyncio.to_thread(hub.objections.for_owner, caller.department_id, body.open_only)
    response = exchange_pb2.ListObjectionsResponse(objections=[to_proto(o) for o in found])
    # The answer kept for a retry holds proposed values: CallClaim seals it (this call carries
    # no disclosure, so under the hub's at-rest key), in the entry's transaction.
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "objections", "count": str(len(found))}),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)


async def resolve_objection(
    hub: Hub, caller: Caller, body: exchange_pb2.ResolveObjectionRequest
) -> exchange_pb2.ObjectionResponse:
    """Resolve an objection as CORRECTED (a newer version is on file) or REJECTED (with a reason).

    Raises NotFound (UNKNOWN_OBJECTION), PermissionDenied (NOT_OWNER), InvalidArgument (no
    state, or REJECTED without a resolution), FailedPrecondition (ALREADY_RESOLVED, or
    CORRECTION_NOT_ON_FILE when no newer version was submitted).
    """
    with lookups.facts(EntryFacts(attributes={"objection_id": body.objection_id[:64]})) as known:
        lookups.require_text(body.objection_id, "objection_id", 64)
        objection = await asyncio.to_thread(hub.objections.get, body.objection_id)
        if objection is None:
            raise errors.NotFound(
                common_pb2.UNKNOWN_OBJECTION, f"objection {body.objection_id[:64]!r} is not known"
            )
        known.material_type, known.subject_ref = objection.material_type, objection.subject_ref
        known.reference, known.counterparty = objection.reference, objection.filed_by
        if caller.department_id != objection.owner:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, "only the owner of the material may resolve its objections"
            )
        if body.state not in STATES:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD, "state must be CORRECTED or REJECTED"
            )
        if objection.state != "OPEN":
            raise errors.FailedPrecondition(
                common_pb2.ALREADY_RESOLVED, f"the objection was already {objection.state.lower()}"
            )
        resolution = body.resolution.strip()[:2000]
        if resolution:
            lookups.require_text(resolution, "resolution", 2000)
        if body.state == exchange_pb2.REJECTED and not resolution:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD, "a rejection needs a resolution (the reason)"
            )
        version = 0
        if body.state == exchange_pb2.CORRECTED:
            current = await lookups.indexed(hub, objection.material_type, objection.subject_ref)
            if current is None or current.reference == objection.reference:
                raise errors.FailedPrecondition(
                    common_pb2.CORRECTION_NOT_ON_FILE,
                    "submit the corrected material first (a new version), then resolve",
                )
            version = current.version
            resolution = resolution or f"corrected: version {current.version} is on file"
        state = STATES[body.state]
        resolved_us = now_us()
        objection_id = objection.id

        def resolve_open(conn: Connection) -> None:
            if not hub.objections.resolve(conn, objection_id, state, resolution, resolved_us):
                raise errors.FailedPrecondition(
                    common_pb2.ALREADY_RESOLVED, "the objection was resolved meanwhile"
                )

        resolve = ReadBack(resolve_open, lambda conn: hub.objections.get(objection_id, conn))
        said = known.copy(state=state)
        said.version = version
        return await record_change(
            hub.ledger, caller, ledger_pb2.OBJECTION_RESOLUTION, resolve, _objection_response, said
        )


def _objection_response(stored: ObjectionRecord) -> exchange_pb2.ObjectionResponse:
    """An objection's answer: the objection as its transaction read it back."""
    return exchange_pb2.ObjectionResponse(objection=to_proto(stored))
