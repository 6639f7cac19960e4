"""The operator's key apart from the hub's: the hub only verifies operator calls, the operator
rotates its key by a signed entry, an existing database migrates, and the verifier refuses
operator calls the hub signed itself."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import grpc
import pytest

from adapters.client import HubClient, Identity, Refused
from exchange.audit.verify import FailureReason, verify_export
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey, save_signing_key
from exchange.ledger import EntryDraft, Ledger
from exchange.ledger.export import export_ledger, first_keys
from exchange.store.engines import open_engine
from exchange.store.operator_keys import SELF_SIGNED_OVERLAP_US, OperatorKeys
from exchange.store.schema import upgrade
from exchange.v1 import common_pb2, ledger_pb2, registry_pb2
from tests.conftest import HUB_ID, RunningHub, StartHub
from tests.ledger.test_audit import _reforge


def _as_operator(hub: RunningHub, key: SigningKey) -> HubClient:
    return HubClient(
        hub.target, Identity(HUB_ID, key, hub.keystore.operator_tls()), server_name="localhost"
    )


def _export(hub: RunningHub) -> tuple[str, list[bytes], str]:
    history = hub.server.hub.key_history()
    out = io.StringIO()
    verifier = hub.server.hub.ledger.verifier_key
    export_ledger(
        hub.server.hub.engine, out, history, [verifier], operator_keys=first_keys(history, HUB_ID)
    )
    return out.getvalue(), first_keys(history, HUB_ID), verifier


async def test_the_hub_never_loads_the_operators_private_key(
    start_hub: StartHub, tmp_path: Path
) -> None:
    # The operator's private key is moved off the hub's machine: the hub still starts and
    # verifies the operator's calls with the public half.
    hub = await start_hub(f"sqlite:///{tmp_path / 'hub.db'}")
    operator_key = hub.keystore.operator_signing_key()
    moved = tmp_path / "operator-machine" / "signing.key"
    save_signing_key(moved, operator_key)
    (hub.keystore.operator_dir / "signing.key").unlink()
    await hub.server.stop(grace=1)
    hub = await start_hub(f"sqlite:///{tmp_path / 'hub.db'}")
    operator = _as_operator(hub, operator_key)
    answer = await operator.list_departments()
    assert answer.receipt.sequence >= 0
    await operator.close()
    # The hub's own key no longer signs as the operator.
    impostor = _as_operator(hub, hub.keystore.hub_signing_key())
    with pytest.raises(Refused) as caught:
        await impostor.list_departments()
    await impostor.close()
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNKNOWN_KEY",
    )


async def test_operator_rotates_its_key_with_an_overlap(hub: RunningHub) -> None:
    old_key = hub.keystore.operator_signing_key()
    new_key = SigningKey.generate()
    old = _as_operator(hub, old_key)
    answer = await old.rotate_key(
        department_id=HUB_ID, new_public_key=new_key.public_bytes, grace_seconds=3600
    )
    assert {k.keyid for k in answer.department.keys} == {old_key.keyid, new_key.keyid}
    entry = ledger_pb2.LedgerEntry.FromString(
        hub.server.hub.ledger.entries(answer.receipt.sequence, 1)[0].entry_bytes
    )
    assert entry.kind == ledger_pb2.KEY_ROTATION and entry.counterparty == HUB_ID
    assert entry.attributes["keyid"] == new_key.keyid
    # both keys sign during the overlap
    new = _as_operator(hub, new_key)
    for client in (old, new):
        await client.list_departments()
    # the hub's key cannot become the operator's
    with pytest.raises(Refused) as caught:
        await new.rotate_key(
            department_id=HUB_ID, new_public_key=hub.keystore.hub_signing_key().public_bytes
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # a rotation without grace ends the other keys at once
    newest = SigningKey.generate()
    await new.rotate_key(department_id=HUB_ID, new_public_key=newest.public_bytes)
    # (the keys it ends sign for one more second, so the rotation's own entry is in their
    # validity: exchange.store.operator_keys)
    await asyncio.sleep(SELF_SIGNED_OVERLAP_US / 1e6 + 0.1)
    with pytest.raises(Refused) as caught:
        await old.list_departments()
    assert caught.value.reason == "KEY_EXPIRED"
    for client in (old, new):
        await client.close()
    latest = _as_operator(hub, newest)
    await latest.list_departments()
    await latest.close()


async def test_verifier_follows_operator_rotations(hub: RunningHub) -> None:
    old_key = hub.keystore.operator_signing_key()
    new_key = SigningKey.generate()
    old = _as_operator(hub, old_key)
    await old.rotate_key(department_id=HUB_ID, new_public_key=new_key.public_bytes)
    await old.close()
    new = _as_operator(hub, new_key)
    await new.list_departments()
    await new.close()
    await hub.server.stop(grace=1)
    text, roots, verifier = _export(hub)
    report = verify_export(io.StringIO(text), hub_keys=[verifier], operator_keys=roots, workers=0)
    assert report.ok, report.first_failure
    # pinned to another operator key, the same export does not verify
    report = verify_export(
        io.StringIO(text),
        hub_keys=[verifier],
        operator_keys=[SigningKey.generate().public_bytes],
        workers=0,
    )
    assert not report.ok


async def test_operator_call_signed_by_the_hub_key_is_caught_offline(hub: RunningHub) -> None:
    # A compromised hub registers a department key of its own, signing the "operator's"
    # registration with the hub key it holds, re-chains and re-signs every checkpoint.
    await hub.register("js.nj.civil-affairs")
    await hub.server.stop(grace=1)
    text, roots, verifier = _export(hub)
    lines = text.splitlines(keepends=True)
    hub_key = hub.keystore.hub_signing_key()
    rogue = SigningKey.generate()
    forged_at = next(
        entry.sequence
        for entry in (
            ledger_pb2.LedgerEntry.FromString(base64.b64decode(json.loads(line)["entry"]))
            for line in lines
            if '"type":"entry"' in line
        )
        if entry.kind == ledger_pb2.DEPARTMENT_REGISTRATION
    )

    def register_rogue(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        header = common_pb2.RequestHeader(request_id=entry.request_id, department_id=HUB_ID)
        header.issued_at.FromDatetime(entry.time.ToDatetime())
        department = registry_pb2.Department(id=entry.counterparty, name="x")
        department.keys.add(public_key=rogue.public_bytes)
        body = registry_pb2.RegisterDepartmentRequest(header=header, department=department)
        entry.attributes["keyid"] = rogue.keyid
        return sign(
            body.SerializeToString(), body.DESCRIPTOR.full_name, hub_key
        ).SerializeToString()

    out = _reforge(lines, hub_key, {forged_at: register_rogue}, hub.config.origin)
    # the hub also claims its own key as an operator key in the key records
    out.insert(
        1,
        json.dumps(
            {
                "type": "key",
                "actor": HUB_ID,
                "keyid": hub_key.keyid,
                "public_key": base64.b64encode(hub_key.public_bytes).decode(),
                "valid_from": "1970-01-01T00:00:00.000000Z",
                "valid_until": None,
                "revoked_at": None,
            }
        )
        + "\n",
    )
    report = verify_export(
        io.StringIO("".join(out)), hub_keys=[verifier], operator_keys=roots, workers=0
    )
    failure = report.first_failure
    assert failure is not None
    assert (failure.sequence, failure.reason) == (forged_at, FailureReason.UNREGISTERED_KEY)
    assert "operator" in failure.message


async def test_an_existing_database_migrates_to_the_operators_own_key(
    start_hub: StartHub, tmp_path: Path
) -> None:
    # A database written before the operator's key was apart: the hub key signed the
    # operator's registration, and no operator key is recorded.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = open_engine(url)
    upgrade(engine)
    first = await start_hub(f"sqlite:///{tmp_path / 'scratch.db'}")  # only for its keystore
    keystore = first.keystore
    await first.server.stop(grace=1)
    hub_key = keystore.hub_signing_key()
    ledger = Ledger(engine, hub_key, "exchange.local/hub")
    await ledger.start()
    header = common_pb2.RequestHeader(request_id="old-op-1", department_id=HUB_ID)
    header.issued_at.GetCurrentTime()
    body = registry_pb2.ListDepartmentsRequest(header=header)
    await ledger.append(
        EntryDraft(
            kind=ledger_pb2.READ, actor=HUB_ID, outcome=ledger_pb2.OK, request_id="old-op-1"
        ),
        sign(body.SerializeToString(), body.DESCRIPTOR.full_name, hub_key).SerializeToString(),
    )
    await ledger.close()
    assert OperatorKeys(engine, HUB_ID).all() == []
    engine.dispose()

    hub = await start_hub(url, origin="exchange.local/hub")
    keys = hub.server.hub.operator_keys.all()
    assert [k.public_key for k in keys] == [
        hub_key.public_bytes,
        keystore.operator_signing_key().public_bytes,
    ]
    adoption = ledger_pb2.LedgerEntry.FromString(hub.server.hub.ledger.entries(1, 1)[0].entry_bytes)
    assert adoption.kind == ledger_pb2.KEY_ROTATION and adoption.actor == HUB_ID
    assert adoption.attributes["keyid"] == keys[1].keyid
    await hub.register("js.nj.civil-affairs")  # the operator's own key now
    await hub.server.stop(grace=1)
    text, roots, verifier = _export(hub)
    assert roots == [hub_key.public_bytes]  # the log's first operator key was the hub's
    report = verify_export(io.StringIO(text), hub_keys=[verifier], operator_keys=roots, workers=0)
    assert report.ok, report.first_failure


async def test_cli_rotates_the_operators_key(hub: RunningHub) -> None:
    from click.testing import CliRunner

    from exchange.cli.main import main

    before = hub.keystore.operator_signing_key()
    args = ["--listen", hub.target, "--keys-dir", str(hub.keystore.root)]
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["registry", "rotate-operator-key", *args]
    )
    assert result.exit_code == 0, result.output
    after = hub.keystore.operator_signing_key()
    assert after.keyid != before.keyid and f"operator key {after.keyid[:16]}" in result.output
    assert not (hub.keystore.operator_dir / "signing.next.key").exists()
    result = await asyncio.to_thread(CliRunner().invoke, main, ["registry", "list", *args])
    assert result.exit_code == 0, result.output


async def test_log_key_rotates_with_an_overlap(start_hub: StartHub, tmp_path: Path) -> None:
    from exchange.ledger import verifier_key, verify_checkpoint
    from exchange.ledger.checkpoint import CheckpointError

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = await start_hub(url)
    await hub.register("js.nj.civil-affairs")
    old_vkey = hub.server.hub.ledger.verifier_key
    operator = hub.operator
    origin = hub.config.origin
    # the operator cannot approve a key the hub does not hold
    with pytest.raises(Refused) as caught:
        await operator.rotate_key(
            department_id=origin, new_public_key=SigningKey.generate().public_bytes
        )
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    next_key = hub.keystore.init_next_hub_key()
    new_vkey = verifier_key(origin, next_key.public_bytes)
    answer = await operator.rotate_key(department_id=origin, new_public_key=next_key.public_bytes)
    entry = ledger_pb2.LedgerEntry.FromString(
        hub.server.hub.ledger.entries(answer.receipt.sequence, 1)[0].entry_bytes
    )
    assert entry.kind == ledger_pb2.KEY_ROTATION and entry.counterparty == origin
    assert entry.attributes["log_key"] == new_vkey
    await operator.list_departments()

    async def latest_signed_by_both() -> None:
        for _ in range(100):
            latest = hub.server.hub.ledger.latest_checkpoint()
            if latest is not None and latest.size > answer.receipt.sequence:
                verify_checkpoint(latest.note, [old_vkey])
                verify_checkpoint(latest.note, [new_vkey])
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no checkpoint after the rotation")

    await latest_signed_by_both()
    # a restarted hub resumes the overlap
    await hub.server.stop(grace=1)
    hub = await start_hub(url)
    await hub.operator.list_departments()
    await latest_signed_by_both()
    # after the overlap the next key becomes the key: only it signs
    await hub.server.stop(grace=1)
    hub_dir = hub.keystore.hub_dir
    (hub_dir / "signing.next.key").replace(hub_dir / "signing.key")
    (hub_dir / "signing.next.pub").replace(hub_dir / "signing.pub")
    hub = await start_hub(url)
    await hub.operator.list_departments()
    await hub.server.stop(grace=1)
    latest = hub.server.hub.ledger.latest_checkpoint()
    assert latest is not None
    verify_checkpoint(latest.note, [new_vkey])
    with pytest.raises(CheckpointError):
        verify_checkpoint(latest.note, [old_vkey])
    # the whole log verifies with both verifier keys pinned
    history = hub.server.hub.key_history()
    out = io.StringIO()
    export_ledger(
        hub.server.hub.engine, out, history, [new_vkey], operator_keys=first_keys(history, HUB_ID)
    )
    report = verify_export(io.StringIO(out.getvalue()), hub_keys=[old_vkey, new_vkey], workers=0)
    assert report.ok, report.first_failure
