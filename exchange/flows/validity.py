"""Validity in ledger order: what an OK entry relied on, checked again as it is appended.

A call is decided on what the hub read while it ran (through caches that another hub process
refreshes within two seconds). Between that decision and its entry, a revocation may commit:
a key revoked or rotated out, the member suspended or retired, a grant revoked or expired, a
material type's sharing class lowered. So every OK entry of an authenticated member carries a
guard (``exchange.ledger.Guard``) that the ledger writer runs in the entry's own transaction,
after every entry before it: it re-reads the rows the call relied on and, if one no longer
holds, the entry becomes the call's refusal with its precise reason, and nothing is served.

This gives the exchange one rule, the same on every hub of a database: a call whose entry
comes after a revocation's entry in the chain is refused. A revocation therefore takes effect
on every hub before the revoking call returns (its entry is committed by then), and an honest
hub's ledger always verifies: the verifier's key rule (``exchange.audit.keyhistory``: a key
revoked by an entry signs nothing later than that entry's time) holds by construction, because
a revocation records its time as its own entry's (``exchange.ledger.appending``).

The reads are memoised per batch (``Appending.read``) until an effect writes, so a batch of
calls by one member under one grant costs one read of each row, not one per entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, select

from exchange import errors
from exchange.catalog.model import SharingClass
from exchange.membership import MemberState
from exchange.policy.identity import Caller
from exchange.store.exchange_tables import grants, material_types
from exchange.store.tables import department_keys, departments
from exchange.v1 import common_pb2

if TYPE_CHECKING:
    from exchange.ledger import Appending, Guard


def _scalar(column: Any, *where: Any) -> Any:
    return select(column).where(*where).scalar_subquery()


_KEYID = department_keys.c.keyid == bindparam("keyid")
_GRANT_ID = grants.c.id == bindparam("grant")
# Everything one entry relied on, in one read (one round trip under the head lock): its key,
# its member's state, a material type's latest sharing class and a grant. NULL where there is
# no such row (or nothing was asked: an empty material type or grant id).
_STANDING = select(
    _scalar(department_keys.c.department_id, _KEYID),
    _scalar(department_keys.c.valid_until_us, _KEYID),
    _scalar(department_keys.c.revoked_us, _KEYID),
    _scalar(departments.c.state, departments.c.id == bindparam("department")),
    select(material_types.c.sharing_class)
    .where(material_types.c.id == bindparam("material_type"))
    .order_by(material_types.c.version.desc())
    .limit(1)
    .scalar_subquery(),
    _scalar(grants.c.valid_from_us, _GRANT_ID),
    _scalar(grants.c.valid_until_us, _GRANT_ID),
    _scalar(grants.c.revoked_us, _GRANT_ID),
)
Standing = tuple[
    str | None, int | None, int | None, str | None, str | None, int | None, int | None, int | None
]


@dataclass(frozen=True, slots=True)
class Share:
    """A material type a call delivered, and the grant it was delivered under (None when the
    type was shared unconditionally)."""

    material_type: str
    grant_id: str | None = None


def guard(caller: Caller, shares: Sequence[Share] = ()) -> Guard | None:
    """The guard of an OK entry of ``caller`` that delivered ``shares``: None for the hub
    operator (the hub's own key, never revoked through the registry) when nothing was shared.
    """
    if caller.is_operator and not shares:
        return None
    relied = tuple(shares)

    def check(conn: Connection, at: Appending) -> errors.ExchangeError | None:
        for share in relied or (None,):
            standing = _standing(conn, at, caller, share)
            refusal = None if caller.is_operator else _member(at, caller, standing)
            if refusal is None and share is not None:
                refusal = _share(at, share, standing)
            if refusal is not None:
                return refusal
        return None

    return check


def _standing(conn: Connection, at: Appending, caller: Caller, share: Share | None) -> Standing:
    """What ``caller`` and ``share`` rely on as it stands now (memoised for the batch)."""
    type_id = share.material_type if share else ""
    grant_id = (share.grant_id or "") if share else ""
    params = {
        "keyid": caller.keyid,
        "department": caller.department_id,
        "material_type": type_id,
        "grant": grant_id,
    }
    key = ("standing", caller.department_id, caller.keyid, type_id, grant_id)
    row: Standing = at.read(key, lambda: tuple(conn.execute(_STANDING, params).one()))
    return row


def _member(at: Appending, caller: Caller, standing: Standing) -> errors.ExchangeError | None:
    """The caller's key and member state, as they stand after every earlier entry."""
    department = caller.department_id
    owner, valid_until, revoked, state = standing[:4]
    if owner != department:
        return errors.Unauthenticated(
            common_pb2.UNKNOWN_KEY, f"signing key {caller.keyid[:16]}… is no longer registered"
        )
    if revoked is not None:
        return errors.Unauthenticated(
            common_pb2.KEY_REVOKED, f"signing key {caller.keyid[:16]}… was revoked"
        )
    if valid_until is not None and at.time_us >= valid_until:
        return errors.Unauthenticated(
            common_pb2.KEY_EXPIRED, f"signing key {caller.keyid[:16]}… was rotated out"
        )
    if state != MemberState.ACTIVE:
        return errors.PermissionDenied(
            common_pb2.DEPARTMENT_INACTIVE,
            f"department {department!r} is {(state or 'not registered').lower()}",
        )
    return None


def _share(at: Appending, share: Share, standing: Standing) -> errors.ExchangeError | None:
    """The sharing class and grant a delivery relied on, as they stand now."""
    type_id = share.material_type
    sharing, valid_from, valid_until, revoked = standing[4:]
    if sharing is None or sharing == SharingClass.NOT_SHARED.value:
        return errors.PermissionDenied(
            common_pb2.MATERIAL_NOT_SHARED,
            f"material type {type_id!r} is no longer shared: it never leaves its owner",
        )
    if share.grant_id is None:
        if sharing == SharingClass.CONDITIONAL.value:
            return errors.PermissionDenied(
                common_pb2.NO_GRANT, f"{type_id!r} is now shared only under a grant"
            )
        return None
    if valid_from is None or revoked is not None:  # no such grant any more, or revoked
        return errors.PermissionDenied(
            common_pb2.GRANT_REVOKED, f"the grant for {type_id!r} was revoked"
        )
    now = at.time_us
    if now < valid_from or (valid_until is not None and now >= valid_until):
        return errors.PermissionDenied(
            common_pb2.GRANT_EXPIRED, f"the grant for {type_id!r} is outside its validity window"
        )
    return None
