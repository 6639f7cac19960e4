"""A hub with two witnesses (one a real `exchange witness serve` process): it submits its
checkpoints, serves them cosigned, and auditors' watchers, receipts checks and offline
verification accept them under a witness policy and refuse them without its quorum."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.auditor import Watcher
from exchange.audit.verify import FailureReason, verify_export
from exchange.crypto.keys import SigningKey
from exchange.ledger.export import export_ledger, first_keys
from exchange.witness.cosignature import QuorumError, WitnessKey, WitnessPolicy
from exchange.witness.server import Witness, WitnessServer
from exchange.witness.submitter import post
from tests.conftest import HUB_ID, RunningHub, StartHub

EXCHANGE = [sys.executable, "-m", "exchange.cli"]
ORIGIN = "exchange.local/hub"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Witnesses:
    """Witness w1 in this process, w2 as an `exchange witness serve` process."""

    def __init__(self, tmp_path: Path, log_vkey: str) -> None:
        self.key1 = SigningKey.generate()
        self.w1 = WitnessServer(
            Witness(self.key1, "witness.test/w1", [log_vkey], tmp_path / "w1.db")
        )
        self.w1.start()
        directory = tmp_path / "w2"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
        made = subprocess.run(
            [*EXCHANGE, "witness", "init", "--dir", str(directory), "--name", "witness.test/w2"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        self.key2 = WitnessKey.parse(made.stdout.strip())
        self.port2 = _free_port()
        self.process = subprocess.Popen(
            [
                *EXCHANGE,
                "witness",
                "serve",
                "--dir",
                str(directory),
                "--name",
                "witness.test/w2",
                "--listen",
                f"127.0.0.1:{self.port2}",
                "--log",
                log_vkey,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "w2.log").open("wb"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                post(f"http://127.0.0.1:{self.port2}/add-checkpoint", b"old 0\n\nx", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def keys(self) -> list[str]:
        return [str(WitnessKey.of("witness.test/w1", self.key1.public_bytes)), str(self.key2)]

    @property
    def config(self) -> str:
        return f"{self.w1.url} {self.keys[0]}, http://127.0.0.1:{self.port2} {self.keys[1]}"

    def stop(self) -> None:
        self.w1.stop()
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def witnesses(tmp_path: Path, keystore: object) -> Iterator[Witnesses]:
    from exchange.crypto.keystore import Keystore
    from exchange.ledger import verifier_key

    assert isinstance(keystore, Keystore)
    vkey = verifier_key(ORIGIN, keystore.hub_signing_key().public_bytes)
    running = Witnesses(tmp_path, vkey)
    yield running
    running.stop()


async def _cosigned(hub: RunningHub, size: int) -> None:
    for _ in range(200):
        latest = hub.server.hub.witnessing.latest_cosigned
        if latest is not None and latest.size >= size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the witnesses did not cosign")


async def test_witnessed_checkpoints_meet_the_policy(
    start_hub: StartHub, witnesses: Witnesses, tmp_path: Path
) -> None:
    from exchange.v1 import common_pb2

    hub = await start_hub(witnesses=witnesses.config, origin=ORIGIN)
    auditor = await hub.register("js.audit", (common_pb2.AUDITOR,))
    client = await hub.register("js.nj.civil-affairs")
    answer = await client.list_departments()
    await _cosigned(hub, answer.receipt.sequence + 1)
    verifier = hub.server.hub.ledger.verifier_key
    both = WitnessPolicy.parse(witnesses.keys, 2)
    watcher = Watcher(auditor, verifier, tmp_path / "trusted", both)
    advance = await watcher.check()
    assert advance.checkpoint.size > answer.receipt.sequence
    assert len(both.cosigners(advance.checkpoint.note)) == 2
    checkpoint = await watcher.check_receipt(answer.receipt)
    assert checkpoint.size > answer.receipt.sequence
    # a policy naming a witness that never saw this log refuses the checkpoint
    stranger = str(WitnessKey.of("witness.test/w3", SigningKey.generate().public_bytes))
    strict = WitnessPolicy.parse([*witnesses.keys, stranger], 3)
    with pytest.raises(QuorumError, match="2 of the 3"):
        await Watcher(auditor, verifier, tmp_path / "strict", strict).check()
    # each witness's state, for the metrics: what it cosigned, no failure since
    states = [(c.name, c.cosigned_size, c.failures) for c in hub.server.hub.witnessing.clients]
    assert [name for name, _, _ in states] == ["witness.test/w1", "witness.test/w2"]
    assert all(size > answer.receipt.sequence and not failed for _, size, failed in states)
    # the same from the command line: audit watch and check-receipt with the policy
    from google.protobuf import json_format

    from exchange.cli.main import main

    policy = [a for key in witnesses.keys for a in ("--witness", key)]
    common = ["--as", "js.audit", "--listen", hub.target, "--keys-dir", str(hub.keystore.root)]
    watch = ["audit", "watch", "--once", *common, "--state", str(tmp_path / "cli-state")]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*watch, *policy, "--quorum", "2"])
    assert result.exit_code == 0 and "ok: size 0 ->" in result.output, result.output
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*watch, *policy, "--witness", stranger]
    )
    assert result.exit_code == 1 and "missing: witness.test/w3" in result.output, result.output
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json_format.MessageToJson(answer.receipt))
    check = ["audit", "check-receipt", str(receipt), *common, "--state", str(tmp_path / "s2")]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*check, *policy])
    assert result.exit_code == 0 and "is in the hub's log" in result.output, result.output

    # Offline: the export's checkpoints carry the cosignatures.
    await hub.server.stop(grace=1)
    history = hub.server.hub.key_history()
    out = io.StringIO()
    export_ledger(
        hub.server.hub.engine, out, history, [verifier], operator_keys=first_keys(history, HUB_ID)
    )
    report = verify_export(
        io.StringIO(out.getvalue()), hub_keys=[verifier], witness_policy=both.require_quorum
    )
    assert report.ok, report.first_failure
    assert report.witnessed_size == report.entries  # the final checkpoint was cosigned too
    report = verify_export(
        io.StringIO(out.getvalue()), hub_keys=[verifier], witness_policy=strict.require_quorum
    )
    failure = report.first_failure
    assert failure is not None and failure.reason is FailureReason.WITNESS_QUORUM
    # and from the command line
    path = tmp_path / "export.jsonl"
    path.write_text(out.getvalue())
    from exchange.cli.audit import audit

    args = ["verify", str(path), "--hub-verifier-key", verifier]
    result = CliRunner().invoke(audit, [*args, *policy, "--quorum", "2"])
    assert result.exit_code == 0 and "witnessed: the checkpoint of size" in result.output
    result = CliRunner().invoke(audit, [*args, *policy, "--witness", stranger])
    assert result.exit_code == 1 and "WITNESS_QUORUM" in result.output, result.output


async def test_a_malformed_witness_setting_stops_the_hub_with_its_name(
    start_hub: StartHub,
) -> None:
    from exchange.config import ConfigError

    with pytest.raises(ConfigError, match="witnesses: each is"):
        await start_hub(witnesses="ftp://w1 key")
    with pytest.raises(ConfigError, match="witnesses: http://w1: a witness key is"):
        await start_hub(witnesses="http://w1 not-a-key")
