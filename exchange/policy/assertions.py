"""Subject assertions: the person's authenticated presence, vouched for by an identity provider.

A call made *for* a person (prefill of their form, their access history, their objection, their
consents) carries an identity-provider-signed ``SubjectAssertion`` in its disclosure. The hub
accepts it only if, in this order:

1. it is there (ASSERTION_REQUIRED);
2. it decodes as an envelope of a ``SubjectAssertion`` (ASSERTION_INVALID);
3. its signer is a registered member with the IDENTITY_PROVIDER role and the signing key is one of
   that member's keys (UNKNOWN_IDENTITY_PROVIDER), and the signature verifies (ASSERTION_INVALID);
4. that member is active and the key is usable now: not revoked, not rotated out
   (IDENTITY_PROVIDER_REVOKED);
5. it lives at most ``MAX_LIFETIME_US`` and now is inside it, give or take ``CLOCK_SKEW_US``
   (ASSERTION_EXPIRED);
6. its audience is the calling member (ASSERTION_AUDIENCE_MISMATCH);
7. its subject is the call's subject, compared in canonical form (ASSERTION_SUBJECT_MISMATCH).

What the ledger may learn of an accepted (or refused) assertion is ``AssertionFacts``: the
identity provider, the assurance level and the SHA-256 of the assertion's envelope bytes. The
assertion names the subject, so its hash is over bytes that also carry a random nonce of at least
16 bytes: the hash reveals nothing about the subject.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from exchange import errors
from exchange.clock import from_timestamp
from exchange.crypto.content import canonical_subject_id
from exchange.crypto.envelope import EnvelopeError, verify
from exchange.membership import MemberState, Role
from exchange.v1 import common_pb2, envelope_pb2, person_pb2

if TYPE_CHECKING:  # the department side imports Assurance without loading the hub's store
    from exchange.store.registry import DepartmentRecord

PAYLOAD_TYPE = person_pb2.SubjectAssertion.DESCRIPTOR.full_name
MAX_LIFETIME_US = 10 * 60 * 1_000_000
# Clocks of the identity provider and the hub differ a little; an assertion issued a few
# seconds "in the future" by the hub's clock is still fresh.
CLOCK_SKEW_US = 30 * 1_000_000
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64


class Assurance(enum.Enum):
    """How the identity provider authenticated the person (the contract's AssuranceLevel)."""

    PASSWORD_SMS = person_pb2.PASSWORD_SMS
    FACE_MATCH = person_pb2.FACE_MATCH
    ID_CARD_AT_COUNTER = person_pb2.ID_CARD_AT_COUNTER


@dataclass(frozen=True, slots=True)
class AssertionFacts:
    """What the ledger records of an assertion: never the subject."""

    identity_provider: str
    assurance: Assurance | None
    sha256: bytes

    def attributes(self) -> dict[str, str]:
        """The entry attributes naming this assertion."""
        found = {"assertion_sha256": self.sha256.hex()}
        if self.identity_provider:
            found["identity_provider"] = self.identity_provider[:128]
        if self.assurance is not None:
            found["assurance_level"] = self.assurance.name
        return found


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """An assertion the hub accepted."""

    facts: AssertionFacts
    audience: str
    issued_us: int
    expires_us: int


def _refuse(
    kind: type[errors.ExchangeError],
    reason: common_pb2.Reason.ValueType,
    message: str,
    facts: AssertionFacts | None,
) -> errors.ExchangeError:
    error = kind(reason, message)
    if facts is not None:
        error.facts.attributes.update(facts.attributes())
    return error


def verify_assertion(
    assertion: envelope_pb2.Envelope,
    *,
    audience: str,
    subject_id: str,
    now_us: int,
    lookup: Callable[[str], DepartmentRecord | None],
) -> VerifiedAssertion:
    """Check ``assertion`` vouches for ``subject_id`` authenticated to ``audience`` now.

    ``lookup`` reads a member from the registry. Raises Unauthenticated (ASSERTION_REQUIRED,
    ASSERTION_INVALID, ASSERTION_EXPIRED, UNKNOWN_IDENTITY_PROVIDER, IDENTITY_PROVIDER_REVOKED)
    or PermissionDenied (ASSERTION_AUDIENCE_MISMATCH, ASSERTION_SUBJECT_MISMATCH); each carries
    the assertion's facts known so far in its entry attributes (``ExchangeError.facts``).
    """
    if not assertion.payload and not assertion.signatures:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_REQUIRED,
            "this call is made for a person: it needs their subject assertion from an identity "
            "provider",
            None,
        )
    sha256 = hashlib.sha256(assertion.SerializeToString(deterministic=True)).digest()
    facts = AssertionFacts("", None, sha256)
    body = person_pb2.SubjectAssertion()
    if assertion.payload_type != PAYLOAD_TYPE:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID,
            f"the assertion's payload_type must be {PAYLOAD_TYPE}",
            facts,
        )
    try:
        body.ParseFromString(assertion.payload)
    except DecodeError as exc:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID,
            "the assertion does not decode",
            facts,
        ) from exc
    provider_id = body.identity_provider[:128]
    try:
        assurance: Assurance | None = Assurance(body.assurance_level)
    except ValueError:
        assurance = None
    facts = AssertionFacts(provider_id, assurance, sha256)
    provider = lookup(provider_id) if provider_id else None
    if provider is None or Role.IDENTITY_PROVIDER not in provider.roles:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.UNKNOWN_IDENTITY_PROVIDER,
            f"{provider_id!r} is not a registered identity provider",
            facts,
        )
    keys = {k.keyid: k.public_key for k in provider.keys}
    try:
        verified = verify(assertion, keys.get)
    except EnvelopeError as exc:
        known = any(s.keyid in keys for s in assertion.signatures)
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID if known else common_pb2.UNKNOWN_IDENTITY_PROVIDER,
            f"the assertion is not signed by identity provider {provider_id!r}: {exc}",
            facts,
        ) from exc
    key = provider.key(verified.keyid)
    if provider.state != MemberState.ACTIVE or key is None or not key.usable_at(now_us):
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.IDENTITY_PROVIDER_REVOKED,
            f"identity provider {provider_id!r} or the key that signed the assertion is no "
            "longer valid",
            facts,
        )
    if assurance is None:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID,
            "the assertion names no known assurance level",
            facts,
        )
    if not MIN_NONCE_BYTES <= len(body.nonce) <= MAX_NONCE_BYTES:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID,
            f"the assertion's nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} random bytes",
            facts,
        )
    issued = from_timestamp(body.issued_at)
    expires = from_timestamp(body.expires_at)
    if not body.HasField("issued_at") or not body.HasField("expires_at"):
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_INVALID,
            "the assertion needs issued_at and expires_at",
            facts,
        )
    if expires <= issued or expires - issued > MAX_LIFETIME_US:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_EXPIRED,
            "an assertion may live at most 10 minutes (expires_at - issued_at)",
            facts,
        )
    if now_us + CLOCK_SKEW_US < issued or now_us >= expires:
        raise _refuse(
            errors.Unauthenticated,
            common_pb2.ASSERTION_EXPIRED,
            "the assertion is not valid now: the person must authenticate again",
            facts,
        )
    if body.audience != audience:
        raise _refuse(
            errors.PermissionDenied,
            common_pb2.ASSERTION_AUDIENCE_MISMATCH,
            f"the assertion was issued to {body.audience[:128]!r}, not to the caller",
            facts,
        )
    try:
        same = canonical_subject_id(body.subject_id) == canonical_subject_id(subject_id)
    except errors.ExchangeError:
        same = False
    if not same:
        raise _refuse(
            errors.PermissionDenied,
            common_pb2.ASSERTION_SUBJECT_MISMATCH,
            "the assertion is about another person than this call",
            facts,
        )
    return VerifiedAssertion(facts, body.audience, issued, expires)
