"""Every person-bound call refuses every kind of bad subject assertion with its precise reason and
its own ledger entry, against a real hub and two real provider adapters on loopback; and Check,
made by a form tool, tells nothing about a person who has not authenticated to it except what a
granted legal-basis purpose allows, while departments check on their own account as before; nor
does Submit, whose outcome ("already on file") would tell the same."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from adapters.client import Refused
from adapters.identity import DevelopmentIdentityProvider
from exchange.clock import now_us
from exchange.v1 import catalog_pb2, common_pb2, envelope_pb2, ledger_pb2
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CARL,
    CIVIL,
    CRIMINAL,
    FORM,
    FORM_TOOL,
    HOUSEHOLD,
    IDENTITY,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
)
from tests.integration.test_flows import no_personal_data
from tests.integration.test_person import (
    COUNTER,
    DAY_US,
    LOAN,
    define_purpose,
    grant_marriage,
    raw_assertion,
    refusal_entry,
    refused,
)

Call = Callable[[World, envelope_pb2.Envelope], Awaitable[object]]

# ANNA's marriage record as it is on file.
ANNA_MARRIAGE = {
    "marital_status": "married",
    "spouse_name": "李四 (demo)",
    "registered_on": "2018-05-20",
}

# Each person-bound call: who makes it, the call with a given assertion, and its entry's kind.
CALLS: dict[str, tuple[str, Call, int]] = {
    "Check": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].check(MARRIAGE, ANNA, assertion=a),
        ledger_pb2.CHECK,
    ),
    "Submit": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].submit(MARRIAGE, ANNA, ANNA_MARRIAGE, assertion=a),
        ledger_pb2.SUBMIT,
    ),
    "Prefill": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=a),
        ledger_pb2.PREFILL,
    ),
    "AccessHistory": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].access_history(ANNA, assertion=a),
        ledger_pb2.ACCESS_HISTORY,
    ),
    "FileObjection": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].file_objection(
            MARRIAGE, ANNA, "the marriage was dissolved", assertion=a
        ),
        ledger_pb2.OBJECTION_FILING,
    ),
    "Request (person present)": (
        SOCIAL,
        lambda w, a: w.clients[SOCIAL].request(HOUSEHOLD, ANNA, purpose=COUNTER, assertion=a),
        ledger_pb2.REQUEST,
    ),
    "GiveConsent": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].give_consent(
            ANNA,
            assertion=a,
            consumer=SOCIAL,
            material_type=MARRIAGE,
            fields=["marital_status"],
            purpose=LOAN,
            valid_until_us=now_us() + DAY_US,
        ),
        ledger_pb2.CONSENT_GIVEN,
    ),
    "RevokeConsent": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].revoke_consent(ANNA, "c-0123456789", assertion=a),
        ledger_pb2.CONSENT_REVOCATION,
    ),
    "ListConsents": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].list_consents(ANNA, assertion=a),
        ledger_pb2.CONSENT_LISTING,
    ),
    "ConfirmForm": (
        FORM_TOOL,
        lambda w, a: w.clients[FORM_TOOL].confirm_form(
            ANNA, FORM, {"full_name": "张三 (demo)"}, assertion=a
        ),
        ledger_pb2.FORM_CONFIRMATION,
    ),
}

UNAUTHENTICATED, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def bad_assertions(world: World, audience: str) -> dict[str, tuple[envelope_pb2.Envelope, str]]:
    """One assertion for each way an assertion is refused, with the reason it gets."""
    idp = world.identity
    assert idp is not None
    social = DevelopmentIdentityProvider(SOCIAL, world.hub.keystore.department_signing_key(SOCIAL))
    long_ago = now_us() - 20 * 60_000_000
    forged = raw_assertion(idp, audience=audience)
    forged.payload = forged.payload + b"\x00"  # a valid signature over other bytes
    return {
        "missing": (envelope_pb2.Envelope(), "ASSERTION_REQUIRED"),
        "expired": (
            world.assertion(ANNA, audience, issued_us=long_ago, lifetime_seconds=300),
            "ASSERTION_EXPIRED",
        ),
        "other audience": (world.assertion(ANNA, TOWNSHIP), "ASSERTION_AUDIENCE_MISMATCH"),
        "other subject": (world.assertion(BEN, audience), "ASSERTION_SUBJECT_MISMATCH"),
        "not a provider": (raw_assertion(social, audience=audience), "UNKNOWN_IDENTITY_PROVIDER"),
        "forged": (forged, "ASSERTION_INVALID"),
    }


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_every_person_bound_call_refuses_every_bad_assertion_on_record(
    world: World, call: str
) -> None:
    await define_purpose(world, COUNTER, catalog_pb2.PERSON_PRESENT)
    caller, perform, kind = CALLS[call]
    subject_ref = world.hub.server.hub.content_keys.subject_ref(ANNA)
    for case, (assertion, reason) in bad_assertions(world, caller).items():
        error = await refused(perform(world, assertion))
        expected = DENIED if reason.endswith("MISMATCH") else UNAUTHENTICATED
        assert (case, error.code, error.reason) == (case, expected, reason)
        entry = refusal_entry(world, error.ledger_sequence)  # the ErrorInfo names its entry
        assert (case, entry.kind, common_pb2.Reason.Name(entry.reason)) == (case, kind, reason)
        assert entry.actor == caller and entry.subject_ref == subject_ref
        if case != "missing":  # the assertion's hash, never its subject
            assert len(bytes.fromhex(entry.attributes["assertion_sha256"])) == 32
        if case in ("expired", "other audience", "other subject"):
            assert entry.attributes["identity_provider"] == IDENTITY
    assert not any(world.spies[d].fetches for d in world.spies)  # nothing read for anyone
    assert not any(world.spies[d].stores for d in world.spies)  # nor stored
    no_personal_data(world)


async def test_confirm_form_without_the_persons_assertion_is_refused_on_record(
    world: World,
) -> None:
    form_tool = world.clients[FORM_TOOL]
    completed = {"full_name": "张三 (demo)", "address": "新地址 (demo)"}
    error = await refused(
        form_tool.confirm_form(ANNA, FORM, completed, assertion=envelope_pb2.Envelope())
    )
    assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_REQUIRED")
    assert "subject assertion" in error.message
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.kind == ledger_pb2.FORM_CONFIRMATION and entry.actor == FORM_TOOL
    assert entry.reason == common_pb2.ASSERTION_REQUIRED
    assert entry.attributes["form"] == FORM and "completed_sha256" not in entry.attributes
    # The person sees the refused confirmation in their history.
    history = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    assert [(a.kind, a.reason) for a in history if a.kind == "FORM_CONFIRMATION"] == [
        ("FORM_CONFIRMATION", "ASSERTION_REQUIRED")
    ]
    no_personal_data(world)


async def test_an_identity_providers_revoked_key_is_refused_on_record(world: World) -> None:
    assertion = world.assertion(ANNA)  # signed before the revocation
    key = world.hub.keystore.department_signing_key(IDENTITY)
    await world.hub.operator.revoke_key(department_id=IDENTITY, keyid=key.keyid)
    error = await refused(world.clients[FORM_TOOL].list_consents(ANNA, assertion=assertion))
    assert (error.code, error.reason) == (UNAUTHENTICATED, "IDENTITY_PROVIDER_REVOKED")
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.kind == ledger_pb2.CONSENT_LISTING
    assert entry.attributes["identity_provider"] == IDENTITY


# ------------------------------------------------------------------ Check by a form tool


async def test_a_form_tool_checks_for_a_person_only_with_their_assertion(world: World) -> None:
    form_tool = world.clients[FORM_TOOL]
    error = await refused(form_tool.check(MARRIAGE, ANNA))
    assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_REQUIRED")
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.kind == ledger_pb2.CHECK and entry.material_type == MARRIAGE
    # The refusal tells nothing about what is on file: no reference, version or hash.
    assert (entry.reference, entry.version, entry.content_hash) == ("", 0, b"")
    for subject in (ANNA, CARL):  # on file, and not: the same refusal
        error = await refused(form_tool.check(MARRIAGE, subject))
        assert error.reason == "ASSERTION_REQUIRED"

    answer = await form_tool.check(MARRIAGE, ANNA, assertion=world.assertion(ANNA))
    assert answer.on_file and answer.holder == CIVIL
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.CHECK and entry.outcome == ledger_pb2.OK
    assert entry.attributes["checked_for"] == "person"
    assert entry.attributes["identity_provider"] == IDENTITY
    missing = await form_tool.check(MARRIAGE, CARL, assertion=world.assertion(CARL))
    assert not missing.on_file
    # A person's assertion does not open another person's file.
    error = await refused(form_tool.check(MARRIAGE, BEN, assertion=world.assertion(ANNA)))
    assert (error.code, error.reason) == (DENIED, "ASSERTION_SUBJECT_MISMATCH")
    no_personal_data(world)


async def test_a_form_tool_that_also_collects_is_still_person_bound(world: World) -> None:
    counter = await world.hub.register(
        "js.nj.counter", (common_pb2.FORM_TOOL, common_pb2.COLLECTOR)
    )
    error = await refused(counter.check(MARRIAGE, ANNA))
    assert error.reason == "ASSERTION_REQUIRED"
    answer = await counter.check(
        MARRIAGE, ANNA, assertion=world.assertion(ANNA, audience="js.nj.counter")
    )
    assert answer.on_file
    error = await refused(counter.submit(MARRIAGE, ANNA, ANNA_MARRIAGE))
    assert error.reason == "ASSERTION_REQUIRED"
    submitted = await counter.submit(
        MARRIAGE, ANNA, ANNA_MARRIAGE, assertion=world.assertion(ANNA, audience="js.nj.counter")
    )
    assert submitted.outcome == "ALREADY_ON_FILE"


async def test_a_form_tool_that_is_also_a_consumer_objects_only_for_the_person(
    world: World,
) -> None:
    """Objecting tells whether material is on file (NOT_ON_FILE): a form tool does it only
    with the person's assertion, whatever other roles it holds."""
    both = await world.hub.register("js.nj.portal", (common_pb2.FORM_TOOL, common_pb2.CONSUMER))
    for subject in (ANNA, CARL):  # on file, and not: the same refusal
        error = await refused(both.file_objection(MARRIAGE, subject, "the record is wrong"))
        assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_REQUIRED")
        entry = refusal_entry(world, error.ledger_sequence)
        assert entry.kind == ledger_pb2.OBJECTION_FILING and entry.actor == "js.nj.portal"
    filed = await both.file_objection(
        MARRIAGE,
        ANNA,
        "the record is wrong",
        assertion=world.assertion(ANNA, audience="js.nj.portal"),
    )
    assert filed.state == "OPEN"


async def test_a_form_tool_checks_without_the_person_only_under_a_granted_legal_basis(
    world: World,
) -> None:
    form_tool = world.clients[FORM_TOOL]
    await define_purpose(world, COUNTER, catalog_pb2.PERSON_PRESENT)
    await define_purpose(world, LOAN, catalog_pb2.PERSON_CONSENT)
    # A legal-basis purpose, but no grant to the form tool or its township office.
    error = await refused(form_tool.check(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert (error.code, error.reason) == (DENIED, "NO_GRANT")
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.kind == ledger_pb2.CHECK and entry.purpose == ASSISTANCE
    # Unconditional material too: the owner's grant is what ties a form tool to the law.
    error = await refused(form_tool.check(HOUSEHOLD, ANNA, purpose=ASSISTANCE))
    assert error.reason == "NO_GRANT"
    error = await refused(form_tool.check(CRIMINAL, ANNA, purpose=ASSISTANCE))
    assert error.reason == "MATERIAL_NOT_SHARED"
    error = await refused(form_tool.check(MARRIAGE, ANNA, purpose="no-such-purpose"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_PURPOSE")

    await grant_marriage(world, TOWNSHIP, (ASSISTANCE, COUNTER, LOAN))  # its owning office
    answer = await form_tool.check(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert answer.on_file and answer.holder == CIVIL
    entry = world.last_entry()
    assert entry.outcome == ledger_pb2.OK and entry.purpose == ASSISTANCE
    assert entry.attributes["checked_for"] == "legal_basis"
    assert entry.attributes["grant_id"]
    assert "identity_provider" not in entry.attributes
    # Purposes resting on the person are no legal basis, grant or not.
    for purpose in (COUNTER, LOAN):
        error = await refused(form_tool.check(MARRIAGE, ANNA, purpose=purpose))
        assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_REQUIRED")
        assert refusal_entry(world, error.ledger_sequence).purpose == purpose

    # The person sees the check made under the legal basis, and the refused ones.
    history = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    checks = [(a.purpose, a.outcome, a.reason) for a in history if a.kind == "CHECK"]
    assert (ASSISTANCE, "OK", "") in checks
    assert (ASSISTANCE, "REFUSED", "NO_GRANT") in checks
    no_personal_data(world)


async def test_departments_check_on_their_own_account_as_before(world: World) -> None:
    """Department-to-department Check, asked before Submit so material is submitted once."""
    township = world.clients[TOWNSHIP]
    answer = await township.check(MARRIAGE, ANNA)
    assert answer.on_file and answer.holder == CIVIL
    entry = world.last_entry()
    assert entry.attributes["checked_for"] == "department" and entry.purpose == ""
    assert not (await world.clients[SOCIAL].check(MARRIAGE, CARL)).on_file
    # A named purpose is recorded, and must be catalogued.
    await township.check(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert world.last_entry().purpose == ASSISTANCE
    error = await refused(township.check(MARRIAGE, ANNA, purpose="no-such-purpose"))
    assert error.reason == "UNKNOWN_PURPOSE"
    # An assertion, when sent, is verified whoever sends it.
    error = await refused(township.check(MARRIAGE, ANNA, assertion=world.assertion(ANNA)))
    assert (error.code, error.reason) == (DENIED, "ASSERTION_AUDIENCE_MISMATCH")


# ------------------------------------------------------------------ Submit by a form tool


def _refusal_seen(world: World, error: Refused) -> tuple[object, ...]:
    """What a form tool learns from a refused submission, and what its entry records, apart
    from the subject's keyed reference and the entry's place in the ledger."""
    entry = refusal_entry(world, error.ledger_sequence)
    return (
        error.code,
        error.reason,
        error.message,
        entry.kind,
        entry.reason,
        entry.material_type,
        entry.counterparty,
        entry.reference,
        entry.version,
        entry.content_hash,
        dict(entry.attributes),
    )


async def test_a_form_tool_submits_for_a_person_only_with_their_assertion(world: World) -> None:
    """Submit answers ALREADY_ON_FILE, STORED or a correction proposal: telling whether material
    is on file. A form tool gets that answer only for a person who authenticated to it."""
    form_tool = world.clients[FORM_TOOL]
    carl_marriage = {"marital_status": "unmarried"}
    # ANNA has this very record on file, CARL nothing: the refusals are the same, and come
    # before anything on file is looked at (no reference, version or hash in the entry).
    seen = []
    for subject, fields in ((ANNA, ANNA_MARRIAGE), (CARL, carl_marriage), (ANNA, carl_marriage)):
        error = await refused(form_tool.submit(MARRIAGE, subject, fields))
        assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_REQUIRED")
        entry = refusal_entry(world, error.ledger_sequence)
        assert entry.kind == ledger_pb2.SUBMIT and entry.actor == FORM_TOOL
        assert entry.subject_ref == world.hub.server.hub.content_keys.subject_ref(subject)
        assert (entry.reference, entry.version, entry.content_hash) == ("", 0, b"")
        assert "submit" not in entry.attributes and "objection_id" not in entry.attributes
        seen.append(_refusal_seen(world, error))
    assert seen[0] == seen[1] == seen[2]
    # Another person's assertion, or an expired one, opens nothing either.
    error = await refused(
        form_tool.submit(MARRIAGE, CARL, carl_marriage, assertion=world.assertion(ANNA))
    )
    assert (error.code, error.reason) == (DENIED, "ASSERTION_SUBJECT_MISMATCH")
    long_ago = now_us() - 20 * 60_000_000
    expired = world.assertion(CARL, issued_us=long_ago, lifetime_seconds=300)
    error = await refused(form_tool.submit(MARRIAGE, CARL, carl_marriage, assertion=expired))
    assert (error.code, error.reason) == (UNAUTHENTICATED, "ASSERTION_EXPIRED")
    entry = refusal_entry(world, error.ledger_sequence)
    assert entry.attributes["identity_provider"] == IDENTITY
    assert len(bytes.fromhex(entry.attributes["assertion_sha256"])) == 32
    assert not any(world.spies[d].stores for d in world.spies)  # nothing stored for anyone
    assert not (await world.clients[TOWNSHIP].check(MARRIAGE, CARL)).on_file

    # With the person's assertion it works as before: the entry names the provider, the
    # assurance level and the assertion's hash, never the subject.
    again = await form_tool.submit(MARRIAGE, ANNA, ANNA_MARRIAGE, assertion=world.assertion(ANNA))
    assert again.outcome == "ALREADY_ON_FILE"
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.SUBMIT and entry.outcome == ledger_pb2.OK
    assert entry.attributes["submit"] == "ALREADY_ON_FILE"
    assert entry.attributes["submitted_for"] == "person"
    assert entry.attributes["identity_provider"] == IDENTITY
    assert entry.attributes["assurance_level"] == "ID_CARD_AT_COUNTER"
    assert len(bytes.fromhex(entry.attributes["assertion_sha256"])) == 32
    stored = await form_tool.submit(MARRIAGE, CARL, carl_marriage, assertion=world.assertion(CARL))
    assert stored.outcome == "STORED" and stored.version == 1
    assert world.spies[CIVIL].stores  # at the owner's adapter
    proposal = await form_tool.submit(
        MARRIAGE, ANNA, {"marital_status": "divorced"}, assertion=world.assertion(ANNA)
    )
    assert proposal.outcome == "CORRECTION_PROPOSED" and proposal.objection_id

    # The person sees the refused submissions in their history, with their reasons.
    history = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    submits = [(a.outcome, a.reason) for a in history if a.kind == "SUBMIT"]
    refusal, served = ("REFUSED", "ASSERTION_REQUIRED"), ("OK", "")
    assert submits[-4:] == [refusal, refusal, served, served]  # oldest first
    no_personal_data(world)


async def test_departments_submit_on_their_own_account_as_before(world: World) -> None:
    """A collector or the owner submits without the person; an assertion, when sent, is still
    verified."""
    township = world.clients[TOWNSHIP]
    answer = await township.submit(MARRIAGE, ANNA, ANNA_MARRIAGE)
    assert answer.outcome == "ALREADY_ON_FILE"
    entry = world.last_entry()
    assert entry.attributes["submitted_for"] == "department"
    assert "identity_provider" not in entry.attributes
    stored = await township.submit(MARRIAGE, CARL, {"marital_status": "unmarried"})
    assert stored.outcome == "STORED"
    changed = {**ANNA_MARRIAGE, "marital_status": "divorced"}
    owner = await world.clients[CIVIL].submit(MARRIAGE, ANNA, changed)
    assert owner.outcome == "NEW_VERSION" and owner.version == 2
    error = await refused(township.submit(MARRIAGE, ANNA, changed, assertion=world.assertion(ANNA)))
    assert (error.code, error.reason) == (DENIED, "ASSERTION_AUDIENCE_MISMATCH")
    assert refusal_entry(world, error.ledger_sequence).kind == ledger_pb2.SUBMIT
