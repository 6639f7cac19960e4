"""The ledger on PostgreSQL: several hubs on one database still build exactly one chain."""

from __future__ import annotations

import asyncio
import io

import pytest

from exchange.audit.verify import verify_export
from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, LedgerConfig, LedgerUnavailable, merkle, verify_receipt
from exchange.ledger.entry import ZERO_HASH
from exchange.ledger.export import export_ledger
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from exchange.v1 import ledger_pb2

from .support import ORIGIN, draft


async def test_two_hubs_on_one_postgresql_build_one_chain(postgres_url: str) -> None:
    hub = SigningKey.generate()
    engines = [open_engine(postgres_url) for _ in range(2)]
    upgrade(engines[0])
    hubs = [Ledger(e, hub, ORIGIN, LedgerConfig(checkpoint_every=25)) for e in engines]
    for h in hubs:
        await h.start()
    receipts = await asyncio.gather(
        # FAILED: an OK entry would need its caller's signed envelope to verify
        *(
            h.append(draft(i, subject_ref=bytes([i % 3]) * 32, outcome=ledger_pb2.FAILED))
            for i in range(150)
            for h in hubs
        )
    )
    for h in hubs:
        await h.close()
    assert sorted(r.sequence for r in receipts) == list(range(300))
    stored = hubs[0].entries(0, 1000)
    prev = ZERO_HASH
    for entry in stored:
        assert entry.decode().prev_leaf_hash == prev
        prev = entry.leaf_hash
    leaves = [e.leaf_hash for e in stored]
    latest = hubs[1].latest_checkpoint()
    assert latest is not None and latest.size == 300
    assert latest.root_hash == merkle.root(leaves)
    for r in receipts[::7]:
        held = verify_receipt(r, [hubs[0].verifier_key])
        assert merkle.verify_consistency(
            held.size,
            300,
            held.root_hash,
            latest.root_hash,
            hubs[1].consistency_proof(held.size, 300),
        )
    assert hubs[0].inclusion_proof(17, 300) == merkle.inclusion_proof(17, leaves)
    assert len(hubs[0].entries_for_subject(bytes([1]) * 32)) == 100
    out = io.StringIO()
    export_ledger(engines[0], out, [], [hubs[0].verifier_key])
    out.seek(0)
    report = verify_export(out, workers=0)
    assert report.ok, report.first_failure
    for e in engines:
        e.dispose()


async def test_append_is_unavailable_when_postgresql_is_unreachable() -> None:
    dead = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # nothing listens there
    ledger = Ledger(
        open_engine(dead, connect_args={"connect_timeout": 1}), SigningKey.generate(), ORIGIN
    )

    with pytest.raises(LedgerUnavailable):
        await ledger.start()
