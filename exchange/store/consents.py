"""Consents: a person's permission for one consumer, material type, fields and purpose.

A consent is held under the person's keyed subject reference, never their id. It is given,
used and revoked each in its ledger entry's transaction; a use is counted by a conditional
update, so two requests racing for the last use (or a use racing a revocation) cannot both
succeed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    Row,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
    update,
)

from exchange.store.metadata import metadata

consents = Table(
    "consents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subject_ref", LargeBinary(32), nullable=False),
    Column("consumer", String(128), nullable=False),
    Column("material_type", String(128), nullable=False),
    Column("fields", Text, nullable=False),  # comma-separated, sorted
    Column("purpose", String(128), nullable=False),
    Column("valid_from_us", BigInteger, nullable=False),
    Column("valid_until_us", BigInteger, nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("min_interval_seconds", Integer, nullable=False),
    Column("data_life_days", Integer, nullable=False),
    Column("uses", Integer, nullable=False),
    Column("last_used_us", BigInteger, nullable=True),
    Column("given_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
    Column("given_through", String(128), nullable=False),
    Column("identity_provider", String(128), nullable=False),
    Column("assurance_level", String(32), nullable=False),
    Index("ix_consents_subject_ref", "subject_ref"),
    Index("ix_consents_consumer_material_type", "consumer", "material_type"),
)


class Usability(enum.Enum):
    """Whether a consent may serve a request now."""

    USABLE = "USABLE"
    REVOKED = "REVOKED"
    OUTSIDE_VALIDITY = "OUTSIDE_VALIDITY"
    EXHAUSTED = "EXHAUSTED"
    TOO_SOON = "TOO_SOON"


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A consent as stored. Times in microseconds since the epoch."""

    id: str
    subject_ref: bytes
    consumer: str
    material_type: str
    fields: frozenset[str]
    purpose: str
    valid_from_us: int
    valid_until_us: int
    max_uses: int
    min_interval_seconds: int
    data_life_days: int
    uses: int
    last_used_us: int | None
    given_us: int
    revoked_us: int | None
    given_through: str
    identity_provider: str
    assurance_level: str

    def usability(self, now_us: int) -> Usability:
        """Whether the consent may serve one more request at ``now_us``."""
        if self.revoked_us is not None and self.revoked_us <= now_us:
            return Usability.REVOKED
        if not self.valid_from_us <= now_us < self.valid_until_us:
            return Usability.OUTSIDE_VALIDITY
        if self.max_uses and self.uses >= self.max_uses:
            return Usability.EXHAUSTED
        if (
            self.min_interval_seconds
            and self.last_used_us is not None
            and now_us - self.last_used_us < self.min_interval_seconds * 1_000_000
        ):
            return Usability.TOO_SOON
        return Usability.USABLE


def _record(row: Row[Any]) -> ConsentRecord:
    m = row._mapping
    return ConsentRecord(
        id=m["id"],
        subject_ref=bytes(m["subject_ref"]),
        consumer=m["consumer"],
        material_type=m["material_type"],
        fields=frozenset(f for f in m["fields"].split(",") if f),
        purpose=m["purpose"],
        valid_from_us=m["valid_from_us"],
        valid_until_us=m["valid_until_us"],
        max_uses=m["max_uses"],
        min_interval_seconds=m["min_interval_seconds"],
        data_life_days=m["data_life_days"],
        uses=m["uses"],
        last_used_us=m["last_used_us"],
        given_us=m["given_us"],
        revoked_us=m["revoked_us"],
        given_through=m["given_through"],
        identity_provider=m["identity_provider"],
        assurance_level=m["assurance_level"],
    )


class Consents:
    """Reads and writes consents. Writes take the connection of their ledger entry."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, conn: Connection, consent: ConsentRecord) -> None:
        """Store a newly given consent."""
        conn.execute(
            insert(consents).values(
                id=consent.id,
                subject_ref=consent.subject_ref,
                consumer=consent.consumer,
                material_type=consent.material_type,
                fields=",".join(sorted(consent.fields)),
                purpose=consent.purpose,
                valid_from_us=consent.valid_from_us,
                valid_until_us=consent.valid_until_us,
                max_uses=consent.max_uses,
                min_interval_seconds=consent.min_interval_seconds,
                data_life_days=consent.data_life_days,
                uses=0,
                last_used_us=None,
                given_us=consent.given_us,
                revoked_us=None,
                given_through=consent.given_through,
                identity_provider=consent.identity_provider,
                assurance_level=consent.assurance_level,
            )
        )

    def get(self, consent_id: str, conn: Connection | None = None) -> ConsentRecord | None:
        """The consent with this id, or None."""
        if conn is None:
            with self.engine.connect() as own:
                return self.get(consent_id, own)
        row = conn.execute(select(consents).where(consents.c.id == consent_id)).first()
        return None if row is None else _record(row)

    def for_subject(self, subject_ref: bytes) -> list[ConsentRecord]:
        """Every consent the person gave, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(consents)
                .where(consents.c.subject_ref == subject_ref)
                .order_by(consents.c.given_us, consents.c.id)
            ).all()
        return [_record(r) for r in rows]

    def candidates(
        self, subject_ref: bytes, consumer: str, material_type: str, purpose: str
    ) -> list[ConsentRecord]:
        """The person's consents to ``consumer`` for this type and purpose, newest first (any
        state: the caller decides which may serve)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(consents)
                .where(
                    consents.c.subject_ref == subject_ref,
                    consents.c.consumer == consumer,
                    consents.c.material_type == material_type,
                    consents.c.purpose == purpose,
                )
                .order_by(consents.c.given_us.desc(), consents.c.id)
            ).all()
        return [_record(r) for r in rows]

    def use(self, conn: Connection, consent: ConsentRecord, now_us: int) -> bool:
        """Count one use in ``conn``'s transaction; False if the consent was revoked, spent or
        used too recently meanwhile (the update's conditions are checked by the database)."""
        conditions = [
            consents.c.id == consent.id,
            consents.c.revoked_us.is_(None),
            consents.c.valid_until_us > now_us,
        ]
        if consent.max_uses:
            conditions.append(consents.c.uses < consent.max_uses)
        if consent.min_interval_seconds:
            conditions.append(
                or_(
                    consents.c.last_used_us.is_(None),
                    consents.c.last_used_us <= now_us - consent.min_interval_seconds * 1_000_000,
                )
            )
        result = conn.execute(
            update(consents)
            .where(*conditions)
            .values(uses=consents.c.uses + 1, last_used_us=now_us)
        )
        return bool(result.rowcount)

    def revoke(self, conn: Connection, consent_id: str, now_us: int) -> bool:
        """Revoke a consent in ``conn``'s transaction; False if it was already revoked."""
        result = conn.execute(
            update(consents)
            .where(consents.c.id == consent_id, consents.c.revoked_us.is_(None))
            .values(revoked_us=now_us)
        )
        return bool(result.rowcount)
