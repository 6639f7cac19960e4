"""Registry flows: the operator registers departments and manages their keys; members read."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto.keys import keyid
from exchange.crypto.keystore import check_department_id
from exchange.flows import lookups
from exchange.flows.record import ReadBack, record
from exchange.ledger import Effect
from exchange.policy.identity import Caller
from exchange.store.registry import DepartmentRecord, KeyRecord
from exchange.v1 import common_pb2, ledger_pb2, registry_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

STATES = {
    registry_pb2.ACTIVE: "ACTIVE",
    registry_pb2.SUSPENDED: "SUSPENDED",
    registry_pb2.RETIRED: "RETIRED",
}


def require_operator(caller: Caller) -> None:
    """Raise PermissionDenied (OPERATOR_ONLY) unless the hub operator is calling."""
    if not caller.is_operator:
        raise errors.PermissionDenied(
            common_pb2.OPERATOR_ONLY, "only the hub operator may change the registry"
        )


def to_proto(department: DepartmentRecord) -> registry_pb2.Department:
    """The contract form of a stored department."""
    message = registry_pb2.Department(
        id=department.id,
        name=department.name,
        roles=sorted(common_pb2.Role.Value(r) for r in department.roles),
        provider_endpoint=department.provider_endpoint,
        certificate_sha256=department.certificate_sha256,
        state=registry_pb2.DepartmentState.Value(department.state),
        owner=department.owner,
    )
    for key in department.keys:
        entry = message.keys.add(
            keyid=key.keyid, public_key=key.public_key, valid_from=to_timestamp(key.valid_from_us)
        )
        if key.valid_until_us is not None:
            entry.valid_until.CopyFrom(to_timestamp(key.valid_until_us))
        if key.revoked_us is not None:
            entry.revoked_at.CopyFrom(to_timestamp(key.revoked_us))
    return message


def _public_key(raw: bytes, field: str) -> bytes:
    if len(raw) != 32:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD,
            f"{field} must be a raw 32-byte Ed25519 public key, got {len(raw)} bytes",
        )
    return raw


def _fingerprint(value: str) -> str:
    value = value.lower()
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "certificate_sha256 must be 64 hex digits"
        )
    return value


async def _existing(hub: Hub, department_id: str) -> DepartmentRecord:
    department = await asyncio.to_thread(hub.registry.get, department_id)
    if department is None:
        raise errors.NotFound(
            common_pb2.UNKNOWN_DEPARTMENT, f"department {department_id!r} is not registered"
        )
    return department


async def _change(
    hub: Hub,
    caller: Caller,
    department_id: str,
    kind: ledger_pb2.EntryKind.ValueType,
    attributes: dict[str, str],
    effect: Effect,
    taken: str = "the change conflicts with the registry as it now is; read it and retry",
) -> registry_pb2.DepartmentResponse:
    """Write ``effect`` with the change's entry (both or neither) and answer the department as
    stored by it (read back in the same transaction, so no read after the commit can fail a
    change that was made). Raises AlreadyExists (DEPARTMENT_EXISTS, ``taken``) if the effect
    meets a unique constraint."""
    change = ReadBack(effect, lambda conn: hub.registry.get(department_id, conn))
    try:
        receipt = await record(
            hub.ledger,
            caller,
            kind,
            effect=change,
            on_commit=lambda: hub.departments.invalidate(department_id),
            counterparty=department_id,
            attributes=attributes,
        )
    except IntegrityError as exc:
        raise errors.AlreadyExists(common_pb2.DEPARTMENT_EXISTS, taken) from exc
    department = change.value
    assert department is not None  # the change was to a registered department, in its transaction
    return registry_pb2.DepartmentResponse(department=to_proto(department), receipt=receipt)


async def register_department(
    hub: Hub, caller: Caller, body: registry_pb2.RegisterDepartmentRequest
) -> registry_pb2.DepartmentResponse:
    """Register a department with its first key. Operator only.

    Raises PermissionDenied (OPERATOR_ONLY), InvalidArgument for a bad id, name, role or key,
    AlreadyExists (DEPARTMENT_EXISTS) for a taken id or key.
    """
    require_operator(caller)
    given = body.department
    try:
        check_department_id(given.id)
    except ValueError as exc:
        raise errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, str(exc)) from exc
    if given.id == hub.config.hub_id:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "the hub's own id cannot be registered"
        )
    lookups.require_text(given.name.strip(), "department.name", 500)
    roles = {common_pb2.Role.Name(r) for r in given.roles if r != common_pb2.ROLE_UNSPECIFIED}
    if not roles:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "department.roles must name at least one role"
        )
    if "PROVIDER" in roles and not given.provider_endpoint:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "a provider needs department.provider_endpoint"
        )
    if len(given.keys) != 1:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "department.keys must hold exactly one key"
        )
    public_key = _public_key(given.keys[0].public_key, "department.keys[0].public_key")
    if given.provider_endpoint:
        lookups.require_text(given.provider_endpoint, "department.provider_endpoint", 256)
    if given.owner:
        lookups.require_text(given.owner, "department.owner", 128)
    now = now_us()
    department = DepartmentRecord(
        id=given.id,
        name=given.name.strip(),
        roles=frozenset(roles),
        provider_endpoint=given.provider_endpoint,
        certificate_sha256=_fingerprint(given.certificate_sha256),
        state="ACTIVE",
        owner=given.owner,
        registered_us=now,
    )
    key = KeyRecord(keyid(public_key), given.id, public_key, valid_from_us=now)
    return await _change(
        hub,
        caller,
        given.id,
        ledger_pb2.DEPARTMENT_REGISTRATION,
        attributes={"keyid": key.keyid, "roles": ",".join(sorted(roles))},
        effect=lambda conn: hub.registry.add(conn, department, key),
        taken=f"department {given.id!r} or its key is already registered",
    )


async def rotate_key(
    hub: Hub, caller: Caller, body: registry_pb2.RotateKeyRequest
) -> registry_pb2.DepartmentResponse:
    """Add a new key; current keys stay valid for ``grace_seconds``. Operator only.

    Raises PermissionDenied, NotFound (UNKNOWN_DEPARTMENT), InvalidArgument, AlreadyExists.
    """
    require_operator(caller)
    await _existing(hub, body.department_id)
    public_key = _public_key(body.new_public_key, "new_public_key")
    now = now_us()
    key = KeyRecord(keyid(public_key), body.department_id, public_key, valid_from_us=now)
    fingerprint = _fingerprint(body.certificate_sha256) or None
    old_valid_until = now + body.grace_seconds * 1_000_000
    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.KEY_ROTATION,
        attributes={"keyid": key.keyid},
        effect=lambda conn: hub.registry.rotate(
            conn, body.department_id, key, old_valid_until, fingerprint
        ),
        taken="that key is already registered",
    )


async def revoke_key(
    hub: Hub, caller: Caller, body: registry_pb2.RevokeKeyRequest
) -> registry_pb2.DepartmentResponse:
    """Revoke a key at once. Operator only.

    Raises PermissionDenied, NotFound (UNKNOWN_DEPARTMENT or UNKNOWN_KEY).
    """
    require_operator(caller)
    department = await _existing(hub, body.department_id)
    if department.key(body.keyid) is None:
        raise errors.NotFound(
            common_pb2.UNKNOWN_KEY, f"{body.department_id!r} has no key {body.keyid[:16]!r}"
        )
    revoked_us = now_us()
    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.KEY_REVOCATION,
        attributes={"keyid": body.keyid},
        effect=lambda conn: hub.registry.revoke(conn, body.keyid, revoked_us),
    )


async def set_state(
    hub: Hub, caller: Caller, body: registry_pb2.SetStateRequest
) -> registry_pb2.DepartmentResponse:
    """Change a member's life-cycle state (备案 / in use / suspended / retired). Operator only.

    Raises PermissionDenied, NotFound, InvalidArgument for an unspecified state.
    """
    require_operator(caller)
    if body.state not in STATES:
        raise errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, "state must be set")
    await _existing(hub, body.department_id)
    state = STATES[body.state]
    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.STATE_CHANGE,
        attributes={"state": state, "reason": body.reason[:200]},
        effect=lambda conn: hub.registry.set_state(conn, body.department_id, state),
    )


async def get_department(
    hub: Hub, caller: Caller, body: registry_pb2.GetDepartmentRequest
) -> registry_pb2.DepartmentResponse:
    """Read one department. Raises NotFound (UNKNOWN_DEPARTMENT)."""
    department = await _existing(hub, body.department_id)
    receipt = await record(hub.ledger, caller, ledger_pb2.READ, counterparty=department.id)
    return registry_pb2.DepartmentResponse(department=to_proto(department), receipt=receipt)


async def list_departments(
    hub: Hub, caller: Caller, body: registry_pb2.ListDepartmentsRequest
) -> registry_pb2.ListDepartmentsResponse:
    """List every registered department."""
    departments = await asyncio.to_thread(hub.registry.all)
    receipt = await record(hub.ledger, caller, ledger_pb2.READ, attributes={"what": "registry"})
    return registry_pb2.ListDepartmentsResponse(
        departments=[to_proto(d) for d in departments], receipt=receipt
    )
