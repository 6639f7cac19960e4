"""SIGKILL at any moment loses no acknowledged entry and leaves a valid chain."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exchange.audit.verify import verify_export
from exchange.crypto.keys import SigningKey, save_signing_key
from exchange.ledger import Checkpoint, Ledger, Receipt, merkle, verifier_key, verify_receipt
from exchange.ledger.export import export_ledger
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade

from .support import ORIGIN

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).parents[2]


def _run_and_kill(url: str, key_file: Path, run: int, seconds: float) -> list[dict[str, object]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, str(key_file), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    acknowledged: list[dict[str, object]] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if "started" in record:
                started.set()
            else:
                acknowledged.append(record)

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(30), proc.stderr.read() if proc.stderr else ""
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.stderr is not None
    proc.stderr.close()
    return acknowledged


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    engine = open_engine(url)
    upgrade(engine)
    hub = SigningKey.generate()
    key_file = tmp_path / "hub.key"
    save_signing_key(key_file, hub)
    rng = random.Random(4)
    acknowledged: list[dict[str, object]] = []
    for run in range(6):
        got = _run_and_kill(url, key_file, run, rng.uniform(0.3, 1.0))
        assert got, "the writer acknowledged nothing before it was killed"
        acknowledged.extend(got)

    ledger = Ledger(engine, hub, ORIGIN)
    await ledger.start()  # recovery stores a checkpoint covering everything committed
    await ledger.close()
    stored = {e.sequence: e for e in ledger.entries(0, 10**9)}
    assert sorted(stored) == list(range(len(stored)))
    vkey = verifier_key(ORIGIN, hub.public_bytes)
    latest = ledger.latest_checkpoint()
    assert latest is not None and latest.size == len(stored)
    proved: set[str] = set()
    for record in acknowledged:
        sequence = int(record["sequence"])  # type: ignore[call-overload]
        assert sequence in stored, f"acknowledged entry {sequence} was lost"
        assert stored[sequence].leaf_hash.hex() == record["leaf_hash"]
        receipt = Receipt(
            sequence,
            bytes.fromhex(str(record["leaf_hash"])),
            str(record["checkpoint"]),
            tuple(bytes.fromhex(p) for p in record["proof"]),  # type: ignore[attr-defined]
        )
        if receipt.checkpoint in proved:  # same batch: check the inclusion proof only
            held = Checkpoint.parse(receipt.checkpoint)
            assert merkle.verify_inclusion(
                receipt.leaf_hash, sequence, held.size, receipt.inclusion_proof, held.root_hash
            )
            continue
        held = verify_receipt(receipt, [vkey])
        proof = ledger.consistency_proof(held.size, latest.size)
        assert merkle.verify_consistency(
            held.size, latest.size, held.root_hash, latest.root_hash, proof
        )
        proved.add(receipt.checkpoint)
    out = io.StringIO()
    export_ledger(engine, out, [], [vkey])
    out.seek(0)
    report = verify_export(out, hub_keys=[vkey], workers=0)
    assert report.ok, report.first_failure
    assert report.entries == len(stored)
    engine.dispose()
