"""Repository of the operator's signing keys: the key that signs registry and catalog changes.

The operator's key is not the hub's: the hub process holds only the public halves (this table,
seeded from ``<keys>/operator/signing.pub``) and verifies the operator's calls with them; the
private key stays with the operator's CLI. A rotation adds a key and ends the current ones after
a grace period, in the transaction of its ledger entry (exchange.flows.registry).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    LargeBinary,
    String,
    Table,
    insert,
    or_,
    select,
    update,
)

from exchange.clock import now_us
from exchange.store.metadata import metadata
from exchange.store.registry import KeyRecord

SELF_SIGNED_OVERLAP_US = 1_000_000

operator_keys = Table(
    "operator_keys",
    metadata,
    Column("keyid", String(64), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("valid_from_us", BigInteger, nullable=False),
    Column("valid_until_us", BigInteger, nullable=True),
)


class OperatorKeys:
    """Reads and writes the operator's keys; ``operator`` is the hub id they sign as."""

    def __init__(self, engine: Engine, operator: str) -> None:
        self.engine = engine
        self.operator = operator

    def all(self, conn: Connection | None = None) -> list[KeyRecord]:
        """Every operator key, current and past, oldest first."""
        query = select(operator_keys).order_by(operator_keys.c.valid_from_us, operator_keys.c.keyid)
        if conn is not None:
            rows = conn.execute(query).all()
        else:
            with self.engine.connect() as own:
                rows = own.execute(query).all()
        return [
            KeyRecord(
                keyid=row.keyid,
                department_id=self.operator,
                public_key=bytes(row.public_key),
                valid_from_us=row.valid_from_us,
                valid_until_us=row.valid_until_us,
            )
            for row in rows
        ]

    def add(self, conn: Connection, key: KeyRecord) -> None:
        """Insert a key. Raises sqlalchemy.exc.IntegrityError if it is already there."""
        conn.execute(
            insert(operator_keys).values(
                keyid=key.keyid,
                public_key=key.public_key,
                valid_from_us=key.valid_from_us,
                valid_until_us=key.valid_until_us,
            )
        )

    def rotate(self, conn: Connection, new_key: KeyRecord, grace_us: int) -> None:
        """Add ``new_key`` and end every other key ``grace_us`` from now at the latest.

        The rotation is signed by a key it ends, and its entry is dated when the ledger
        sequences it, just before this runs: the ended keys stay valid for at least
        ``SELF_SIGNED_OVERLAP_US``, so the rotation's own entry lies inside their validity.
        Raises sqlalchemy.exc.IntegrityError if the new key is already registered.
        """
        until = now_us() + max(grace_us, SELF_SIGNED_OVERLAP_US)
        conn.execute(
            update(operator_keys)
            .where(
                or_(
                    operator_keys.c.valid_until_us.is_(None),
                    operator_keys.c.valid_until_us > until,
                ),
                operator_keys.c.keyid != new_key.keyid,
            )
            .values(valid_until_us=until)
        )
        self.add(conn, new_key)
