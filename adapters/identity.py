"""Identity providers: who signs subject assertions, and a development one for demos and tests.

An identity provider is a member of the exchange with the IDENTITY_PROVIDER role (in production
the province's unified identity platform). After a person authenticates to it for a form tool or
portal, it signs a ``SubjectAssertion`` naming the person, the form tool (audience), the time,
an expiry at most 10 minutes later, the assurance level and a random nonce, with its registered
Ed25519 key. The form tool passes the signed envelope, untouched, in each call it makes for the
person; the SDK puts it in the envelope's disclosure, so no stored envelope holds it.

``IdentityProvider`` is the signer; any real provider plugs in by calling ``issue`` after its
own authentication, or through ``from_oidc_claims``, which maps the claims of an OpenID Connect
ID token that the bridge has already verified (docs/identity.md). ``DevelopmentIdentityProvider``
trusts whatever it is told: it is for the demo and the tests only, and says so in its name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.policy.assertions import MAX_LIFETIME_US, PAYLOAD_TYPE, Assurance
from exchange.v1 import envelope_pb2, person_pb2

__all__ = [
    "Assurance",
    "DevelopmentIdentityProvider",
    "IdentityError",
    "IdentityProvider",
    "IssuedAssertion",
    "parse_assertion",
]

MAX_LIFETIME_SECONDS = MAX_LIFETIME_US // 1_000_000
DEFAULT_LIFETIME_SECONDS = 300
NONCE_BYTES = 32


# OpenID Connect "acr" values a bridge may map to an assurance level. A real deployment lists
# its platform's own values; these are the ones docs/identity.md uses as an example.
OIDC_ACR: Mapping[str, Assurance] = {
    "urn:gov:acr:password-sms": Assurance.PASSWORD_SMS,
    "urn:gov:acr:face": Assurance.FACE_MATCH,
    "urn:gov:acr:id-card-counter": Assurance.ID_CARD_AT_COUNTER,
}


class IdentityError(ValueError):
    """An assertion cannot be issued as asked (lifetime, claims)."""


@dataclass(frozen=True, slots=True)
class IssuedAssertion:
    """A signed subject assertion: pass ``envelope`` to the SDK's person-bound calls."""

    envelope: envelope_pb2.Envelope
    identity_provider: str
    audience: str
    issued_us: int
    expires_us: int
    assurance: Assurance

    def to_bytes(self) -> bytes:
        """The envelope's bytes (to hand to a form tool, or store for a CLI call)."""
        return self.envelope.SerializeToString(deterministic=True)


def parse_assertion(data: bytes) -> envelope_pb2.Envelope:
    """An assertion envelope from its bytes (``IssuedAssertion.to_bytes``). Raises
    IdentityError if they do not decode as one."""
    envelope = envelope_pb2.Envelope()
    try:
        envelope.ParseFromString(data)
    except Exception as exc:  # DecodeError; protobuf raises its own type per backend
        raise IdentityError("not a subject assertion envelope") from exc
    if envelope.payload_type != PAYLOAD_TYPE:
        raise IdentityError("not a subject assertion envelope")
    return envelope


class IdentityProvider:
    """Signs subject assertions as one registered identity-provider member."""

    def __init__(self, member_id: str, signing_key: SigningKey) -> None:
        self.member_id = member_id
        self.signing_key = signing_key

    def issue(
        self,
        subject_id: str,
        audience: str,
        assurance: Assurance,
        *,
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
        issued_us: int | None = None,
    ) -> IssuedAssertion:
        """Sign an assertion that ``subject_id`` authenticated to ``audience`` just now.

        Call it only after the person authenticated at ``assurance``. Raises IdentityError if
        the lifetime is not 1 to 600 seconds or the subject or audience is empty.
        """
        if not 0 < lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise IdentityError(
                f"an assertion lives 1 to {MAX_LIFETIME_SECONDS} seconds, not {lifetime_seconds}"
            )
        if not subject_id.strip() or not audience:
            raise IdentityError("an assertion needs a subject and an audience")
        issued = now_us() if issued_us is None else issued_us
        expires = issued + lifetime_seconds * 1_000_000
        body = person_pb2.SubjectAssertion(
            identity_provider=self.member_id,
            subject_id=subject_id.strip(),
            audience=audience,
            issued_at=to_timestamp(issued),
            expires_at=to_timestamp(expires),
            assurance_level=assurance.value,
            nonce=os.urandom(NONCE_BYTES),
        )
        envelope = sign(body.SerializeToString(deterministic=True), PAYLOAD_TYPE, self.signing_key)
        return IssuedAssertion(envelope, self.member_id, audience, issued, expires, assurance)

    def from_oidc_claims(
        self,
        claims: Mapping[str, object],
        *,
        audiences: Mapping[str, str],
        subject_claim: str = "id_number",
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
    ) -> IssuedAssertion:
        """Issue an assertion from an OpenID Connect ID token's claims the bridge has verified
        (signature, issuer, expiry and nonce checked by the bridge's OIDC library).

        ``audiences`` maps the token's ``aud`` (the OIDC client id of a form tool) to the form
        tool's member id; ``subject_claim`` names the claim carrying the ID number (the OIDC
        ``sub`` is a pairwise pseudonym, not the ID number); ``acr`` picks the assurance level
        (``OIDC_ACR``). Raises IdentityError for an unknown client, a missing ID number or an
        unknown ``acr``.
        """
        audience = claims.get("aud")
        if isinstance(audience, list | tuple):
            audience = audience[0] if len(audience) == 1 else None
        member = audiences.get(audience) if isinstance(audience, str) else None
        if member is None:
            raise IdentityError("the token's audience is not a registered form tool")
        subject = claims.get(subject_claim)
        if not isinstance(subject, str) or not subject.strip():
            raise IdentityError(f"the token carries no {subject_claim!r} claim")
        acr = claims.get("acr")
        assurance = OIDC_ACR.get(acr) if isinstance(acr, str) else None
        if assurance is None:
            raise IdentityError("the token's acr is not a known assurance level")
        return self.issue(subject, member, assurance, lifetime_seconds=lifetime_seconds)


class DevelopmentIdentityProvider(IdentityProvider):
    """An identity provider that authenticates nobody: it signs whatever it is asked to.

    For the demo and the tests only: register it as a member with the IDENTITY_PROVIDER role
    on a development hub, never on a production one.
    """
