"""Grants: owner-signed permissions for one consumer to request one material type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, or_, select, update

from exchange.clock import to_timestamp
from exchange.store.cache import TtlCache
from exchange.store.exchange_tables import grants
from exchange.v1 import grants_pb2


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as stored. Times in microseconds; ``valid_until_us`` None means no end."""

    id: str
    owner: str
    consumer: str
    material_type: str
    fields: frozenset[str]
    purposes: frozenset[str]
    valid_from_us: int
    valid_until_us: int | None
    rate_per_minute: int
    revoked_us: int | None
    issued_us: int

    def revoked_at(self, us: int) -> bool:
        """Whether the grant is revoked at time ``us``."""
        return self.revoked_us is not None and self.revoked_us <= us

    def valid_at(self, us: int) -> bool:
        """Whether ``us`` is inside the validity window (revocation aside)."""
        return self.valid_from_us <= us and (
            self.valid_until_us is None or us < self.valid_until_us
        )

    def to_proto(self) -> grants_pb2.Grant:
        """The contract form."""
        message = grants_pb2.Grant(
            id=self.id,
            owner=self.owner,
            consumer=self.consumer,
            material_type=self.material_type,
            fields=sorted(self.fields),
            purposes=sorted(self.purposes),
            valid_from=to_timestamp(self.valid_from_us),
            rate_per_minute=self.rate_per_minute,
        )
        if self.valid_until_us is not None:
            message.valid_until.CopyFrom(to_timestamp(self.valid_until_us))
        if self.revoked_us is not None:
            message.revoked_at.CopyFrom(to_timestamp(self.revoked_us))
        return message


def _split(text: str) -> frozenset[str]:
    return frozenset(t for t in text.split(",") if t)


def _grant(row: Row[Any]) -> Grant:
    m = row._mapping
    return Grant(
        id=m["id"],
        owner=m["owner"],
        consumer=m["consumer"],
        material_type=m["material_type"],
        fields=_split(m["fields"]),
        purposes=_split(m["purposes"]),
        valid_from_us=m["valid_from_us"],
        valid_until_us=m["valid_until_us"],
        rate_per_minute=m["rate_per_minute"],
        revoked_us=m["revoked_us"],
        issued_us=m["issued_us"],
    )


class GrantStore:
    """Reads and writes grants; the per-(consumer, material type) read is cached.

    A revocation through this process applies at once; through another hub process sharing the
    database, within ``ttl_seconds``. The cache (``by_pair``, keyed by (consumer, material
    type)) is public for the flows, which read it on the event loop with ``TtlCache.read``.
    """

    def __init__(self, engine: Engine, ttl_seconds: float = 2.0) -> None:
        self.engine = engine
        self.by_pair: TtlCache[tuple[str, str], tuple[Grant, ...]] = TtlCache(
            self._load_pair, ttl_seconds
        )

    def for_consumer(self, consumer: str, material_type: str) -> tuple[Grant, ...]:
        """Every grant (any state) to ``consumer`` for ``material_type``. May block on a miss."""
        return self.by_pair.get((consumer, material_type))

    def _load_pair(self, key: tuple[str, str]) -> tuple[Grant, ...]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(grants)
                .where(grants.c.consumer == key[0], grants.c.material_type == key[1])
                .order_by(grants.c.issued_us)
            ).all()
        return tuple(_grant(r) for r in rows)

    def get(self, grant_id: str, conn: Connection | None = None) -> Grant | None:
        """One grant by id, or None; read through ``conn`` if given (inside a change's
        transaction), else on a connection of its own."""
        if conn is None:
            with self.engine.connect() as own:
                return self.get(grant_id, own)
        row = conn.execute(select(grants).where(grants.c.id == grant_id)).first()
        return None if row is None else _grant(row)

    def visible_to(self, department_id: str | None) -> list[Grant]:
        """Grants the department owns or holds, oldest first; every grant for None."""
        query = select(grants).order_by(grants.c.issued_us, grants.c.id)
        if department_id is not None:
            query = query.where(
                or_(grants.c.owner == department_id, grants.c.consumer == department_id)
            )
        with self.engine.connect() as conn:
            return [_grant(r) for r in conn.execute(query).all()]

    def add(self, conn: Connection, grant: Grant) -> None:
        """Insert a new grant in ``conn``'s transaction (its ledger entry's: the flow passes
        this as the entry's effect); ``forget`` its pair once committed."""
        conn.execute(
            insert(grants).values(
                id=grant.id,
                owner=grant.owner,
                consumer=grant.consumer,
                material_type=grant.material_type,
                fields=",".join(sorted(grant.fields)),
                purposes=",".join(sorted(grant.purposes)),
                valid_from_us=grant.valid_from_us,
                valid_until_us=grant.valid_until_us,
                rate_per_minute=grant.rate_per_minute,
                revoked_us=None,
                issued_us=grant.issued_us,
            )
        )

    def revoke(self, conn: Connection, grant: Grant, revoked_us: int) -> None:
        """Mark the grant revoked in ``conn``'s transaction (keeps an earlier revocation);
        ``forget`` its pair once committed."""
        conn.execute(
            update(grants)
            .where(grants.c.id == grant.id, grants.c.revoked_us.is_(None))
            .values(revoked_us=revoked_us)
        )

    def forget(self, grant: Grant) -> None:
        """Drop the cached grants of ``grant``'s pair: a change to it was committed."""
        self.by_pair.invalidate((grant.consumer, grant.material_type))
