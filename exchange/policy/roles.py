"""Checks of a caller's role that more than one flow makes."""

from __future__ import annotations

from exchange import errors
from exchange.policy.identity import Caller
from exchange.v1 import common_pb2

AUDITOR = "AUDITOR"


def require_auditor(caller: Caller, what: str) -> None:
    """Raise PermissionDenied (ROLE_REQUIRED) unless the caller is an auditor department or the
    hub operator; ``what`` names what they asked for, for the message."""
    if not (caller.is_operator or AUDITOR in caller.roles):
        raise errors.PermissionDenied(
            common_pb2.ROLE_REQUIRED,
            f"{what} is open to auditor departments and the hub operator only",
        )
