"""What a member of the exchange (a department, the hub operator) is: the roles it holds and its
life-cycle state. The contract's enums by name, as the registry stores them; closed sets, so a
misspelt role or state fails type checking. Loaded by both sides (no registry, no database)."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """A role a department holds: the contract's ``Role`` by name, as the registry stores it."""

    PROVIDER = "PROVIDER"
    CONSUMER = "CONSUMER"
    COLLECTOR = "COLLECTOR"
    FORM_TOOL = "FORM_TOOL"
    AUDITOR = "AUDITOR"
    IDENTITY_PROVIDER = "IDENTITY_PROVIDER"
    SUPERVISOR = "SUPERVISOR"


class MemberState(enum.StrEnum):
    """A department's life-cycle state: the contract's ``DepartmentState`` by name, as stored."""

    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    RETIRED = "RETIRED"
