"""The sharing decision: may this consumer receive these fields of this material type, for this
purpose, now? Pure: the flows load the material type and grants and pass them in.

Order of the checks (each refusal names the first that fails): sharing class, field names,
then for CONDITIONAL material a grant to the consumer, in force (not revoked, inside its
window), allowing the purpose, covering every field asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exchange import errors
from exchange.catalog.model import MaterialType, SharingClass
from exchange.policy.grants import Grant
from exchange.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Permit:
    """What may be fetched: exactly ``fields`` (sorted), under ``grant`` (None if UNCONDITIONAL)."""

    fields: tuple[str, ...]
    grant: Grant | None


def check_fields(material_type: MaterialType, fields: Iterable[str]) -> None:
    """Raise InvalidArgument (INVALID_ARGUMENT_FIELD) for a field the type does not have."""
    for name in fields:
        if material_type.field(name) is None:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD,
                f"material type {material_type.id!r} has no field {name[:64]!r}",
            )


def permit(
    material_type: MaterialType,
    grants: Sequence[Grant],
    fields: Sequence[str],
    purpose: str,
    now_us: int,
) -> Permit:
    """Decide a request; ``fields`` empty means every field allowed.

    ``grants`` are the grants held by the consumer for this type (any state). Raises
    PermissionDenied with MATERIAL_NOT_SHARED, NO_GRANT, GRANT_REVOKED, GRANT_EXPIRED,
    PURPOSE_NOT_GRANTED or FIELD_NOT_GRANTED; InvalidArgument for an unknown field.
    """
    if material_type.sharing_class is SharingClass.NOT_SHARED:
        raise errors.PermissionDenied(
            common_pb2.MATERIAL_NOT_SHARED,
            f"material type {material_type.id!r} is not shared: it never leaves its owner",
        )
    check_fields(material_type, fields)
    if material_type.sharing_class is SharingClass.UNCONDITIONAL:
        chosen = frozenset(fields) or frozenset(material_type.field_names)
        return Permit(tuple(sorted(chosen)), None)
    return granted(material_type, grants, fields, purpose, now_us)


def granted(
    material_type: MaterialType,
    grants: Sequence[Grant],
    fields: Sequence[str],
    purpose: str,
    now_us: int,
) -> Permit:
    """The grant part of ``permit``, whatever the sharing class: the fields (``fields`` empty:
    every field granted) one of ``grants`` allows for ``purpose`` now.

    Used alone where a grant must name the purpose even for UNCONDITIONAL material (a form
    tool checking without the person, exchange.flows.check). Raises PermissionDenied with
    NO_GRANT, GRANT_REVOKED, GRANT_EXPIRED, PURPOSE_NOT_GRANTED or FIELD_NOT_GRANTED.
    """
    wanted = frozenset(fields)
    if not grants:
        raise errors.PermissionDenied(
            common_pb2.NO_GRANT, f"no grant covers this consumer for {material_type.id!r}"
        )
    live = [g for g in grants if not g.revoked_at(now_us)]
    if not live:
        raise errors.PermissionDenied(
            common_pb2.GRANT_REVOKED, f"the grant for {material_type.id!r} was revoked"
        )
    in_force = [g for g in live if g.valid_at(now_us)]
    if not in_force:
        raise errors.PermissionDenied(
            common_pb2.GRANT_EXPIRED,
            f"the grant for {material_type.id!r} is outside its validity window",
        )
    for_purpose = [g for g in in_force if purpose in g.purposes]
    if not for_purpose:
        raise errors.PermissionDenied(
            common_pb2.PURPOSE_NOT_GRANTED,
            f"purpose {purpose[:128]!r} is not allowed by the grant for {material_type.id!r}",
        )
    schema = frozenset(material_type.field_names)
    if not wanted:
        best = max(for_purpose, key=lambda g: len(g.fields & schema))
        return Permit(tuple(sorted(best.fields & schema)), best)
    for grant in for_purpose:
        if wanted <= grant.fields:
            return Permit(tuple(sorted(wanted)), grant)
    allowed = frozenset().union(*(g.fields for g in for_purpose))
    outside = sorted(wanted - allowed) or sorted(wanted)
    raise errors.PermissionDenied(
        common_pb2.FIELD_NOT_GRANTED,
        f"field(s) not granted for {material_type.id!r}: {', '.join(outside)}",
    )
