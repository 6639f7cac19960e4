"""A hub refuses a database that is not its own.

A hub pointed at another hub's database (a keys directory holding another hub key or another
subject secret) would otherwise serve from it: checkpoints signed with a key the log's
auditors do not know, and subject refs computed under another secret, so that material on
file looks absent. Before it serves, a hub checks:

- the database's latest stored checkpoint verifies under this hub's checkpoint key (a log
  without checkpoints is new, or was never served from);
- the database's subject-secret fingerprint (stored by the first hub that opened it: an HMAC of
  a fixed label under the secret, which reveals nothing of it) is that of this hub's secret.

Either mismatch is one line naming what differs; ``exchange serve`` prints it and exits 1.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import Column, Engine, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from exchange.ledger import CheckpointError, storage, verify_checkpoint
from exchange.store.metadata import metadata

hub_identity = Table(
    "hub_identity",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

_FINGERPRINT = "subject_secret_fingerprint"
_LABEL = b"exchange.v1 subject-secret fingerprint"


class ForeignDatabase(Exception):
    """The database belongs to another hub; the message is one line."""


def subject_fingerprint(subject_key: bytes) -> str:
    """A fingerprint of the subject secret: HMAC-SHA256 of a fixed label, 32 hex digits."""
    return hmac.new(subject_key, _LABEL, hashlib.sha256).hexdigest()[:32]


def check(engine: Engine, verifier_key: str, subject_key: bytes) -> None:
    """Refuse a database that is not this hub's (see the module); store the subject-secret
    fingerprint in a database that has none yet.

    Raises ForeignDatabase. Database errors propagate.
    """
    with engine.connect() as conn:
        latest = storage.latest_checkpoint(conn)
    if latest is not None:
        try:
            verify_checkpoint(latest.note, [verifier_key])
        except CheckpointError as exc:
            name, _, rest = verifier_key.partition("+")
            raise ForeignDatabase(
                f"this database's checkpoints are not signed by this hub's key {name} "
                f"{rest.partition('+')[0]}: it belongs to another hub, or the keys directory "
                "holds another hub key"
            ) from exc
    mine = subject_fingerprint(subject_key)
    stored = _stored_fingerprint(engine, mine)
    if stored != mine:
        raise ForeignDatabase(
            f"this database was created with another subject secret (fingerprint {stored}, "
            f"this hub's is {mine}): it belongs to another hub, or the keys directory holds "
            "another subject.key"
        )


def _stored_fingerprint(engine: Engine, mine: str) -> str:
    """The stored fingerprint; ``mine`` is stored first if there is none (race-safe)."""
    query = select(hub_identity.c.value).where(hub_identity.c.name == _FINGERPRINT)
    with engine.connect() as conn:
        stored = conn.execute(query).scalar()
        if stored is not None:
            return str(stored)
        try:
            conn.execute(insert(hub_identity).values(name=_FINGERPRINT, value=mine))
            conn.commit()
        except IntegrityError:  # another hub process stored it first
            conn.rollback()
            return str(conn.execute(query).scalar())
    return mine
