"""The person in the loop, against a real hub and two real provider adapters on loopback:
subject assertions and every refusal of them, person-bound Prefill / AccessHistory /
FileObjection, source classes, purposes resting on a legal basis, the person's presence or their
consent, consents given, used, spent and revoked, and the confirmation of a completed form."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.client import Refused
from adapters.identity import (
    Assurance,
    DevelopmentIdentityProvider,
    IdentityError,
)
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.v1 import (
    catalog_pb2,
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    grants_pb2,
    ledger_pb2,
    person_pb2,
    registry_pb2,
)
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CARL,
    CIVIL,
    FORM,
    FORM_TOOL,
    HOUSEHOLD,
    IDENTITY,
    MARRIAGE,
    POLICE,
    SOCIAL,
    TOWNSHIP,
    World,
    build,
)
from tests.integration.test_flows import no_personal_data

LOAN = "loan-subsidy"  # rests on the person's consent
COUNTER = "counter-benefit"  # needs the person present
DAY_US = 86_400_000_000


async def refused(coroutine: object) -> Refused:
    with pytest.raises(Refused) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value


def raw_assertion(
    signer: DevelopmentIdentityProvider,
    *,
    subject: str = ANNA,
    audience: str = FORM_TOOL,
    issued_us: int | None = None,
    lifetime_us: int = 300_000_000,
    provider: str | None = None,
    nonce: bytes = b"n" * 16,
    assurance: int = person_pb2.FACE_MATCH,
) -> envelope_pb2.Envelope:
    """An assertion built field by field, to make the ones no honest provider issues."""
    issued = now_us() if issued_us is None else issued_us
    body = person_pb2.SubjectAssertion(
        identity_provider=signer.member_id if provider is None else provider,
        subject_id=subject,
        audience=audience,
        issued_at=to_timestamp(issued),
        expires_at=to_timestamp(issued + lifetime_us),
        assurance_level=assurance,  # type: ignore[arg-type]
        nonce=nonce,
    )
    return sign(body.SerializeToString(), "exchange.v1.SubjectAssertion", signer.signing_key)


async def define_purpose(world: World, purpose: str, basis: int) -> None:
    await world.hub.operator.define_purpose(
        purpose=catalog_pb2.Purpose(
            id=purpose,
            name=purpose,
            legal_basis="demo regulation",
            basis=basis,  # type: ignore[arg-type]
        )
    )


async def grant_marriage(world: World, consumer: str, purposes: tuple[str, ...]) -> None:
    await world.clients[CIVIL].issue_grant(
        grant=grants_pb2.Grant(
            consumer=consumer,
            material_type=MARRIAGE,
            fields=["marital_status", "spouse_name"],
            purposes=list(purposes),
        )
    )


def give(
    world: World,
    *,
    subject: str = ANNA,
    assertion: envelope_pb2.Envelope | None = None,
    fields: tuple[str, ...] = ("marital_status",),
    **limits: int,
) -> Any:
    """The form tool gives ``subject``'s consent for SOCIAL to request marriage records for
    LOAN, valid a day (``limits``: max_uses, min_interval_seconds, data_life_days)."""
    return world.clients[FORM_TOOL].give_consent(
        subject,
        assertion=assertion if assertion is not None else world.assertion(subject),
        consumer=SOCIAL,
        material_type=MARRIAGE,
        fields=list(fields),
        purpose=LOAN,
        valid_until_us=now_us() + DAY_US,
        **limits,
    )


def refusal_entry(world: World, sequence: int | None) -> ledger_pb2.LedgerEntry:
    assert sequence is not None
    entry: ledger_pb2.LedgerEntry = world.ledger_entries()[sequence]
    assert entry.outcome == ledger_pb2.REFUSED
    return entry


# ------------------------------------------------------------------ assertions and Prefill


async def test_prefill_with_the_persons_assertion_records_provider_assurance_and_hash(
    world: World,
) -> None:
    assertion = world.assertion(ANNA, assurance=Assurance.FACE_MATCH)
    answer = await world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=assertion)
    assert answer.values()["full_name"] == "张三 (demo)"
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.PREFILL and entry.outcome == ledger_pb2.OK
    assert entry.attributes["identity_provider"] == IDENTITY
    assert entry.attributes["assurance_level"] == "FACE_MATCH"
    expected = hashlib.sha256(assertion.SerializeToString(deterministic=True)).hexdigest()
    assert entry.attributes["assertion_sha256"] == expected
    assert entry.subject_ref == world.hub.server.hub.content_keys.subject_ref(ANNA)
    # The assertion names the person: neither it nor the subject id is in any stored envelope.
    no_personal_data(world)


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("missing", grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_REQUIRED"),
        ("expired", grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_EXPIRED"),
        ("too long", grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_EXPIRED"),
        ("other audience", grpc.StatusCode.PERMISSION_DENIED, "ASSERTION_AUDIENCE_MISMATCH"),
        ("other subject", grpc.StatusCode.PERMISSION_DENIED, "ASSERTION_SUBJECT_MISMATCH"),
        ("not a provider", grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_IDENTITY_PROVIDER"),
        ("unregistered", grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_IDENTITY_PROVIDER"),
        ("forged", grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_INVALID"),
        ("short nonce", grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_INVALID"),
    ],
)
async def test_prefill_refuses_each_bad_assertion_with_its_reason_and_entry(
    world: World, case: str, code: grpc.StatusCode, reason: str
) -> None:
    idp = world.identity
    assert idp is not None
    social = DevelopmentIdentityProvider(SOCIAL, world.hub.keystore.department_signing_key(SOCIAL))
    long_ago = now_us() - 20 * 60_000_000
    assertion = {
        "missing": envelope_pb2.Envelope(),
        "expired": world.assertion(ANNA, issued_us=long_ago, lifetime_seconds=300),
        "too long": raw_assertion(idp, lifetime_us=11 * 60_000_000),
        "other audience": world.assertion(ANNA, audience=TOWNSHIP),
        "other subject": world.assertion(BEN),
        "not a provider": raw_assertion(social),
        "unregistered": raw_assertion(idp, provider="js.no-such-platform"),
        "forged": raw_assertion(idp),
        "short nonce": raw_assertion(idp, nonce=b"short"),
    }[case]
    if case == "forged":  # a valid signature over other bytes
        assertion.payload = assertion.payload + b"\x00"
    error = await refused(world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=assertion))
    assert (error.code, error.reason) == (code, reason)
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.kind == ledger_pb2.PREFILL and entry.purpose == ASSISTANCE
    assert common_pb2.Reason.Name(entry.reason) == reason
    assert entry.subject_ref == world.hub.server.hub.content_keys.subject_ref(ANNA)
    if case != "missing":
        assert len(bytes.fromhex(entry.attributes["assertion_sha256"])) == 32
    if case in ("expired", "other audience", "other subject"):
        assert entry.attributes["identity_provider"] == IDENTITY
    assert not world.spies[POLICE].fetches  # nothing was read for a refused prefill
    no_personal_data(world)


async def test_an_identity_provider_suspended_or_its_key_revoked_is_refused(world: World) -> None:
    assertion = world.assertion(ANNA)
    await world.hub.operator.set_state(
        department_id=IDENTITY, state=registry_pb2.SUSPENDED, reason="audit"
    )
    error = await refused(world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=assertion))
    assert (error.code, error.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "IDENTITY_PROVIDER_REVOKED",
    )
    assert refusal_entry(world, error.ledger_sequence).attributes["identity_provider"] == IDENTITY


async def test_an_honest_provider_will_not_issue_a_long_lived_assertion(world: World) -> None:
    assert world.identity is not None
    with pytest.raises(IdentityError):
        world.identity.issue(ANNA, FORM_TOOL, Assurance.PASSWORD_SMS, lifetime_seconds=601)


# ------------------------------------------------------------------ sources and withheld


async def test_prefilled_values_say_whether_authoritative_or_person_provided(
    world: World,
) -> None:
    await grant_marriage(world, TOWNSHIP, (ASSISTANCE,))
    fields = {"marital_status": "married", "spouse_name": "赵六 (demo)"}
    stored = await world.clients[TOWNSHIP].submit(MARRIAGE, BEN, fields)
    assert stored.outcome == "STORED"
    answer = await world.clients[FORM_TOOL].prefill(FORM, BEN, assertion=world.assertion(BEN))
    by_name = {f.name: f for f in answer.fields}
    assert by_name["marital_status"].source_class == "PERSON_PROVIDED"
    assert by_name["marital_status"].submitted_by == TOWNSHIP
    assert by_name["marital_status"].holder == CIVIL  # holder, reference, version as before
    assert by_name["marital_status"].reference == stored.reference
    assert by_name["full_name"].source_class == "AUTHORITATIVE"
    assert by_name["full_name"].submitted_by == POLICE


async def test_withheld_only_when_material_is_on_file(world: World) -> None:
    # No grant for marriage records to the form tool: ANNA has one on file (withheld), CARL has
    # nothing on file (missing, not "on file, not granted").
    anna = await world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=world.assertion(ANNA))
    assert anna.withheld == ("marital_status",)
    carl = await world.clients[FORM_TOOL].prefill(FORM, CARL, assertion=world.assertion(CARL))
    assert carl.withheld == ()
    assert "marital_status" in carl.missing
    assert not any(f[0] == MARRIAGE for f in world.spies[CIVIL].fetches)


# ------------------------------------------------------------------ the person's history


async def test_history_shows_every_access_with_types_read_and_refusals(world: World) -> None:
    await grant_marriage(world, TOWNSHIP, (ASSISTANCE,))
    # A department request under a legal basis, a refused one, and a prefill for the person.
    await world.clients[SOCIAL].request(HOUSEHOLD, ANNA, purpose=ASSISTANCE)
    await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    await world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=world.assertion(ANNA))
    history = await world.clients[FORM_TOOL].access_history(ANNA, assertion=world.assertion(ANNA))
    served = next(a for a in history if a.kind == "REQUEST" and a.outcome == "OK")
    assert (served.actor, served.purpose, served.material_types) == (
        SOCIAL,
        ASSISTANCE,
        (HOUSEHOLD,),
    )
    assert served.counterparty == POLICE and served.identity_provider == ""
    denied = next(a for a in history if a.kind == "REQUEST" and a.outcome == "REFUSED")
    assert denied.reason == "NO_GRANT" and denied.material_types == (MARRIAGE,)
    prefill = next(a for a in history if a.kind == "PREFILL")
    assert prefill.material_types == (HOUSEHOLD, MARRIAGE)  # every type read
    assert (prefill.identity_provider, prefill.assurance_level) == (IDENTITY, "ID_CARD_AT_COUNTER")
    assert prefill.purpose == ASSISTANCE
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.ACCESS_HISTORY and entry.attributes["served_to"] == "person"
    no_personal_data(world)


async def test_history_needs_the_persons_assertion_or_a_supervisor(world: World) -> None:
    form_tool = world.clients[FORM_TOOL]
    error = await refused(form_tool.access_history(ANNA))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ASSERTION_REQUIRED")
    assert refusal_entry(world, error.ledger_sequence).kind == ledger_pb2.ACCESS_HISTORY
    error = await refused(form_tool.access_history(ANNA, assertion=world.assertion(BEN)))
    assert error.reason == "ASSERTION_SUBJECT_MISMATCH"
    supervisor_id = "js.supervision"
    supervisor = await world.hub.register(supervisor_id, (common_pb2.SUPERVISOR,))
    history = await supervisor.access_history(ANNA)
    # The refused attempts above are in the history the supervisor reads.
    assert [a.reason for a in history if a.kind == "ACCESS_HISTORY"] == [
        "ASSERTION_REQUIRED",
        "ASSERTION_SUBJECT_MISMATCH",
    ]
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.ACCESS_HISTORY and entry.actor == supervisor_id
    assert entry.attributes["served_to"] == "supervisor"


# ------------------------------------------------------------------ objections


async def test_a_persons_objection_needs_their_assertion_a_consumers_does_not(
    world: World,
) -> None:
    error = await refused(
        world.clients[FORM_TOOL].file_objection(MARRIAGE, ANNA, "the marriage was dissolved")
    )
    assert error.reason == "ASSERTION_REQUIRED"
    assert refusal_entry(world, error.ledger_sequence).kind == ledger_pb2.OBJECTION_FILING
    filed = await world.clients[FORM_TOOL].file_objection(
        MARRIAGE,
        ANNA,
        "the marriage was dissolved",
        proposed_fields={"marital_status": "divorced"},
        assertion=world.assertion(ANNA),
    )
    assert filed.state == "OPEN" and filed.owner == CIVIL
    assert world.last_entry().attributes["identity_provider"] == IDENTITY
    own = await world.clients[TOWNSHIP].file_objection(MARRIAGE, ANNA, "our record differs")
    assert own.state == "OPEN"
    no_personal_data(world)


# ------------------------------------------------------------------ purposes and consent


async def test_a_person_present_purpose_needs_the_persons_assertion(world: World) -> None:
    await define_purpose(world, COUNTER, catalog_pb2.PERSON_PRESENT)
    social = world.clients[SOCIAL]
    error = await refused(social.request(HOUSEHOLD, ANNA, purpose=COUNTER))
    assert error.reason == "ASSERTION_REQUIRED"
    assert refusal_entry(world, error.ledger_sequence).kind == ledger_pb2.REQUEST
    material = await social.request(
        HOUSEHOLD, ANNA, purpose=COUNTER, assertion=world.assertion(ANNA, audience=SOCIAL)
    )
    assert material.fields["name"] == "张三 (demo)"
    assert world.last_entry().attributes["assurance_level"] == "ID_CARD_AT_COUNTER"


async def test_consent_given_used_spent_revoked_each_on_record(world: World) -> None:
    await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
    await grant_marriage(world, SOCIAL, (LOAN, ASSISTANCE))
    social, form_tool = world.clients[SOCIAL], world.clients[FORM_TOOL]
    # A legal-basis request under the same grant works as before, without any consent.
    legal = await social.request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert legal.consent_id == "" and legal.keep_until_us is None
    error = await refused(social.request(MARRIAGE, ANNA, purpose=LOAN))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CONSENT_REQUIRED")

    consent = await give(world, max_uses=1, data_life_days=7)
    assert consent.id.startswith("c-") and consent.uses == 0 and consent.revoked_us is None
    assert (consent.given_through, consent.identity_provider) == (FORM_TOOL, IDENTITY)
    given = world.last_entry()
    assert given.kind == ledger_pb2.CONSENT_GIVEN and given.attributes["consent_id"] == consent.id
    assert given.counterparty == SOCIAL

    # Served under the consent: only the consented field, with its data life.
    material = await social.request(MARRIAGE, ANNA, purpose=LOAN)
    assert material.fields == {"marital_status": "married"}
    assert material.consent_id == consent.id
    assert material.keep_until_us is not None and material.keep_until_us > now_us() + 6 * DAY_US
    used = world.last_entry()
    assert used.kind == ledger_pb2.REQUEST and used.attributes["consent_id"] == consent.id
    # A field outside the consent is not served under it.
    error = await refused(social.request(MARRIAGE, ANNA, purpose=LOAN, fields=["spouse_name"]))
    assert error.reason == "CONSENT_REQUIRED"
    # One use only: the next is refused as spent.
    error = await refused(social.request(MARRIAGE, ANNA, purpose=LOAN))
    assert (error.code, error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CONSENT_EXHAUSTED",
    )

    listed = await form_tool.list_consents(ANNA, assertion=world.assertion(ANNA))
    assert [(c.id, c.uses) for c in listed] == [(consent.id, 1)]
    assert world.last_entry().kind == ledger_pb2.CONSENT_LISTING

    revoked = await form_tool.revoke_consent(ANNA, consent.id, assertion=world.assertion(ANNA))
    assert revoked.revoked_us is not None
    assert world.last_entry().kind == ledger_pb2.CONSENT_REVOCATION
    error = await refused(
        form_tool.revoke_consent(ANNA, consent.id, assertion=world.assertion(ANNA))
    )
    assert error.reason == "CONSENT_REVOKED"
    no_personal_data(world)


async def test_a_consents_frequency_limits_its_uses(world: World) -> None:
    await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
    await grant_marriage(world, SOCIAL, (LOAN,))
    await give(world, max_uses=0, min_interval_seconds=3600)
    assert (await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN)).fields
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN))
    assert error.reason == "CONSENT_EXHAUSTED"
    # Another consumer has no consent at all.
    await grant_marriage(world, TOWNSHIP, (LOAN,))
    error = await refused(world.clients[TOWNSHIP].request(MARRIAGE, ANNA, purpose=LOAN))
    assert error.reason == "CONSENT_REQUIRED"


async def test_revocation_takes_effect_at_once(world: World) -> None:
    await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
    await grant_marriage(world, SOCIAL, (LOAN,))
    form_tool = world.clients[FORM_TOOL]
    consent = await give(world, fields=("marital_status", "spouse_name"))
    assert (await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN)).fields
    await form_tool.revoke_consent(ANNA, consent.id, assertion=world.assertion(ANNA))
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN))
    assert error.reason == "CONSENT_REQUIRED"
    history = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    consent_rows = [(a.kind, a.outcome, a.consent_id) for a in history if a.consent_id]
    assert consent_rows[:3] == [
        ("CONSENT_GIVEN", "OK", consent.id),
        ("REQUEST", "OK", consent.id),
        ("CONSENT_REVOCATION", "OK", consent.id),
    ]
    assert any(a.reason == "CONSENT_REQUIRED" for a in history)


async def test_consents_are_the_persons_own(world: World) -> None:
    await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
    form_tool = world.clients[FORM_TOOL]
    consent = await give(world)
    error = await refused(form_tool.revoke_consent(BEN, consent.id, assertion=world.assertion(BEN)))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_CONSENT")
    assert await form_tool.list_consents(BEN, assertion=world.assertion(BEN)) == ()
    # Giving one needs the person: not a form tool alone, and not for a field the type lacks.
    error = await refused(give(world, assertion=world.assertion(BEN)))
    assert error.reason == "ASSERTION_SUBJECT_MISMATCH"
    assert refusal_entry(world, error.ledger_sequence).kind == ledger_pb2.CONSENT_GIVEN
    error = await refused(give(world, fields=("shoe_size",)))
    assert error.reason == "INVALID_ARGUMENT_FIELD"


# ------------------------------------------------------------------ confirmation


async def test_the_persons_confirmation_of_the_completed_form_is_recorded(world: World) -> None:
    form_tool = world.clients[FORM_TOOL]
    preview = await form_tool.prefill(FORM, BEN, assertion=world.assertion(BEN))
    completed = {**preview.values(), "address": "新地址 (demo)", "bank_account": "6222 (demo)"}
    done = await form_tool.confirm_form(
        BEN,
        FORM,
        completed,
        assertion=world.assertion(BEN),
        prefill_sequence=preview.receipt.sequence,
    )
    entry = world.ledger_entries()[done.receipt.sequence]
    assert entry.kind == ledger_pb2.FORM_CONFIRMATION and entry.purpose == ASSISTANCE
    assert entry.attributes["completed_sha256"] == done.completed_sha256.hex()
    assert entry.attributes["prefill_sequence"] == str(preview.receipt.sequence)
    assert entry.attributes["identity_provider"] == IDENTITY
    error = await refused(
        form_tool.confirm_form(BEN, FORM, completed, assertion=world.assertion(ANNA))
    )
    assert error.reason == "ASSERTION_SUBJECT_MISMATCH"
    no_personal_data(world)
    for value in ("新地址", "6222"):  # the completed values never reach the hub
        assert all(value.encode() not in e.envelope_bytes for e in _stored(world))


def _stored(world: World) -> list[object]:
    ledger = world.hub.server.hub.ledger
    return list(ledger.entries(0, ledger.size()))


async def test_prefill_request_history_carry_the_assertion_only_in_the_disclosure(
    world: World,
) -> None:
    """The signed payload of a person-bound call holds no assertion: it would be stored."""
    client = world.clients[FORM_TOOL]
    body = exchange_pb2.PrefillRequest(
        form_id=FORM, subject_id=ANNA, assertion=world.assertion(ANNA)
    )
    envelope = client.envelope(body)
    signed = exchange_pb2.PrefillRequest.FromString(envelope.payload)
    assert not signed.HasField("assertion") and not signed.subject_id
    disclosed = exchange_pb2.PrefillRequest.FromString(envelope.disclosure)
    assert disclosed.HasField("assertion") and disclosed.subject_id == ANNA


async def test_consent_and_assertions_on_postgresql(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    """The same person-bound flows on PostgreSQL (the migration's consents table, the use
    counted by a conditional update in the request's transaction)."""
    hub = await start_hub(postgres_url)
    world = await build(hub, tmp_path)
    try:
        await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
        await grant_marriage(world, SOCIAL, (LOAN,))
        form_tool = world.clients[FORM_TOOL]
        prefill = await form_tool.prefill(FORM, ANNA, assertion=world.assertion(ANNA))
        assert prefill.values()["full_name"] == "张三 (demo)"
        consent = await give(world, max_uses=1)
        served = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN)
        assert served.consent_id == consent.id
        error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=LOAN))
        assert error.reason == "CONSENT_EXHAUSTED"
        await form_tool.revoke_consent(ANNA, consent.id, assertion=world.assertion(ANNA))
        listed = await form_tool.list_consents(ANNA, assertion=world.assertion(ANNA))
        assert [(c.uses, c.revoked_us is not None) for c in listed] == [(1, True)]
        no_personal_data(world)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
