"""Registry flows: the operator registers departments and manages their keys; members read."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto.keys import KeyFileError, keyid
from exchange.crypto.keystore import Keystore, check_department_id
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.record import ReadBack, record, with_receipt
from exchange.ledger import Effect, appending
from exchange.ledger.checkpoint import verifier_key
from exchange.membership import MemberState, Role
from exchange.policy.identity import Caller
from exchange.store.registry import DepartmentRecord, KeyRecord
from exchange.v1 import common_pb2, ledger_pb2, registry_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

STATES = {
    registry_pb2.ACTIVE: MemberState.ACTIVE,
    registry_pb2.SUSPENDED: MemberState.SUSPENDED,
    registry_pb2.RETIRED: MemberState.RETIRED,
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
            common_pb2.UNKNOWN_DEPARTMENT,
            f"department {errors.quote(department_id)} is not registered",
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

    def answered(receipt: common_pb2.Receipt) -> registry_pb2.DepartmentResponse:
        # The department as the change's transaction read it back (built in that transaction).
        department = change.value
        assert department is not None  # the change was to a registered department
        return registry_pb2.DepartmentResponse(department=to_proto(department), receipt=receipt)

    try:
        receipt = await record(
            hub.ledger,
            caller,
            kind,
            effect=change,
            on_commit=lambda: hub.departments.invalidate(department_id),
            facts=EntryFacts(counterparty=department_id, attributes=attributes),
            answer=answered,
        )
    except IntegrityError as exc:
        raise errors.AlreadyExists(common_pb2.DEPARTMENT_EXISTS, taken) from exc
    return answered(receipt)


def _roles(given: registry_pb2.Department) -> frozenset[Role]:
    return frozenset(
        Role(common_pb2.Role.Name(r)) for r in given.roles if r != common_pb2.ROLE_UNSPECIFIED
    )


def _checked(department: DepartmentRecord) -> DepartmentRecord:
    """``department`` if its record is one the registry may hold (a name, at least one role, a
    provider's endpoint, texts within their lengths); raises InvalidArgument naming the field
    otherwise. The same checks for a registration and an update."""
    lookups.require_text(department.name, "department.name", 500)
    if not department.roles:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "department.roles must name at least one role"
        )
    if Role.PROVIDER in department.roles and not department.provider_endpoint:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "a provider needs department.provider_endpoint"
        )
    if department.provider_endpoint:
        lookups.require_text(department.provider_endpoint, "department.provider_endpoint", 256)
    if department.owner:
        lookups.require_text(department.owner, "department.owner", 128)
    return department


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
    if len(given.keys) != 1:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "department.keys must hold exactly one key"
        )
    public_key = _public_key(given.keys[0].public_key, "department.keys[0].public_key")
    now = now_us()
    department = _checked(
        DepartmentRecord(
            id=given.id,
            name=given.name.strip(),
            roles=_roles(given),
            provider_endpoint=given.provider_endpoint,
            certificate_sha256=_fingerprint(given.certificate_sha256),
            state=MemberState.ACTIVE,
            owner=given.owner,
            registered_us=now,
        )
    )
    key = KeyRecord(keyid(public_key), given.id, public_key, valid_from_us=now)
    return await _change(
        hub,
        caller,
        given.id,
        ledger_pb2.DEPARTMENT_REGISTRATION,
        attributes={"keyid": key.keyid, "roles": ",".join(sorted(department.roles))},
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
    if body.department_id == caller.department_id:
        return await _rotate_operator_key(hub, caller, body)
    if body.department_id == hub.config.origin:
        return await _rotate_log_key(hub, caller, body)
    await _existing(hub, body.department_id)
    public_key = _public_key(body.new_public_key, "new_public_key")
    now = now_us()
    key = KeyRecord(keyid(public_key), body.department_id, public_key, valid_from_us=now)
    fingerprint = _fingerprint(body.certificate_sha256) or None
    grace_us = body.grace_seconds * 1_000_000

    def rotate(conn: Connection) -> None:
        # The old keys end ``grace_seconds`` after the rotation's own entry, to the
        # microsecond (they sign nothing later, as the verifier reads the rotation), so
        # entries sequenced before the rotation are always inside their key's validity.
        until = appending().time_us + grace_us + 1
        hub.registry.rotate(conn, body.department_id, key, until, fingerprint)

    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.KEY_ROTATION,
        attributes={"keyid": key.keyid},
        effect=rotate,
        taken="that key is already registered",
    )


def _keys_only(identity: str, name: str, keys: list[KeyRecord]) -> DepartmentRecord:
    """The operator or the log as a department record holding only keys, for the answer."""
    return DepartmentRecord(
        id=identity,
        name=name,
        roles=frozenset(),
        provider_endpoint="",
        certificate_sha256="",
        state=MemberState.ACTIVE,
        owner="",
        registered_us=0,
        keys=tuple(keys),
    )


async def _rotate_operator_key(
    hub: Hub, caller: Caller, body: registry_pb2.RotateKeyRequest
) -> registry_pb2.DepartmentResponse:
    """The operator's own rotation (``department_id`` is the hub id): signed by its current
    key, it adds the new one; the current ones stay valid for ``grace_seconds``. The hub's own
    key cannot become the operator's."""
    public_key = _public_key(body.new_public_key, "new_public_key")
    if public_key == hub.hub_key.public_bytes:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "the operator's key must not be the hub's key"
        )
    now = now_us()
    key = KeyRecord(keyid(public_key), caller.department_id, public_key, valid_from_us=now)
    grace_us = body.grace_seconds * 1_000_000
    change = ReadBack(
        lambda conn: hub.operator_keys.rotate(conn, key, grace_us),
        hub.operator_keys.all,
    )

    def answered(receipt: common_pb2.Receipt) -> registry_pb2.DepartmentResponse:
        # The operator's keys as the rotation's transaction read them back.
        operator = _keys_only(caller.department_id, "the hub operator", change.value)
        return registry_pb2.DepartmentResponse(department=to_proto(operator), receipt=receipt)

    try:
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.KEY_ROTATION,
            effect=change,
            facts=EntryFacts(counterparty=caller.department_id, attributes={"keyid": key.keyid}),
            answer=answered,
        )
    except IntegrityError as exc:
        raise errors.AlreadyExists(
            common_pb2.DEPARTMENT_EXISTS, "that key is already the operator's"
        ) from exc
    return answered(receipt)


async def _rotate_log_key(
    hub: Hub, caller: Caller, body: registry_pb2.RotateKeyRequest
) -> registry_pb2.DepartmentResponse:
    """The operator approves the hub's next log key (``department_id`` is the log's origin):
    from this entry on, the hub signs every checkpoint with its current key and the next one
    (``keys/hub/signing.next.key``), so auditors can pin the next key before the current one
    is retired (docs/operations.md). Raises InvalidArgument, FailedPrecondition if the hub
    does not hold that key, AlreadyExists if it was approved before."""
    public_key = _public_key(body.new_public_key, "new_public_key")
    try:
        next_key = await asyncio.to_thread(Keystore(hub.config.keys_dir).hub_next_signing_key)
    except KeyFileError as exc:
        raise errors.FailedPrecondition(common_pb2.INVALID_ARGUMENT_FIELD, str(exc)) from exc
    if next_key is None or next_key.public_bytes != public_key:
        raise errors.FailedPrecondition(
            common_pb2.INVALID_ARGUMENT_FIELD,
            "the hub holds no such next log key: run `exchange keys rotate-hub-key` on the "
            "hub's host first",
        )
    signing_key = next_key
    now = now_us()
    log = _keys_only(
        body.department_id,
        "the hub's log",
        [
            KeyRecord(hub.hub_key.keyid, body.department_id, hub.hub_key.public_bytes, 0),
            KeyRecord(signing_key.keyid, body.department_id, public_key, now),
        ],
    )
    response = registry_pb2.DepartmentResponse(department=to_proto(log))
    try:
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.KEY_ROTATION,
            answer=with_receipt(response),
            effect=lambda conn: hub.log_keys.approve(conn, signing_key.keyid, public_key, now),
            on_commit=lambda: hub.ledger.sign_also_with(signing_key),
            facts=EntryFacts(
                counterparty=body.department_id,
                attributes={
                    "keyid": signing_key.keyid,
                    "log_key": verifier_key(hub.ledger.key_name, public_key),
                },
            ),
        )
    except IntegrityError as exc:
        raise errors.AlreadyExists(
            common_pb2.DEPARTMENT_EXISTS, "that log key is already approved"
        ) from exc
    return with_receipt(response)(receipt)


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
    # Revoked from the revocation's own entry on: its time is the entry's (the first
    # microsecond after it), so every entry sequenced before it was signed with a valid key,
    # and every later one is refused as it is appended (exchange.flows.validity).
    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.KEY_REVOCATION,
        attributes={"keyid": body.keyid},
        effect=lambda conn: hub.registry.revoke(conn, body.keyid, appending().time_us + 1),
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


# The fields of a department UpdateDepartment may change, as update_mask names them.
UPDATABLE = ("name", "roles", "provider_endpoint", "certificate_sha256", "owner")


async def update_department(
    hub: Hub, caller: Caller, body: registry_pb2.UpdateDepartmentRequest
) -> registry_pb2.DepartmentResponse:
    """Change the fields ``update_mask`` names (name, roles, provider endpoint, certificate
    fingerprint, owner) of a registered department; its keys and state stay. Operator only.
    The entry (DEPARTMENT_REGISTRATION) names the changed fields and the roles it leaves.

    Raises PermissionDenied (OPERATOR_ONLY), NotFound (UNKNOWN_DEPARTMENT), InvalidArgument for
    an empty or unknown mask path or a record the registry may not hold (as RegisterDepartment).
    """
    require_operator(caller)
    paths = sorted(set(body.update_mask.paths))
    unknown = [p for p in paths if p not in UPDATABLE]
    if not paths or unknown:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD,
            f"update_mask must name fields among {', '.join(UPDATABLE)}"
            + (f"; {errors.quote(unknown[0])} is not one" if unknown else ""),
        )
    current = await _existing(hub, body.department_id)
    given = body.department
    department = _checked(
        dataclasses.replace(
            current,
            name=given.name.strip() if "name" in paths else current.name,
            roles=_roles(given) if "roles" in paths else current.roles,
            provider_endpoint=given.provider_endpoint
            if "provider_endpoint" in paths
            else current.provider_endpoint,
            certificate_sha256=_fingerprint(given.certificate_sha256)
            if "certificate_sha256" in paths
            else current.certificate_sha256,
            owner=given.owner if "owner" in paths else current.owner,
        )
    )
    return await _change(
        hub,
        caller,
        body.department_id,
        ledger_pb2.DEPARTMENT_REGISTRATION,
        attributes={"changed": ",".join(paths), "roles": ",".join(sorted(department.roles))},
        effect=lambda conn: hub.registry.update(conn, department),
    )


async def get_department(
    hub: Hub, caller: Caller, body: registry_pb2.GetDepartmentRequest
) -> registry_pb2.DepartmentResponse:
    """Read one department. Raises NotFound (UNKNOWN_DEPARTMENT)."""
    department = await _existing(hub, body.department_id)
    response = registry_pb2.DepartmentResponse(department=to_proto(department))
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(counterparty=department.id),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)


async def list_departments(
    hub: Hub, caller: Caller, body: registry_pb2.ListDepartmentsRequest
) -> registry_pb2.ListDepartmentsResponse:
    """List every registered department."""
    departments = await asyncio.to_thread(hub.registry.all)
    response = registry_pb2.ListDepartmentsResponse(departments=[to_proto(d) for d in departments])
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "registry"}),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)
