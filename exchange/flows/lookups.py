"""What every exchange flow looks up before deciding: roles, catalog entries, holders.

Hot reads come from the repositories' caches without leaving the event loop; a miss reads the
database in a worker thread (SQLite and psycopg block): ``TtlCache.read``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from exchange import errors
from exchange.catalog.model import Form, MaterialType, Purpose
from exchange.crypto.subject import SubjectIdError, SubjectIdScheme, check
from exchange.errors import EntryFacts
from exchange.membership import MemberState, Role
from exchange.policy.identity import Caller
from exchange.store.cache import TtlCache
from exchange.store.materials import IndexedMaterial
from exchange.store.registry import DepartmentRecord
from exchange.v1 import common_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

T = TypeVar("T")


async def indexed(hub: Hub, material_type: str, subject_ref: bytes) -> IndexedMaterial | None:
    """The current version on the hub's index, read on the event loop: for the embedded SQLite
    database synchronously (a point read of a local file costs less than handing it to a worker
    thread and back), for PostgreSQL awaited on the loop's own connections (a network round
    trip must not stall every other call)."""
    if hub.reads_inline:
        return hub.index.current_on_loop(material_type, subject_ref)
    return await hub.index.current_async(material_type, subject_ref)


@contextmanager
def facts(known: EntryFacts) -> Iterator[EntryFacts]:
    """Gather the call's entry facts in ``known`` as the call goes (the flow updates it as more
    become known); a refusal raised inside takes every fact it does not hold itself, for its
    ledger entry."""
    try:
        yield known
    except errors.ExchangeError as error:
        error.facts.fill(known)
        raise


def require_role(caller: Caller, *roles: Role, what: str) -> None:
    """Raise PermissionDenied (ROLE_REQUIRED) unless the caller holds one of ``roles``."""
    if not caller.roles.intersection(roles):
        names = " or ".join(r.lower().replace("_", " ") for r in roles)
        raise errors.PermissionDenied(common_pb2.ROLE_REQUIRED, f"{what} needs the {names} role")


def require_text(value: str, name: str, limit: int = 256) -> str:
    """Return ``value`` if non-empty, at most ``limit`` characters and free of NUL characters
    (which PostgreSQL's text cannot hold), else InvalidArgument."""
    if not value or len(value) > limit:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, f"{name} is required (at most {limit} characters)"
        )
    if "\x00" in value:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, f"{name} must not contain NUL characters"
        )
    return value


def subject_id(
    value: str, scheme: SubjectIdScheme = SubjectIdScheme.OPAQUE, name: str = "subject_id"
) -> str:
    """``value`` in normal form (NFKC, no whitespace, ASCII upper case) if it is an id of
    ``scheme`` (a material type's ``subject_id_scheme``; OPAQUE only normalises), else
    InvalidArgument (INVALID_ARGUMENT_FIELD) naming ``name`` and never quoting the id."""
    try:
        return check(value, scheme)
    except SubjectIdError as exc:
        raise errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, f"{name} {exc}") from None


async def _catalogued(
    cache: TtlCache[str, T | None],
    value: str,
    field: str,
    reason: common_pb2.Reason.ValueType,
    missing: str,
) -> T:
    """The catalog entry ``value`` names (``field`` of the request, at most 128 characters).
    Raises InvalidArgument (INVALID_ARGUMENT_FIELD) or NotFound (``reason``, ``missing``
    telling what the entry is not)."""
    require_text(value, field, 128)
    found = await cache.read(value)
    if found is None:
        raise errors.NotFound(reason, missing.format(repr(value)))
    return found


async def material_type(hub: Hub, type_id: str) -> MaterialType:
    """The catalogued material type. Raises NotFound (UNKNOWN_MATERIAL_TYPE)."""
    return await _catalogued(
        hub.catalog.by_type,
        type_id,
        "material_type",
        common_pb2.UNKNOWN_MATERIAL_TYPE,
        "material type {} is not catalogued",
    )


async def purpose(hub: Hub, purpose_id: str) -> Purpose:
    """The catalogued purpose. Raises InvalidArgument (empty) or NotFound (UNKNOWN_PURPOSE)."""
    return await _catalogued(
        hub.catalog.by_purpose,
        purpose_id,
        "purpose",
        common_pb2.UNKNOWN_PURPOSE,
        "purpose {} is not catalogued",
    )


async def form(hub: Hub, form_id: str) -> Form:
    """The registered form. Raises NotFound (UNKNOWN_FORM)."""
    return await _catalogued(
        hub.catalog.by_form,
        form_id,
        "form_id",
        common_pb2.UNKNOWN_FORM,
        "form {} is not registered",
    )


async def department(hub: Hub, department_id: str) -> DepartmentRecord | None:
    """The registered department (cached, as for authentication), or None."""
    return await hub.departments.read(department_id)


async def acting_for(hub: Hub, caller: Caller) -> tuple[str, ...]:
    """The caller and the department that owns it (a form tool's township office), if any:
    whose grants a form tool may use."""
    me = await department(hub, caller.department_id)
    return (caller.department_id,) + ((me.owner,) if me is not None and me.owner else ())


async def holder(hub: Hub, department_id: str) -> DepartmentRecord:
    """The department holding a material, able to answer.

    Raises Unavailable (PROVIDER_UNAVAILABLE) if it is unregistered, inactive or has no
    provider endpoint.
    """
    found = await department(hub, department_id)
    if found is None or found.state != MemberState.ACTIVE or not found.provider_endpoint:
        raise errors.Unavailable(
            common_pb2.PROVIDER_UNAVAILABLE,
            f"the holder {department_id!r} has no active provider adapter registered",
        )
    return found
