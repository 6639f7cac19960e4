"""Checks of a caller's role that more than one flow makes."""

from __future__ import annotations

from exchange import errors
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.v1 import common_pb2

# The roles through which a person reaches the hub (a grassroots form tool, a portal): a member
# holding one acts for people, so what it may learn of a person needs that person's subject
# assertion, or a catalogued legal basis (docs/identity.md). Departments acting on their own
# account (consumer, collector, provider) are not person-facing.
PERSON_FACING = frozenset({Role.FORM_TOOL})


def person_facing(caller: Caller) -> bool:
    """Whether the caller holds a person-facing role (``PERSON_FACING``), whatever else it holds:
    a form tool that also collects is still a form tool."""
    return not PERSON_FACING.isdisjoint(caller.roles)


def require_auditor(caller: Caller, what: str) -> None:
    """Raise PermissionDenied (ROLE_REQUIRED) unless the caller is an auditor department or the
    hub operator; ``what`` names what they asked for, for the message."""
    if not (caller.is_operator or Role.AUDITOR in caller.roles):
        raise errors.PermissionDenied(
            common_pb2.ROLE_REQUIRED,
            f"{what} is open to auditor departments and the hub operator only",
        )
