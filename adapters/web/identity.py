"""How a person proves who they are to the web form tool: an identity provider's assertion.

The web app never decides by itself who a person is. It hands the person to an identity
provider (in production the province's unified identity platform, reached through an OIDC
bridge: adapters.identity and docs/identity.md; in the demo and the tests the development
provider) and keeps what comes back, a ``Person`` holding the signed subject assertion, in the
server-side session only, for as long as the assertion lives. Every person-bound call
(Prefill, AccessHistory, FileObjection, consents, the form's confirmation) carries it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from adapters.identity import (
    MAX_LIFETIME_SECONDS,
    Assurance,
    IdentityError,
    IdentityProvider,
)
from exchange.v1 import envelope_pb2

__all__ = [
    "Assurance",
    "NotAuthenticated",
    "Person",
    "PersonAuthenticator",
    "SigningIdentityProvider",
    "normalise_id",
]

# 17 digits and a digit or X: the shape of a resident ID number (GB 11643). The check digit is
# not verified here: the demo's synthetic numbers (region 99) are shaped but not checksummed.
ID_NUMBER = re.compile(r"^[0-9]{17}[0-9X]$")
# A counter visit or a "my data" visit lasts as long as the longest assertion the hub accepts.
ASSERTION_SECONDS = MAX_LIFETIME_SECONDS
# An assertion is not used in its last half minute: a call that reaches the hub late would be
# refused as expired mid-page.
MARGIN_SECONDS = 30.0


class NotAuthenticated(Exception):
    """The identity provider did not authenticate the person; ``key`` names the message."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True, slots=True)
class Person:
    """An authenticated person, as the identity provider vouched for them.

    ``assertion`` is the provider's signed statement, passed untouched with every person-bound
    call; ``expires`` is a ``time.monotonic()`` instant.
    """

    subject_id: str
    assurance: Assurance
    expires: float
    assertion: envelope_pb2.Envelope = field(repr=False)

    @property
    def expired(self) -> bool:
        """Whether the assertion has (nearly) run out: the person authenticates again."""
        return time.monotonic() >= self.expires - MARGIN_SECONDS


class PersonAuthenticator(Protocol):
    """Authenticates a person for a form tool (the audience)."""

    async def authenticate(self, subject_id: str, assurance: Assurance, audience: str) -> Person:
        """The person, vouched for. Raises NotAuthenticated."""
        ...


def normalise_id(text: str) -> str:
    """An ID number as typed, without spaces, upper-case X. Raises NotAuthenticated."""
    subject_id = "".join(text.split()).upper()
    if not ID_NUMBER.match(subject_id):
        raise NotAuthenticated("person.bad_id")
    return subject_id


class SigningIdentityProvider:
    """Authenticates through an identity provider that signs in this process.

    With ``adapters.identity.DevelopmentIdentityProvider`` (the demo and the tests) it believes
    the ID number typed in; a production deployment puts its platform's own sign-in in front
    and only then calls ``authenticate``.
    """

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider

    async def authenticate(self, subject_id: str, assurance: Assurance, audience: str) -> Person:
        """A person for ``subject_id`` at ``assurance``. Raises NotAuthenticated."""
        subject = normalise_id(subject_id)
        try:
            issued = self.provider.issue(
                subject, audience, assurance, lifetime_seconds=ASSERTION_SECONDS
            )
        except IdentityError as exc:
            raise NotAuthenticated("person.bad_id") from exc
        return Person(subject, assurance, time.monotonic() + ASSERTION_SECONDS, issued.envelope)
