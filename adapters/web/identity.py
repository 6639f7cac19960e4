"""How a person proves who they are to the web form tool: an identity provider.

The web app never decides by itself who a person is. It hands the person to an identity
provider (in production the province's unified identity platform; in the demo and the tests
the development provider below) and keeps what comes back, a ``Person``, in the server-side
session only, for as long as the assertion lives.

``DevelopmentIdentityProvider`` believes the ID number it is given, at the assurance level the
page names: it is for the demo and the tests, never for production.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

# 17 digits and a digit or X: the shape of a resident ID number (GB 11643). The check digit is
# not verified here: the demo's synthetic numbers (region 99) are shaped but not checksummed.
ID_NUMBER = re.compile(r"^[0-9]{17}[0-9X]$")
ASSERTION_SECONDS = 600


class Assurance(enum.Enum):
    """How the person was identified, weakest last."""

    ID_CARD = "id_card"
    FACE = "face"
    PASSWORD_SMS = "password_sms"


class NotAuthenticated(Exception):
    """The identity provider did not authenticate the person; ``key`` names the message."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True, slots=True)
class Person:
    """An authenticated person, as the identity provider vouched for them.

    ``assertion`` is the provider's signed statement, passed to the hub with person-bound
    calls when the hub asks for one; ``expires`` is a ``time.monotonic()`` instant.
    """

    subject_id: str
    assurance: Assurance
    expires: float
    assertion: Any = field(default=None, repr=False)

    @property
    def expired(self) -> bool:
        """Whether the assertion has run out (the person authenticates again)."""
        return time.monotonic() >= self.expires


class IdentityProvider(Protocol):
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


class DevelopmentIdentityProvider:
    """Believes the ID number typed in. For the demo and tests only."""

    async def authenticate(self, subject_id: str, assurance: Assurance, audience: str) -> Person:
        """A person for ``subject_id`` at ``assurance``. Raises NotAuthenticated."""
        return Person(normalise_id(subject_id), assurance, time.monotonic() + ASSERTION_SECONDS)
