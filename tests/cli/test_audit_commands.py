"""`exchange audit export | verify | watch | check-receipt` against a real hub."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from google.protobuf import json_format

from exchange.cli.main import main
from exchange.v1 import common_pb2, registry_pb2
from tests.api.test_audit import checkpoint_covering
from tests.conftest import RunningHub, StartHub


def hub_args(hub: RunningHub) -> list[str]:
    return ["--listen", hub.target, "--keys-dir", str(hub.keystore.root)]


async def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, main, args, env=env, catch_exceptions=False)
    return result.exit_code, result.output


async def test_export_of_the_configured_hub_verifies_offline(
    start_hub: StartHub, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = await start_hub(url)
    client = await hub.register("js.nj.civil-affairs")
    for _ in range(3):
        await client.list_departments()
    verifier = hub.server.hub.ledger.verifier_key
    await hub.server.stop(grace=1)  # final checkpoint
    # The auditor holds public material only: the hub's public key, no secret of anyone's.
    public = tmp_path / "auditor-keys"
    (public / "hub").mkdir(parents=True)
    shutil.copy(hub.keystore.root / "hub" / "signing.pub", public / "hub" / "signing.pub")
    env = {"EXCHANGE_DATABASE_URL": url, "EXCHANGE_KEYS_DIR": str(public)}
    code, output = await invoke(["keys", "verifier"], env)
    assert code == 0 and output.strip() == verifier, output
    out = tmp_path / "export.jsonl"
    code, output = await invoke(["audit", "export", "--out", str(out)], env)
    assert code == 0, output
    assert "exported" in output
    # the department keys came from the database's registry, the operator's from signing.pub
    keys = [json.loads(line) for line in out.read_text().splitlines() if '"type":"key"' in line]
    assert {k["actor"] for k in keys} == {"hub", "js.nj.civil-affairs"}
    # with only the verifier key and the database URL, no keys directory at all
    bare = tmp_path / "bare.jsonl"
    code, output = await invoke(
        ["audit", "export", "--out", str(bare), "--hub-verifier-key", verifier],
        {"EXCHANGE_DATABASE_URL": url, "EXCHANGE_KEYS_DIR": str(tmp_path / "nothing")},
    )
    assert code == 0, output
    assert bare.read_text().split("\n")[1:] == out.read_text().split("\n")[1:]
    code, output = await invoke(["audit", "verify", str(out), "--hub-verifier-key", verifier])
    assert code == 0, output
    assert "\nvalid:" in output or output.startswith("valid:")
    # the operator's key, pinned apart from the hub's
    shutil.copytree(hub.keystore.operator_dir, public / "operator")
    (public / "operator" / "signing.key").unlink()
    code, operator = await invoke(["keys", "verifier", "--operator"], env)
    assert code == 0, operator
    pin = ["--hub-verifier-key", verifier, "--operator-key", operator.strip()]
    code, output = await invoke(["audit", "verify", str(out), *pin])
    assert code == 0 and "warning" not in output, output
    code, output = await invoke(
        ["audit", "verify", str(out), "--hub-verifier-key", verifier, "--operator-key", "00" * 32]
    )
    assert code == 1 and "UNREGISTERED_KEY" in output, output
    lines = out.read_text().splitlines()
    entries = [i for i, line in enumerate(lines) if '"type":"entry"' in line]
    del lines[entries[1]]  # an entry removed from the history
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    code, output = await invoke(["audit", "verify", str(tampered), "--hub-verifier-key", verifier])
    assert code == 1 and "INVALID: sequence 1" in output


async def test_watch_trusts_then_reports_a_fork_with_exit_3(
    start_hub: StartHub, tmp_path: Path
) -> None:
    honest = await start_hub(f"sqlite:///{tmp_path / 'a.db'}")
    await honest.register("js.audit", (common_pb2.AUDITOR,))
    await checkpoint_covering(honest, honest.server.hub.ledger.size())
    state = tmp_path / "trusted"
    args = [
        "audit",
        "watch",
        "--once",
        "--as",
        "js.audit",
        "--state",
        str(state),
        *hub_args(honest),
    ]
    code, output = await invoke(args)
    assert code == 0, output
    assert "ok: size 0 ->" in output and state.exists()
    await honest.server.stop(grace=1)

    forked = await start_hub(f"sqlite:///{tmp_path / 'b.db'}")
    await forked.operator.register_department(
        department=registry_pb2.Department(
            id="js.audit",
            name="Another audit office",
            roles=[common_pb2.AUDITOR],
            keys=[
                registry_pb2.DepartmentKey(
                    public_key=forked.keystore.department_signing_key("js.audit").public_bytes
                )
            ],
        )
    )
    for _ in range(4):
        await forked.client("js.audit").list_departments()
    await checkpoint_covering(forked, forked.server.hub.ledger.size())
    args = [
        "audit",
        "watch",
        "--once",
        "--as",
        "js.audit",
        "--state",
        str(state),
        *hub_args(forked),
    ]
    code, output = await invoke(args)
    assert code == 3, output
    assert "FORK" in output and "trusted checkpoint" in output


async def test_check_receipt_proves_a_departments_receipt(hub: RunningHub, tmp_path: Path) -> None:
    await hub.register("js.audit", (common_pb2.AUDITOR,))
    client = await hub.register("js.nj.civil-affairs")
    answer = await client.list_departments()
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json_format.MessageToJson(answer.receipt))
    state = tmp_path / "trusted"
    args = [
        "audit",
        "check-receipt",
        str(receipt),
        "--as",
        "js.audit",
        "--state",
        str(state),
        *hub_args(hub),
    ]
    code, output = await invoke(args)
    assert code == 0, output
    assert f"entry {answer.receipt.sequence} is in the hub's log" in output
    forged = common_pb2.Receipt()
    forged.CopyFrom(answer.receipt)
    forged.leaf_hash = bytes(32)
    receipt.write_text(json_format.MessageToJson(forged))
    code, output = await invoke(args)
    assert code == 1 and "INVALID" in output


async def test_watch_names_a_refusal_and_a_silent_hub_like_every_command(
    hub: RunningHub, tmp_path: Path
) -> None:
    hub.keystore.add_department("js.stranger")  # keys, but never registered
    args = ["audit", "watch", "--once", "--as", "js.stranger", "--state", str(tmp_path / "s")]
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, main, [*args, *hub_args(hub)])
    assert result.exit_code == 2, result.output  # the hub's decision
    assert result.stderr.startswith("refused: UNAUTHENTICATED "), result.stderr
    silent = ["--listen", "127.0.0.1:1", "--keys-dir", str(hub.keystore.root)]
    result = await asyncio.to_thread(runner.invoke, main, [*args, *silent])
    assert result.exit_code == 1, result.output  # nobody answered
    assert result.stderr.startswith("error: the hub at 127.0.0.1:1 did not answer"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
