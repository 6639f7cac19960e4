"""Grant flows: the owner issues and revokes grants; owners and consumers list theirs.

The owner's signed envelope of IssueGrant is the grant's signature: it is stored beside the
grant's ledger entry, so anyone can later check that the owner, and only the owner, allowed it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from exchange import errors
from exchange.catalog.model import SharingClass
from exchange.catalog.schema import check_identifier
from exchange.clock import from_timestamp, now_us
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.record import ReadBack, record, with_receipt
from exchange.policy.grants import Grant
from exchange.policy.identity import Caller
from exchange.policy.sharing import check_fields
from exchange.v1 import common_pb2, grants_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

MAX_RATE_PER_MINUTE = 1_000_000


def _invalid(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, message)


async def issue_grant(
    hub: Hub, caller: Caller, body: grants_pb2.IssueGrantRequest
) -> grants_pb2.GrantResponse:
    """Issue a grant for one consumer and one of the caller's material types.

    Raises NotFound (UNKNOWN_MATERIAL_TYPE, UNKNOWN_DEPARTMENT, UNKNOWN_PURPOSE), PermissionDenied
    (NOT_OWNER), FailedPrecondition (MATERIAL_NOT_SHARED: a NOT_SHARED type cannot be granted),
    InvalidArgument (fields, purposes, window).
    """
    given = body.grant
    with lookups.facts(
        EntryFacts(material_type=given.material_type[:128], counterparty=given.consumer[:128])
    ):
        material_type = await lookups.material_type(hub, given.material_type)
        if material_type.owner != caller.department_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, f"only {material_type.owner!r} may grant {material_type.id!r}"
            )
        if material_type.sharing_class is SharingClass.NOT_SHARED:
            raise errors.FailedPrecondition(
                common_pb2.MATERIAL_NOT_SHARED,
                f"{material_type.id!r} is NOT_SHARED and cannot be granted",
            )
        consumer = await lookups.department(hub, given.consumer) if given.consumer else None
        if consumer is None:
            raise errors.NotFound(
                common_pb2.UNKNOWN_DEPARTMENT,
                f"consumer {given.consumer[:128]!r} is not a registered department",
            )
        if not given.fields:
            raise _invalid("grant.fields must name at least one field")
        check_fields(material_type, given.fields)
        if not given.purposes:
            raise _invalid("grant.purposes must name at least one purpose")
        for purpose_id in given.purposes:
            check_identifier(purpose_id, "grant.purposes[]")
            await lookups.purpose(hub, purpose_id)
        now = now_us()
        valid_from = from_timestamp(given.valid_from) if given.HasField("valid_from") else now
        valid_until = from_timestamp(given.valid_until) if given.HasField("valid_until") else None
        if valid_until is not None and valid_until <= valid_from:
            raise _invalid("grant.valid_until must be after grant.valid_from")
        if given.rate_per_minute > MAX_RATE_PER_MINUTE:
            raise _invalid(f"grant.rate_per_minute must be at most {MAX_RATE_PER_MINUTE}")
        grant = Grant(
            id="g-" + uuid.uuid4().hex[:24],
            owner=caller.department_id,
            consumer=consumer.id,
            material_type=material_type.id,
            fields=frozenset(given.fields),
            purposes=frozenset(given.purposes),
            valid_from_us=valid_from,
            valid_until_us=valid_until,
            rate_per_minute=given.rate_per_minute,
            revoked_us=None,
            issued_us=now,
        )
        response = grants_pb2.GrantResponse(grant=grant.to_proto())
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.GRANT_ISSUANCE,
            answer=with_receipt(response),
            effect=lambda conn: hub.grants.add(conn, grant),
            on_commit=lambda: hub.grants.forget(grant),
            facts=EntryFacts(
                material_type=grant.material_type,
                counterparty=grant.consumer,
                attributes={
                    "grant_id": grant.id,
                    "fields": ",".join(sorted(grant.fields)),
                    "purposes": ",".join(sorted(grant.purposes)),
                    "rate_per_minute": str(grant.rate_per_minute),
                },
            ),
        )
    return with_receipt(response)(receipt)


async def revoke_grant(
    hub: Hub, caller: Caller, body: grants_pb2.RevokeGrantRequest
) -> grants_pb2.GrantResponse:
    """Revoke a grant at once (revoking twice keeps the first time). Owner only.

    Raises NotFound (UNKNOWN_GRANT), PermissionDenied (NOT_OWNER).
    """
    with lookups.facts(EntryFacts(attributes={"grant_id": body.grant_id[:64]})) as known:
        lookups.require_text(body.grant_id, "grant_id", 64)
        grant = await asyncio.to_thread(hub.grants.get, body.grant_id)
        if grant is None:
            raise errors.NotFound(
                common_pb2.UNKNOWN_GRANT, f"grant {body.grant_id[:64]!r} is not known"
            )
        known.material_type, known.counterparty = grant.material_type, grant.consumer
        if grant.owner != caller.department_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER, "only the owner that issued a grant may revoke it"
            )
        revoked_us = now_us()
        # Read back in the revocation's transaction: an earlier revocation keeps its time.
        revoke = ReadBack(
            lambda conn: hub.grants.revoke(conn, grant, revoked_us),
            lambda conn: hub.grants.get(grant.id, conn),
        )

        def answered(receipt: common_pb2.Receipt) -> grants_pb2.GrantResponse:
            # The revocation as its transaction read it back (built in that transaction).
            revoked = revoke.value or replace(grant, revoked_us=grant.revoked_us or revoked_us)
            return grants_pb2.GrantResponse(grant=revoked.to_proto(), receipt=receipt)

        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.GRANT_REVOCATION,
            effect=revoke,
            on_commit=partial(hub.grants.forget, grant),
            facts=EntryFacts(
                material_type=grant.material_type,
                counterparty=grant.consumer,
                attributes={"grant_id": grant.id},
            ),
            answer=answered,
        )
    return answered(receipt)


async def list_grants(
    hub: Hub, caller: Caller, body: grants_pb2.ListGrantsRequest
) -> grants_pb2.ListGrantsResponse:
    """Grants the caller owns or holds (every grant for the operator)."""
    found = await asyncio.to_thread(
        hub.grants.visible_to, None if caller.is_operator else caller.department_id
    )
    response = grants_pb2.ListGrantsResponse(grants=[g.to_proto() for g in found])
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "grants"}),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)
