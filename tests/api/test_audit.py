"""Audit service and the auditor's watcher against real hubs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from adapters.auditor import ForkDetected, Watcher, stream_entries
from adapters.client import Refused
from exchange.ledger import merkle, verify_checkpoint
from exchange.v1 import audit_pb2, common_pb2, ledger_pb2
from tests.conftest import RunningHub, StartHub

AUDIT = "/exchange.v1.Audit"


async def checkpoint_covering(hub: RunningHub, size: int) -> None:
    """Wait until a stored checkpoint covers ``size`` entries (checkpoints every 200 ms)."""
    for _ in range(100):
        latest = hub.server.hub.ledger.latest_checkpoint()
        if latest is not None and latest.size >= size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint was made")


async def traffic(hub: RunningHub, n: int = 5) -> None:
    client = hub.client("js.nj.civil-affairs")
    for _ in range(n):
        await client.list_departments()


async def test_non_auditor_is_refused(hub: RunningHub) -> None:
    client = await hub.register("js.nj.civil-affairs")
    with pytest.raises(Refused) as caught:
        await client.call(
            f"{AUDIT}/GetCheckpoint", audit_pb2.GetCheckpointRequest(), audit_pb2.CheckpointResponse
        )
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )


async def test_auditor_proves_inclusion_and_consistency(hub: RunningHub) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    await hub.register("js.nj.civil-affairs")
    await traffic(hub, 3)
    await checkpoint_covering(hub, hub.server.hub.ledger.size())
    verifier = hub.server.hub.ledger.verifier_key
    first = await auditor.call(
        f"{AUDIT}/GetCheckpoint", audit_pb2.GetCheckpointRequest(), audit_pb2.CheckpointResponse
    )
    old = verify_checkpoint(first.checkpoint, [verifier])
    proof = await auditor.call(
        f"{AUDIT}/GetInclusionProof",
        audit_pb2.InclusionProofRequest(sequence=1, tree_size=old.size),
        audit_pb2.InclusionProofResponse,
    )
    assert merkle.verify_inclusion(proof.leaf_hash, 1, old.size, list(proof.proof), old.root_hash)
    await traffic(hub, 4)
    await checkpoint_covering(hub, hub.server.hub.ledger.size())
    second = await auditor.call(
        f"{AUDIT}/GetCheckpoint", audit_pb2.GetCheckpointRequest(), audit_pb2.CheckpointResponse
    )
    new = verify_checkpoint(second.checkpoint, [verifier])
    assert new.size > old.size
    consistency = await auditor.call(
        f"{AUDIT}/GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest(old_size=old.size, new_size=new.size),
        audit_pb2.ConsistencyProofResponse,
    )
    assert merkle.verify_consistency(
        old.size, new.size, old.root_hash, new.root_hash, list(consistency.proof)
    )
    past = await auditor.call(
        f"{AUDIT}/GetCheckpoint",
        audit_pb2.GetCheckpointRequest(size=old.size),
        audit_pb2.CheckpointResponse,
    )
    assert past.checkpoint == first.checkpoint


async def test_proof_beyond_the_log_is_out_of_range(hub: RunningHub) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    with pytest.raises(Refused) as caught:
        await auditor.call(
            f"{AUDIT}/GetInclusionProof",
            audit_pb2.InclusionProofRequest(sequence=10_000, tree_size=20_000),
            audit_pb2.InclusionProofResponse,
        )
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.OUT_OF_RANGE, "BEYOND_LOG")


async def test_entry_stream_is_complete_and_resumable(hub: RunningHub) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    await hub.register("js.nj.civil-affairs")
    await traffic(hub, 3)
    records = [r async for r in stream_entries(auditor, 0)]
    assert [r.sequence for r in records] == list(range(len(records)))
    assert all(merkle.leaf_hash(r.entry) == r.leaf_hash for r in records)
    resumed = [r async for r in stream_entries(auditor, 3)]
    assert [r.sequence for r in resumed][: len(records) - 3] == list(range(3, len(records)))
    kinds = {ledger_pb2.LedgerEntry.FromString(r.entry).kind for r in records}
    assert ledger_pb2.DEPARTMENT_REGISTRATION in kinds


async def test_followed_stream_delivers_new_entries(hub: RunningHub) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    await hub.register("js.nj.civil-affairs")
    start = hub.server.hub.ledger.size()
    seen: list[int] = []

    async def follow() -> None:
        async for record in stream_entries(auditor, start, follow=True):
            seen.append(record.sequence)
            if len(seen) >= 4:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await traffic(hub, 3)
    await asyncio.wait_for(task, 10)
    assert seen == list(range(start, start + 4))


async def test_watcher_trusts_advances_and_checks_receipts(hub: RunningHub, tmp_path: Path) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    await hub.register("js.nj.civil-affairs")
    watcher = Watcher(auditor, hub.server.hub.ledger.verifier_key, tmp_path / "trusted.note")
    await checkpoint_covering(hub, hub.server.hub.ledger.size())
    first = await watcher.check()
    await traffic(hub, 5)
    client = hub.client("js.nj.civil-affairs")
    answer = await client.list_departments()
    await checkpoint_covering(hub, hub.server.hub.ledger.size())
    second = await watcher.check()
    assert second.old_size == first.checkpoint.size < second.checkpoint.size
    assert watcher.trusted() == second.checkpoint
    checkpoint = await watcher.check_receipt(answer.receipt)
    assert checkpoint.size > answer.receipt.sequence


async def test_watcher_reports_a_forked_log_loudly(start_hub: StartHub, tmp_path: Path) -> None:
    # Two hubs with the same key and origin but different histories: a rewritten log.
    honest = await start_hub(f"sqlite:///{tmp_path / 'a.db'}")
    auditor_key = await honest.register("js.audit", (common_pb2.AUDITOR,))
    await honest.register("js.nj.civil-affairs")
    await traffic(honest, 2)
    await checkpoint_covering(honest, honest.server.hub.ledger.size())
    watcher = Watcher(auditor_key, honest.server.hub.ledger.verifier_key, tmp_path / "trusted.note")
    await watcher.check()
    trusted = watcher.trusted()
    assert trusted is not None
    await honest.server.stop(grace=1)

    forked = await start_hub(f"sqlite:///{tmp_path / 'b.db'}")
    from exchange.v1 import registry_pb2 as r

    await forked.operator.register_department(
        department=r.Department(
            id="js.audit",
            name="Audit",
            roles=[common_pb2.AUDITOR],
            keys=[
                r.DepartmentKey(
                    public_key=forked.keystore.department_signing_key("js.audit").public_bytes
                )
            ],
        )
    )
    for _ in range(trusted.size + 3):
        await forked.client("js.audit").list_departments()
    await checkpoint_covering(forked, forked.server.hub.ledger.size())
    rewatch = Watcher(
        forked.client("js.audit"), forked.server.hub.ledger.verifier_key, tmp_path / "trusted.note"
    )
    with pytest.raises(ForkDetected) as caught:
        await rewatch.check()
    assert caught.value.trusted == trusted
    assert caught.value.seen.size > trusted.size
    assert "FORK" in str(caught.value) and trusted.note in str(caught.value)
    assert rewatch.trusted() == trusted  # the forked checkpoint was not trusted


async def test_watcher_polls_do_not_grow_the_ledger_per_poll(
    hub: RunningHub, tmp_path: Path
) -> None:
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    await hub.register("js.nj.civil-affairs")
    watcher = Watcher(auditor, hub.server.hub.ledger.verifier_key, tmp_path / "trusted.note")
    ledger = hub.server.hub.ledger
    await traffic(hub, 2)
    await checkpoint_covering(hub, ledger.size())
    await watcher.check()  # the first checkpoint read of the interval: recorded
    await traffic(hub, 1)
    await checkpoint_covering(hub, ledger.size())
    await watcher.check()  # the first consistency read: recorded
    before = ledger.size()
    for _ in range(6):
        await watcher.check()
    await checkpoint_covering(hub, ledger.size())
    assert ledger.size() == before, "each poll added entries"
    reads = [ledger_pb2.LedgerEntry.FromString(e.entry_bytes) for e in ledger.entries(0, before)]
    watched = [e.attributes["what"] for e in reads if e.actor == "js.audit"]
    assert watched == ["checkpoint", "consistency"]
    # the next interval's first read is recorded with the count of the reads it summarises
    from exchange.flows.read_summary import summary_of

    summary = summary_of(hub.server.hub)
    summary.interval_seconds = 0.0  # the interval elapses at once
    await watcher.check()
    await checkpoint_covering(hub, ledger.size())
    (last,) = [
        ledger_pb2.LedgerEntry.FromString(e.entry_bytes)
        for e in ledger.entries(before, ledger.size() - before)
        if ledger_pb2.LedgerEntry.FromString(e.entry_bytes).attributes.get("what") == "checkpoint"
    ]
    assert int(last.attributes["unrecorded_reads"]) >= 6


async def test_a_verifying_sdk_accepts_reads_answered_without_a_receipt(hub: RunningHub) -> None:
    from adapters.client import HubClient, Identity

    await hub.register("js.audit", (common_pb2.AUDITOR,))
    await checkpoint_covering(hub, hub.server.hub.ledger.size())
    client = HubClient(
        hub.target,
        Identity(
            "js.audit",
            hub.keystore.department_signing_key("js.audit"),
            hub.keystore.department_tls("js.audit"),
        ),
        server_name="localhost",
        hub_verifier=hub.server.hub.ledger.verifier_key,
    )
    try:
        answers = [
            await client.call(
                f"{AUDIT}/GetCheckpoint",
                audit_pb2.GetCheckpointRequest(),
                audit_pb2.CheckpointResponse,
            )
            for _ in range(3)
        ]
        # the first read is an entry with a verified receipt, the others are only counted
        assert [a.HasField("receipt") for a in answers] == [True, False, False]
        # every other answer still needs its receipt
        listed = await client.list_departments()
        assert listed.HasField("receipt")
    finally:
        await client.close()
