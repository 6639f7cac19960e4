"""The operator's key, apart from the hub's: how a hub comes to know it.

The operator (the caller named by the hub id) signs every registry change and every catalog and
purpose change with its own key. The hub process holds only the public halves (the
``operator_keys`` table) and verifies; the private key stays with the operator's CLI
(``<keys>/operator/signing.key``, which the hub never loads). The hub's own key signs
checkpoints, receipts and forwarded requests only.

At start the hub makes sure it knows the operator's key (``adopt_operator_key``). After that
the table changes only by the operator's own signed rotation (``RotateKey`` naming the hub id),
recorded as a ``KEY_ROTATION`` entry in the same transaction.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from exchange.clock import now_us
from exchange.crypto.envelope import sign
from exchange.crypto.keys import KeyFileError, SigningKey, keyid
from exchange.crypto.keystore import Keystore
from exchange.ledger import EntryDraft, Ledger
from exchange.store.log_keys import LogKeys
from exchange.store.operator_keys import OperatorKeys
from exchange.store.registry import KeyRecord
from exchange.v1 import common_pb2, ledger_pb2, registry_pb2

log = structlog.get_logger(__name__)


async def adopt_operator_key(
    ledger: Ledger, keys: OperatorKeys, hub_key: SigningKey, operator_key: bytes | None
) -> None:
    """Make sure the hub knows the operator's key, apart from its own.

    - If operator keys are recorded, nothing changes: the operator changes its key by a signed
      rotation, never by replacing ``<keys>/operator/signing.pub`` (a differing file is logged).
    - On an empty log, ``operator_key`` (the public half from the keystore) is recorded, valid
      from the start: auditors pin it (``exchange keys verifier --operator``).
    - On a log written before the operator's key was apart from the hub's (every operator call
      so far is signed by the hub key), the hub key is recorded as the operator's key until now
      and ``operator_key`` from now on, with one ``KEY_ROTATION`` entry of the operator, signed
      by the hub key: the last thing the hub key signs as the operator.

    Raises KeyFileError if no operator key is recorded and ``operator_key`` is None, and lets
    the ledger's errors propagate.
    """
    known = await asyncio.to_thread(keys.all)
    if known:
        current = [k.public_key for k in known if k.valid_until_us is None]
        if operator_key is not None and operator_key not in current:
            log.warning(
                "operator_key_file_differs",
                message="keys/operator/signing.pub is not the operator's current key; the "
                "hub verifies with the recorded keys (rotate with `exchange registry "
                "rotate-operator-key`)",
            )
        return
    if operator_key is None:
        raise KeyFileError(
            "the hub knows no operator key: create one with `exchange keys operator` "
            '(docs/operations.md, "The operator\'s key")'
        )
    if operator_key == hub_key.public_bytes:
        raise KeyFileError("the operator's key must not be the hub's key")
    new = KeyRecord(keyid(operator_key), keys.operator, operator_key, valid_from_us=0)
    try:
        if await asyncio.to_thread(ledger.size) == 0:
            await asyncio.to_thread(_insert, keys, new)
            log.info("operator_key_recorded", keyid=new.keyid)
            return
        await _migrate(ledger, keys, hub_key, operator_key)
    except IntegrityError:
        # Another hub process on the same database adopted a key first: use what it recorded.
        log.info("operator_key_adopted_elsewhere")


def _insert(keys: OperatorKeys, key: KeyRecord) -> None:
    with keys.engine.begin() as conn:
        keys.add(conn, key)


async def _migrate(
    ledger: Ledger, keys: OperatorKeys, hub_key: SigningKey, operator_key: bytes
) -> None:
    now = now_us()
    # Until now the hub key signed as the operator: recorded as the operator's first key, then
    # ended by the rotation below, which it signs (its last operator signature; the hub serves
    # no call before its start is over).
    hub_era = KeyRecord(hub_key.keyid, keys.operator, hub_key.public_bytes, 0)
    new = KeyRecord(keyid(operator_key), keys.operator, operator_key, valid_from_us=now)
    header = common_pb2.RequestHeader(
        request_id=f"operator-key-{uuid.uuid4().hex[:16]}", department_id=keys.operator
    )
    header.issued_at.GetCurrentTime()
    body = registry_pb2.RotateKeyRequest(
        header=header,
        department_id=keys.operator,
        new_public_key=operator_key,
    )
    envelope = sign(body.SerializeToString(), body.DESCRIPTOR.full_name, hub_key)

    def effect(conn: Connection) -> None:
        keys.add(conn, hub_era)
        keys.rotate(conn, new, 0)

    await ledger.append(
        EntryDraft(
            kind=ledger_pb2.KEY_ROTATION,
            actor=keys.operator,
            outcome=ledger_pb2.OK,
            request_id=header.request_id,
            counterparty=keys.operator,
            attributes={"keyid": new.keyid, "operator_key": "adopted"},
        ),
        envelope.SerializeToString(),
        effect=effect,
    )
    log.info("operator_key_adopted", keyid=new.keyid, hub_era_until_us=now)


async def resume_log_key_overlap(ledger: Ledger, approved: LogKeys, keystore: Keystore) -> None:
    """If the keystore holds a next log key the operator approved (a rotation under way), sign
    checkpoints with it too, as before the restart. Raises KeyFileError for an unsafe file."""
    next_key = await asyncio.to_thread(keystore.hub_next_signing_key)
    if next_key is not None and await asyncio.to_thread(approved.approved, next_key.keyid):
        ledger.sign_also_with(next_key)
        log.info("log_key_overlap", next_keyid=next_key.keyid)
