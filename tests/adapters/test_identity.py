"""The identity provider side: what the development provider signs and the OIDC bridge's mapping
of verified ID-token claims (checked by the hub's own assertion check)."""

from __future__ import annotations

import pytest

from adapters.identity import (
    Assurance,
    DevelopmentIdentityProvider,
    IdentityError,
    parse_assertion,
)
from exchange.clock import from_timestamp, now_us
from exchange.crypto.keys import SigningKey
from exchange.membership import MemberState, Role
from exchange.policy.assertions import verify_assertion
from exchange.store.registry import DepartmentRecord, KeyRecord
from exchange.v1 import person_pb2

PLATFORM = "js.identity-platform"
FORM_TOOL = "js.nj.township-form"
SUBJECT = "990101199001010019"


def registered(key: SigningKey) -> DepartmentRecord:
    return DepartmentRecord(
        id=PLATFORM,
        name=PLATFORM,
        roles=frozenset({Role.IDENTITY_PROVIDER}),
        provider_endpoint="",
        certificate_sha256="",
        state=MemberState.ACTIVE,
        owner="",
        registered_us=0,
        keys=(KeyRecord(key.keyid, PLATFORM, key.public_bytes, 0),),
    )


def test_issued_assertion_round_trips_and_verifies() -> None:
    key = SigningKey.generate()
    issued = DevelopmentIdentityProvider(PLATFORM, key).issue(
        SUBJECT, FORM_TOOL, Assurance.FACE_MATCH, lifetime_seconds=120
    )
    envelope = parse_assertion(issued.to_bytes())
    body = person_pb2.SubjectAssertion.FromString(envelope.payload)
    assert from_timestamp(body.expires_at) - from_timestamp(body.issued_at) == 120_000_000
    assert len(body.nonce) == 32 and body.audience == FORM_TOOL
    verified = verify_assertion(
        envelope,
        audience=FORM_TOOL,
        subject_id=SUBJECT.lower(),  # compared in canonical form
        now_us=now_us(),
        lookup=lambda member: registered(key) if member == PLATFORM else None,
    )
    assert verified.facts.identity_provider == PLATFORM
    assert verified.facts.assurance is not None
    assert SUBJECT not in str(verified.facts.attributes())


def test_oidc_claims_map_to_an_assertion() -> None:
    provider = DevelopmentIdentityProvider(PLATFORM, SigningKey.generate())
    audiences = {"township-web": FORM_TOOL}
    claims = {
        "aud": "township-web",
        "sub": "pairwise-7f3a",
        "id_number": SUBJECT,
        "acr": "urn:gov:acr:face",
    }
    issued = provider.from_oidc_claims(claims, audiences=audiences)
    assert (issued.audience, issued.assurance) == (FORM_TOOL, Assurance.FACE_MATCH)
    body = person_pb2.SubjectAssertion.FromString(issued.envelope.payload)
    assert body.subject_id == SUBJECT
    for bad in (
        {**claims, "aud": "unknown-client"},
        {**claims, "acr": "urn:weak"},
        {k: v for k, v in claims.items() if k != "id_number"},
    ):
        with pytest.raises(IdentityError):
            provider.from_oidc_claims(bad, audiences=audiences)


def test_not_an_assertion_is_refused_locally() -> None:
    with pytest.raises(IdentityError):
        parse_assertion(b"\xff\xff not an envelope")
