"""The log keys the operator approved: the hub's next checkpoint key during a rotation.

A log key rotation is an operator-signed ``RotateKey`` naming the log's origin (recorded as a
``KEY_ROTATION`` entry, exchange.flows.registry). From then on the hub signs every checkpoint
with its current key and the approved next key (``keys/hub/signing.next.key``), so auditors
can pin the next key before the current one is retired; this table lets a restarted hub
resume that overlap.
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
    select,
)

from exchange.store.metadata import metadata

log_keys = Table(
    "log_keys",
    metadata,
    Column("keyid", String(64), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("approved_us", BigInteger, nullable=False),
)


class LogKeys:
    """Reads and writes the approved log keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def approved(self, keyid: str) -> bool:
        """Whether the operator approved the log key ``keyid``."""
        with self.engine.connect() as conn:
            found = conn.execute(select(log_keys.c.keyid).where(log_keys.c.keyid == keyid))
            return found.first() is not None

    def approve(self, conn: Connection, keyid: str, public_key: bytes, approved_us: int) -> None:
        """Record an approval. Raises sqlalchemy.exc.IntegrityError if already approved."""
        conn.execute(
            insert(log_keys).values(keyid=keyid, public_key=public_key, approved_us=approved_us)
        )
