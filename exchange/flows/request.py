"""Request: a consumer gets material from its holder, within what it was granted.

Checked in order: consumer role, material type, purpose catalogued, sharing class, fields,
grant (in force, purpose, fields), what the purpose's basis needs of the person (nothing for a
legal basis; their subject assertion for PERSON_PRESENT; a consent in force for PERSON_CONSENT,
which also narrows the fields to those consented), rate, on file. Then the hub forwards a hub-signed
FetchRequest naming only the permitted fields to the owner's adapter, checks the owner-signed
answer against its index, and returns that envelope unchanged. Every outcome is one entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exchange import errors
from exchange.catalog.model import PurposeBasis, SharingClass
from exchange.clock import now_us, to_timestamp
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.material import fetch_checked
from exchange.flows.person import consent_for_request, keep_until_us, require_person, use_consent
from exchange.flows.record import record, with_receipt
from exchange.flows.validity import Share
from exchange.membership import Role
from exchange.policy.grants import Grant
from exchange.policy.identity import Caller
from exchange.policy.sharing import Permit, permit
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub


async def grants_for(hub: Hub, consumers: tuple[str, ...], material_type: str) -> list[Grant]:
    """Every grant (any state) held by any of ``consumers`` for ``material_type``."""
    found: list[Grant] = []
    for consumer in consumers:
        found.extend(await hub.grants.by_pair.read((consumer, material_type)))
    return found


def take_rate(hub: Hub, grant: Grant | None) -> None:
    """Spend one request of the grant's rate. Raises ResourceExhausted (RATE_LIMITED)."""
    if grant is None or grant.rate_per_minute <= 0:
        return
    wait = hub.rates.take(grant.id, grant.rate_per_minute)
    if wait > 0:
        raise errors.ResourceExhausted(
            common_pb2.RATE_LIMITED,
            f"grant {grant.id} allows {grant.rate_per_minute} requests per minute; retry in "
            f"{wait:.1f} s",
            retry_after=wait,
        )


async def request(
    hub: Hub, caller: Caller, body: exchange_pb2.MaterialRequest
) -> exchange_pb2.MaterialResponse:
    """Deliver the permitted fields of a material in its holder's signed envelope.

    Raises PermissionDenied (ROLE_REQUIRED, MATERIAL_NOT_SHARED, NO_GRANT, GRANT_REVOKED,
    GRANT_EXPIRED, PURPOSE_NOT_GRANTED, FIELD_NOT_GRANTED), InvalidArgument, NotFound
    (UNKNOWN_MATERIAL_TYPE, UNKNOWN_PURPOSE, NOT_ON_FILE), ResourceExhausted (RATE_LIMITED),
    Unavailable (PROVIDER_UNAVAILABLE), DeadlineExceeded (PROVIDER_TIMEOUT), FailedPrecondition
    (CONTENT_MISMATCH).
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(
        EntryFacts(
            material_type=body.material_type[:128],
            subject_ref=subject_ref,
            purpose=body.purpose[:128],
        )
    ) as known:
        lookups.require_role(caller, Role.CONSUMER, what="Request")
        lookups.require_text(body.subject_id, "subject_id", 128)
        material_type = await lookups.material_type(hub, body.material_type)
        subject_id = lookups.subject_id(body.subject_id, material_type.subject_id_scheme)
        known.counterparty = material_type.owner
        attributes = known.attributes
        attributes["sharing_class"] = material_type.sharing_class.name
        purpose = await lookups.purpose(hub, body.purpose)
        grants = (
            await grants_for(hub, (caller.department_id,), material_type.id)
            if material_type.sharing_class is SharingClass.CONDITIONAL
            else []
        )
        allowed = permit(material_type, grants, list(body.fields), body.purpose, now_us())
        attributes["fields"] = ",".join(allowed.fields)
        if allowed.grant is not None:
            attributes["grant_id"] = allowed.grant.id
        consent = None
        if purpose.basis is PurposeBasis.PERSON_PRESENT:
            await require_person(hub, caller, body.assertion, body.subject_id, known)
        elif purpose.basis is PurposeBasis.PERSON_CONSENT:
            consent = await consent_for_request(
                hub, caller, subject_ref, material_type.id, purpose.id, tuple(body.fields)
            )
            attributes["consent_id"] = consent.id
            narrowed = tuple(f for f in allowed.fields if f in consent.fields)
            if not narrowed:
                raise errors.PermissionDenied(
                    common_pb2.CONSENT_REQUIRED,
                    "the person's consent covers none of the fields the grant allows",
                )
            allowed = Permit(narrowed, allowed.grant)
            attributes["fields"] = ",".join(narrowed)
        take_rate(hub, allowed.grant)
        current = await lookups.indexed(hub, material_type.id, subject_ref)
        if current is None:
            raise errors.NotFound(
                common_pb2.NOT_ON_FILE, f"no {material_type.id!r} is on file for this subject"
            )
        known.reference, known.version = current.reference, current.version
        known.content_hash, known.counterparty = current.content_hash, current.holder
        holder = await lookups.holder(hub, current.holder)
        # No entry, no access: the holder is not asked while the ledger cannot commit.
        await hub.ledger.ensure_writable()

        def timed(ms: float) -> None:
            attributes["provider_latency_ms"] = f"{ms:.1f}"

        material, _ = await fetch_checked(
            hub,
            holder,
            current,
            material_type,
            subject_id,
            allowed.fields,
            caller=caller.department_id,
            request_id=caller.request_id,
            kind="fetch",
            purpose=body.purpose,
            timed=timed,
        )
        response = exchange_pb2.MaterialResponse(material=material)
        if consent is not None:
            response.consent_id = consent.id
            response.keep_until.CopyFrom(to_timestamp(keep_until_us(consent)))
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.REQUEST,
            effect=None if consent is None else use_consent(hub, consent),
            facts=known,
            shares=(Share(material_type.id, allowed.grant.id if allowed.grant else None),),
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)
