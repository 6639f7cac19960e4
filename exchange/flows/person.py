"""The person in the loop: calls made for a person who authenticated to a form tool or portal.

``require_person`` is the one check every person-bound call makes (Prefill, AccessHistory, a
person's FileObjection, consents, confirmation, a Request under a PERSON_PRESENT purpose): the
identity-provider-signed subject assertion must be about the call's subject and issued to the
caller (exchange.policy.assertions). Its facts (identity provider, assurance level, assertion
hash; never the subject) go into the call's ledger entry whether it is served or refused.

The Person service's flows live here too: giving, listing and revoking consents, and confirming
a completed form. Each is one ledger entry under the person's keyed subject reference.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.message import DecodeError
from sqlalchemy import Connection

from exchange import errors
from exchange.clock import from_timestamp, now_us, to_timestamp
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.record import ReadBack, record, record_change, with_receipt
from exchange.membership import Role
from exchange.policy.assertions import VerifiedAssertion, verify_assertion
from exchange.policy.identity import Caller
from exchange.store.consents import ConsentRecord, Usability
from exchange.store.registry import DepartmentRecord
from exchange.v1 import common_pb2, envelope_pb2, ledger_pb2, person_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

# A consent may be given for at most a year at a time: the person renews it, or it lapses.
MAX_CONSENT_US = 366 * 86_400 * 1_000_000
DAY_US = 86_400 * 1_000_000


def _provider_id(assertion: envelope_pb2.Envelope) -> str:
    """The identity provider an assertion names (unverified: only to look it up)."""
    probe = person_pb2.SubjectAssertion()
    try:
        probe.ParseFromString(assertion.payload)
    except DecodeError:
        return ""
    return probe.identity_provider[:128]


async def require_person(
    hub: Hub,
    caller: Caller,
    assertion: envelope_pb2.Envelope,
    subject_id: str,
    known: EntryFacts,
) -> VerifiedAssertion:
    """Check the person's subject assertion for ``subject_id`` with the caller as audience.

    Records the assertion's facts in ``known.attributes`` (the ledger entry's) either way.
    Raises Unauthenticated (ASSERTION_REQUIRED, ASSERTION_INVALID, ASSERTION_EXPIRED,
    UNKNOWN_IDENTITY_PROVIDER, IDENTITY_PROVIDER_REVOKED) or PermissionDenied
    (ASSERTION_AUDIENCE_MISMATCH, ASSERTION_SUBJECT_MISMATCH).
    """
    provider_id = _provider_id(assertion)
    provider = await lookups.department(hub, provider_id) if provider_id else None

    def lookup(department_id: str) -> DepartmentRecord | None:
        return provider if provider is not None and provider.id == department_id else None

    try:
        verified = verify_assertion(
            assertion,
            audience=caller.department_id,
            subject_id=subject_id,
            now_us=now_us(),
            lookup=lookup,
        )
    except errors.ExchangeError as error:
        known.attributes.update(error.facts.attributes)  # what the refusal says of it
        raise
    known.attributes.update(verified.facts.attributes())
    return verified


class _PersonBody(Protocol):
    """A Person service body: the person's id and their assertion."""

    subject_id: str

    @property
    def assertion(self) -> envelope_pb2.Envelope: ...


async def _for_person(
    hub: Hub, caller: Caller, body: _PersonBody, known: EntryFacts, what: str
) -> VerifiedAssertion:
    """The checks every Person call makes first: the form-tool role, a subject id, and the
    person's assertion (``require_person``). Raises as those do."""
    lookups.require_role(caller, Role.FORM_TOOL, what=what)
    lookups.require_text(body.subject_id, "subject_id", 128)
    return await require_person(hub, caller, body.assertion, body.subject_id, known)


def consent_to_proto(value: ConsentRecord) -> person_pb2.Consent:
    """The contract form of a stored consent."""
    message = person_pb2.Consent(
        id=value.id,
        consumer=value.consumer,
        material_type=value.material_type,
        fields=sorted(value.fields),
        purpose=value.purpose,
        valid_from=to_timestamp(value.valid_from_us),
        valid_until=to_timestamp(value.valid_until_us),
        max_uses=value.max_uses,
        min_interval_seconds=value.min_interval_seconds,
        data_life_days=value.data_life_days,
        uses=value.uses,
        given_at=to_timestamp(value.given_us),
        given_through=value.given_through,
        identity_provider=value.identity_provider,
        assurance_level=person_pb2.AssuranceLevel.Value(value.assurance_level),
    )
    if value.revoked_us is not None:
        message.revoked_at.CopyFrom(to_timestamp(value.revoked_us))
    return message


def _person_facts(hub: Hub, subject_id: str, **attributes: str) -> EntryFacts:
    """The first facts of a Person call's entry: the person's keyed reference (never the id)."""
    subject_ref = hub.content_keys.subject_ref(subject_id) if subject_id else b""
    return EntryFacts(subject_ref=subject_ref, attributes=attributes)


async def give_consent(
    hub: Hub, caller: Caller, body: person_pb2.GiveConsentRequest
) -> person_pb2.ConsentResponse:
    """Store the person's consent, given through the caller with their assertion.

    Raises PermissionDenied (ROLE_REQUIRED), the refusals of ``require_person``,
    InvalidArgument (consumer, fields, validity, limits), NotFound (UNKNOWN_DEPARTMENT for the
    consumer, UNKNOWN_MATERIAL_TYPE, UNKNOWN_PURPOSE).
    """
    wanted = body.consent
    facts = _person_facts(hub, body.subject_id)
    facts.material_type, facts.purpose = wanted.material_type[:128], wanted.purpose[:128]
    with lookups.facts(facts) as known:
        verified = await _for_person(hub, caller, body, known, "GiveConsent")
        lookups.require_text(wanted.consumer, "consent.consumer", 128)
        consumer = await lookups.department(hub, wanted.consumer)
        if consumer is None or Role.CONSUMER not in consumer.roles:
            raise errors.NotFound(
                common_pb2.UNKNOWN_DEPARTMENT,
                f"consent.consumer {wanted.consumer[:128]!r} is not a registered consumer",
            )
        known.counterparty = consumer.id
        material_type = await lookups.material_type(hub, wanted.material_type)
        purpose = await lookups.purpose(hub, wanted.purpose)
        fields = frozenset(wanted.fields)
        unknown = sorted(fields - set(material_type.field_names))
        if not fields or unknown:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD,
                "consent.fields must name at least one field of the material type"
                + (f"; unknown: {', '.join(f[:64] for f in unknown[:5])}" if unknown else ""),
            )
        now = now_us()
        valid_from = from_timestamp(wanted.valid_from) if wanted.HasField("valid_from") else now
        if not wanted.HasField("valid_until"):
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD, "consent.valid_until is required"
            )
        valid_until = from_timestamp(wanted.valid_until)
        if valid_until <= max(valid_from, now) or valid_until - valid_from > MAX_CONSENT_US:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD,
                "consent.valid_until must be in the future, after valid_from, and at most a "
                "year after it",
            )
        assurance = verified.facts.assurance
        assert assurance is not None  # verify_assertion refuses an assertion without one
        consent = ConsentRecord(
            id="c-" + uuid.uuid4().hex[:24],
            subject_ref=known.subject_ref,
            consumer=consumer.id,
            material_type=material_type.id,
            fields=fields,
            purpose=purpose.id,
            valid_from_us=valid_from,
            valid_until_us=valid_until,
            max_uses=wanted.max_uses,
            min_interval_seconds=wanted.min_interval_seconds,
            data_life_days=wanted.data_life_days,
            uses=0,
            last_used_us=None,
            given_us=now,
            revoked_us=None,
            given_through=caller.department_id,
            identity_provider=verified.facts.identity_provider,
            assurance_level=assurance.name,
        )
        known.material_type, known.purpose = material_type.id, purpose.id
        known.attributes["consent_id"] = consent.id
        known.attributes["fields"] = ",".join(sorted(fields))
        give = ReadBack(
            lambda conn: hub.consents.add(conn, consent),
            lambda conn: hub.consents.get(consent.id, conn),
        )
        return await record_change(
            hub.ledger, caller, ledger_pb2.CONSENT_GIVEN, give, _consent_response, known
        )


async def revoke_consent(
    hub: Hub, caller: Caller, body: person_pb2.RevokeConsentRequest
) -> person_pb2.ConsentResponse:
    """Revoke one of the person's consents, with effect at once.

    Raises PermissionDenied (ROLE_REQUIRED), the refusals of ``require_person``, NotFound
    (UNKNOWN_CONSENT: none with this id for this person), FailedPrecondition (CONSENT_REVOKED).
    """
    with lookups.facts(
        _person_facts(hub, body.subject_id, consent_id=body.consent_id[:64])
    ) as known:
        await _for_person(hub, caller, body, known, "RevokeConsent")
        lookups.require_text(body.consent_id, "consent_id", 64)
        found = await asyncio.to_thread(hub.consents.get, body.consent_id)
        # Another person's consent is answered like an unknown one: its existence is theirs.
        if found is None or found.subject_ref != known.subject_ref:
            raise errors.NotFound(
                common_pb2.UNKNOWN_CONSENT, f"consent {body.consent_id[:64]!r} is not known"
            )
        known.material_type, known.purpose = found.material_type, found.purpose
        known.counterparty = found.consumer
        if found.revoked_us is not None:
            raise errors.FailedPrecondition(
                common_pb2.CONSENT_REVOKED, "the consent was already revoked"
            )
        consent_id = found.id
        revoked = now_us()

        def revoke(conn: Connection) -> None:
            if not hub.consents.revoke(conn, consent_id, revoked):
                raise errors.FailedPrecondition(
                    common_pb2.CONSENT_REVOKED, "the consent was revoked meanwhile"
                )

        change = ReadBack(revoke, lambda conn: hub.consents.get(consent_id, conn))
        return await record_change(
            hub.ledger, caller, ledger_pb2.CONSENT_REVOCATION, change, _consent_response, known
        )


async def list_consents(
    hub: Hub, caller: Caller, body: person_pb2.ListConsentsRequest
) -> person_pb2.ListConsentsResponse:
    """Every consent the person gave, in force or not, oldest first.

    Raises PermissionDenied (ROLE_REQUIRED) and the refusals of ``require_person``.
    """
    with lookups.facts(_person_facts(hub, body.subject_id)) as known:
        await _for_person(hub, caller, body, known, "ListConsents")
        found = await asyncio.to_thread(hub.consents.for_subject, known.subject_ref)
        known.attributes["count"] = str(len(found))
        response = person_pb2.ListConsentsResponse(consents=[consent_to_proto(c) for c in found])
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.CONSENT_LISTING,
            facts=known,
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)


def _consent_response(stored: ConsentRecord) -> person_pb2.ConsentResponse:
    """A consent call's answer: the consent as its transaction read it back."""
    return person_pb2.ConsentResponse(consent=consent_to_proto(stored))


async def confirm_form(
    hub: Hub, caller: Caller, body: person_pb2.ConfirmFormRequest
) -> person_pb2.ConfirmFormResponse:
    """Record that the person confirmed a completed form (its salted hash), with their assertion.

    Raises PermissionDenied (ROLE_REQUIRED), the refusals of ``require_person``, NotFound
    (UNKNOWN_FORM), InvalidArgument (completed_sha256 not 32 bytes).
    """
    with lookups.facts(_person_facts(hub, body.subject_id, form=body.form_id[:128])) as known:
        await _for_person(hub, caller, body, known, "ConfirmForm")
        form = await lookups.form(hub, body.form_id)
        known.purpose = form.purpose
        if len(body.completed_sha256) != 32:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD, "completed_sha256 must be 32 bytes"
            )
        said = known.copy(completed_sha256=body.completed_sha256.hex())
        if body.prefill_sequence:
            said.attributes["prefill_sequence"] = str(body.prefill_sequence)
        response = person_pb2.ConfirmFormResponse()
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.FORM_CONFIRMATION,
            facts=said,
            answer=with_receipt(response),
        )
    return with_receipt(response)(receipt)


# ------------------------------------------------------------------ requests for a person


async def consent_for_request(
    hub: Hub,
    caller: Caller,
    subject_ref: bytes,
    material_type: str,
    purpose: str,
    fields: tuple[str, ...],
) -> ConsentRecord:
    """The consent in force that lets ``caller`` request ``fields`` of the type for ``purpose``
    (``fields`` empty: any consent for the type and purpose).

    Raises PermissionDenied (CONSENT_REQUIRED: none given, revoked or outside its validity, or
    none covering the fields) or ResourceExhausted (CONSENT_EXHAUSTED: uses spent or too soon).
    """
    now = now_us()
    found = await asyncio.to_thread(
        hub.consents.candidates, subject_ref, caller.department_id, material_type, purpose
    )
    covering = [c for c in found if set(fields) <= c.fields]
    usable = [c for c in covering if c.usability(now) is Usability.USABLE]
    if usable:
        return usable[0]
    if any(c.usability(now) in (Usability.EXHAUSTED, Usability.TOO_SOON) for c in covering):
        raise errors.ResourceExhausted(
            common_pb2.CONSENT_EXHAUSTED,
            "the person's consent allows no further request now (uses spent or too frequent)",
        )
    raise errors.PermissionDenied(
        common_pb2.CONSENT_REQUIRED,
        f"purpose {purpose!r} rests on the person's consent, and no consent in force lets "
        f"{caller.department_id!r} request these fields of {material_type!r}",
    )


def use_consent(hub: Hub, consent: ConsentRecord) -> Any:
    """The effect counting one use of ``consent`` in the request entry's transaction; it
    raises PermissionDenied (CONSENT_REQUIRED) if the consent was revoked or spent meanwhile."""

    def use(conn: Connection) -> None:
        if not hub.consents.use(conn, consent, now_us()):
            raise errors.PermissionDenied(
                common_pb2.CONSENT_REQUIRED,
                "the person's consent was revoked or spent while the request was served",
            )

    return use


def keep_until_us(consent: ConsentRecord) -> int:
    """Until when the consumer may keep what it got under ``consent`` (its data life)."""
    return now_us() + consent.data_life_days * DAY_US
