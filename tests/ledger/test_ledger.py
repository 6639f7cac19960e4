"""The ledger writer and readers on SQLite: receipts, chain, checkpoints, proofs, failures."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import Engine

from exchange.crypto.keys import SigningKey
from exchange.errors import NotFound, OutOfRange, Unavailable
from exchange.ledger import (
    Checkpoint,
    CheckpointError,
    Ledger,
    LedgerConfig,
    LedgerUnavailable,
    merkle,
    verify_checkpoint,
    verify_receipt,
)
from exchange.ledger.entry import ZERO_HASH
from exchange.v1 import common_pb2, ledger_pb2

from .support import ORIGIN, draft


async def test_concurrent_appends_get_distinct_sequences_and_valid_receipts(
    ledger: Ledger,
) -> None:
    receipts = await asyncio.gather(*(ledger.append(draft(i)) for i in range(200)))
    assert sorted(r.sequence for r in receipts) == list(range(200))
    for receipt in receipts:
        checkpoint = verify_receipt(receipt, [ledger.verifier_key])
        assert checkpoint.origin == ORIGIN
        assert checkpoint.size > receipt.sequence
    assert ledger.size() == 200


async def test_receipt_converts_to_the_contract_message(ledger: Ledger) -> None:
    receipt = await ledger.append(draft())
    message = receipt.to_proto()
    assert isinstance(message, common_pb2.Receipt)
    assert message.sequence == receipt.sequence
    assert list(message.inclusion_proof) == list(receipt.inclusion_proof)


async def test_entries_chain_and_carry_the_envelope_hash(ledger: Ledger) -> None:
    await ledger.append(draft(0))
    await ledger.append(draft(1), envelope=b"envelope-bytes")
    first, second = ledger.entries(0, 10)
    e0, e1 = first.decode(), second.decode()
    assert e0.prev_leaf_hash == ZERO_HASH
    assert e1.prev_leaf_hash == first.leaf_hash == merkle.leaf_hash(first.entry_bytes)
    assert e0.envelope_hash == b""
    assert e1.envelope_hash == hashlib.sha256(b"envelope-bytes").digest()
    assert second.envelope_bytes == b"envelope-bytes"
    assert e1.sequence == 1 and e1.time.seconds > 0
    # stored verbatim: the deterministic encoding of the parsed entry is the stored bytes
    assert e1.SerializeToString(deterministic=True) == second.entry_bytes


async def test_proofs_from_stored_nodes_match_the_pure_functions(ledger: Ledger) -> None:
    for i in range(37):  # several batches of different sizes
        await asyncio.gather(*(ledger.append(draft(i * 10 + j)) for j in range(i % 5 + 1)))
    size = ledger.size()
    leaves = [e.leaf_hash for e in ledger.entries(0, size)]
    for tree_size in (1, 2, 3, 7, 8, 9, 31, 64, size):
        for index in range(0, tree_size, 3):
            assert ledger.inclusion_proof(index, tree_size) == merkle.inclusion_proof(
                index, leaves[:tree_size]
            )
        for old in range(0, tree_size + 1, 5):
            assert ledger.consistency_proof(old, tree_size) == merkle.consistency_proof(
                old, leaves[:tree_size]
            )


async def test_checkpoints_are_stored_every_n_and_at_close(
    engine: Engine, hub_key: SigningKey
) -> None:
    ledger = Ledger(engine, hub_key, ORIGIN, LedgerConfig(checkpoint_every=5, max_batch=1))
    await ledger.start()
    for i in range(12):
        await ledger.append(draft(i))
    await ledger.close()
    latest = ledger.latest_checkpoint()
    assert latest is not None and latest.size == 12
    for size in (5, 10, 12):
        checkpoint = ledger.checkpoint_at(size)
        verify_checkpoint(checkpoint.note, [ledger.verifier_key])
        leaves = [e.leaf_hash for e in ledger.entries(0, size)]
        assert checkpoint.root_hash == merkle.root(leaves)
    with pytest.raises(NotFound):
        ledger.checkpoint_at(3)
    with pytest.raises(OutOfRange):
        ledger.checkpoint_at(13)


async def test_checkpoint_is_stored_after_the_interval_without_new_appends(
    engine: Engine, hub_key: SigningKey
) -> None:
    config = LedgerConfig(checkpoint_every=1000, checkpoint_interval_ms=50)
    ledger = Ledger(engine, hub_key, ORIGIN, config)
    await ledger.start()
    try:
        await ledger.append(draft(0))
        await ledger.append(draft(1))
        for _ in range(100):
            latest = ledger.latest_checkpoint()
            if latest is not None and latest.size == 2:
                break
            await asyncio.sleep(0.02)
        assert latest is not None and latest.size == 2
    finally:
        await ledger.close()


async def test_restart_recovers_the_head_and_continues_the_chain(
    engine: Engine, hub_key: SigningKey
) -> None:
    first = Ledger(engine, hub_key, ORIGIN)
    await first.start()
    await asyncio.gather(*(first.append(draft(i)) for i in range(10)))
    await first.close()
    second = Ledger(engine, hub_key, ORIGIN)
    await second.start()
    receipt = await second.append(draft(10))
    await second.close()
    assert receipt.sequence == 10
    stored = second.entries(9, 2)
    assert stored[1].decode().prev_leaf_hash == stored[0].leaf_hash


async def test_two_writers_on_one_database_build_one_chain(
    engine: Engine, hub_key: SigningKey
) -> None:
    a = Ledger(engine, hub_key, ORIGIN)
    b = Ledger(engine, hub_key, ORIGIN)
    await a.start()
    await b.start()
    receipts = await asyncio.gather(
        *(ledger.append(draft(i)) for i in range(60) for ledger in (a, b))
    )
    await a.close()
    await b.close()
    assert sorted(r.sequence for r in receipts) == list(range(120))
    stored = a.entries(0, 200)
    prev = ZERO_HASH
    for e in stored:
        assert e.decode().prev_leaf_hash == prev
        prev = e.leaf_hash
    latest = a.latest_checkpoint()
    assert latest is not None
    assert latest.root_hash == merkle.root([e.leaf_hash for e in stored])
    for receipt in receipts:
        checkpoint = verify_receipt(receipt, [a.verifier_key])
        proof = a.consistency_proof(checkpoint.size, latest.size)
        assert merkle.verify_consistency(
            checkpoint.size, latest.size, checkpoint.root_hash, latest.root_hash, proof
        )


async def test_entries_for_subject_uses_the_subject_index(ledger: Ledger) -> None:
    ref = hashlib.sha256(b"subject").digest()
    await ledger.append(draft(0, subject_ref=ref))
    await ledger.append(draft(1))
    await ledger.append(draft(2, subject_ref=ref, kind=ledger_pb2.REQUEST))
    found = ledger.entries_for_subject(ref)
    assert [e.sequence for e in found] == [0, 2]
    assert ledger.entries_for_subject(b"") == []


async def test_proofs_beyond_the_log_are_out_of_range(ledger: Ledger) -> None:
    await ledger.append(draft())
    with pytest.raises(OutOfRange) as info:
        ledger.inclusion_proof(0, 2)
    assert info.value.reason == common_pb2.BEYOND_LOG
    with pytest.raises(OutOfRange):
        ledger.consistency_proof(1, 5)


async def test_append_fails_unavailable_when_the_database_is_gone(
    engine: Engine, hub_key: SigningKey
) -> None:
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    await ledger.append(draft(0))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE ledger_entries")
    with pytest.raises(LedgerUnavailable) as info:
        await asyncio.gather(*(ledger.append(draft(i)) for i in range(1, 5)))
    assert isinstance(info.value, Unavailable)
    assert info.value.reason == common_pb2.LEDGER_UNAVAILABLE
    await ledger.close()
    assert ledger.size() == 1  # the head did not move: nothing of the failed batch committed


async def test_append_after_close_is_unavailable(ledger: Ledger) -> None:
    await ledger.close()
    with pytest.raises(LedgerUnavailable):
        await ledger.append(draft())


async def test_subscribers_are_told_of_commits_in_order(ledger: Ledger) -> None:
    seen: list[int] = []
    unsubscribe = ledger.subscribe(lambda batch: seen.extend(seq for seq, _ in batch))
    await asyncio.gather(*(ledger.append(draft(i)) for i in range(20)))
    assert await ledger.wait_beyond(19, timeout=2) == 20
    await asyncio.sleep(0)
    assert seen == list(range(20))
    unsubscribe()
    await ledger.append(draft(99))
    await asyncio.sleep(0.05)
    assert len(seen) == 20


def test_checkpoint_note_has_the_signed_note_layout(hub_key: SigningKey) -> None:
    from exchange.ledger import sign_checkpoint, verifier_key
    from exchange.ledger.checkpoint import note_keyid

    root = hashlib.sha256(b"r").digest()
    checkpoint = sign_checkpoint(ORIGIN, 42, root, hub_key, ORIGIN)
    body, _, sigs = checkpoint.note.partition("\n\n")
    import base64

    assert body.split("\n") == [ORIGIN, "42", base64.b64encode(root).decode()]
    assert sigs.startswith(f"\u2014 {ORIGIN} ") and sigs.endswith("\n")
    raw = base64.b64decode(sigs.split(" ")[2])
    keyid = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + hub_key.public_bytes).digest()[:4]
    assert raw[:4] == keyid == note_keyid(ORIGIN, hub_key.public_bytes)
    vkey = verifier_key(ORIGIN, hub_key.public_bytes)
    assert (
        vkey
        == f"{ORIGIN}+{keyid.hex()}+" + base64.b64encode(b"\x01" + hub_key.public_bytes).decode()
    )
    assert Checkpoint.parse(checkpoint.note) == verify_checkpoint(checkpoint.note, [vkey])
    other = verifier_key("other", SigningKey.generate().public_bytes)
    with pytest.raises(CheckpointError):
        verify_checkpoint(checkpoint.note, [other])
    forged = checkpoint.note.replace("\n42\n", "\n43\n")
    with pytest.raises(CheckpointError):
        verify_checkpoint(forged, [vkey])
