"""Export and offline verification: a valid log verifies; every tampering is detected."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from exchange.cli.audit import audit
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, LedgerConfig, sign_checkpoint, verifier_key
from exchange.ledger import verify as verify_module
from exchange.ledger.entry import envelope_hash
from exchange.ledger.export import KeyRecord, export_ledger
from exchange.ledger.verify import FailureReason, Report, verify_export
from exchange.store.database import open_engine, upgrade
from exchange.v1 import ledger_pb2

from .support import ORIGIN, draft

A, B = "js.nj.civil-affairs", "js.nj.public-security"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass
class World:
    engine: Engine
    hub: SigningKey
    keys: dict[str, SigningKey]
    history: list[KeyRecord]
    rotation: datetime

    @property
    def hub_vkey(self) -> str:
        return verifier_key(ORIGIN, self.hub.public_bytes)

    def export(self) -> list[str]:
        out = io.StringIO()
        export_ledger(self.engine, out, self.history, [self.hub_vkey])
        return out.getvalue().splitlines(keepends=True)


def _envelope(key: SigningKey, text: str) -> bytes:
    return sign(text.encode(), "exchange.v1.CheckRequest", key).SerializeToString()


async def _build(engine: Engine, hub: SigningKey, salt: str = "") -> World:
    keys = {"a1": SigningKey.generate(), "a2": SigningKey.generate(), "b": SigningKey.generate()}
    ledger = Ledger(engine, hub, ORIGIN, LedgerConfig(checkpoint_every=7, max_batch=4))
    await ledger.start()
    for i in range(12):
        await ledger.append(
            draft(i, actor=A, request_id=f"req-{salt}{i}"), _envelope(keys["a1"], f"a{i}")
        )
    await ledger.append(draft(12, actor=B), _envelope(keys["b"], "b12"))
    # a refused call whose envelope signature is bad: recorded, only its hash must match
    refused = _envelope(keys["b"], "forged").replace(b"forged", b"FORGED")
    await ledger.append(draft(13, actor=A, outcome=ledger_pb2.REFUSED, reason=10), refused)
    await asyncio.sleep(0.002)
    rotation = datetime.now(UTC)
    await asyncio.sleep(0.002)
    await asyncio.gather(
        *(ledger.append(draft(i, actor=A), _envelope(keys["a2"], f"a{i}")) for i in range(14, 30))
    )
    await ledger.append(draft(30, actor=B))  # no envelope
    await ledger.close()
    history = [
        KeyRecord(A, keys["a1"].keyid, keys["a1"].public_bytes, LONG_AGO, valid_until=rotation),
        KeyRecord(A, keys["a2"].keyid, keys["a2"].public_bytes, rotation),
        KeyRecord(B, keys["b"].keyid, keys["b"].public_bytes, LONG_AGO),
    ]
    return World(engine, hub, keys, history, rotation)


@pytest.fixture
async def world(engine: Engine, hub_key: SigningKey) -> World:
    return await _build(engine, hub_key)


def _verify(lines: list[str], **kw: object) -> Report:
    return verify_export(io.StringIO("".join(lines)), **kw)  # type: ignore[arg-type]


def _entry_index(lines: list[str], sequence: int) -> int:
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record["type"] == "entry" and record["sequence"] == sequence:
            return i
    raise AssertionError(sequence)


def _rewrite(
    lines: list[str], index: int, change: Callable[[dict[str, object]], None]
) -> list[str]:
    record = json.loads(lines[index])
    change(record)
    out = list(lines)
    out[index] = json.dumps(record, separators=(",", ":")) + "\n"
    return out


def _assert_fails(report: Report, sequence: int | None, reason: FailureReason) -> None:
    failure = report.first_failure
    assert failure is not None, "tampering not detected"
    assert (failure.sequence, failure.reason) == (sequence, reason), str(failure)


def test_valid_export_verifies(world: World) -> None:
    lines = world.export()
    report = _verify(lines, hub_keys=[world.hub_vkey])
    assert report.ok, report.first_failure
    assert report.entries == report.size == 31
    assert report.checkpoints >= 4
    assert report.signatures == 29  # OK entries with envelopes; the refused one is not checked
    header = json.loads(lines[0])
    assert header["format"] == "exchange-ledger-export" and header["origin"] == ORIGIN


def test_verification_in_a_process_pool_finds_the_same(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "CHUNK", 4)
    lines = world.export()
    assert _verify(lines, workers=2).ok
    index = _entry_index(lines, 21)
    bad = _rewrite(lines, index, lambda r: r.update(envelope=base64.b64encode(b"x").decode()))
    _assert_fails(_verify(bad, workers=2), 21, FailureReason.ENVELOPE_HASH_MISMATCH)


def test_changed_byte_in_an_entry_is_detected(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, 5)

    def change(record: dict[str, object]) -> None:
        data = base64.b64decode(str(record["entry"]))
        record["entry"] = base64.b64encode(data.replace(b"req-5", b"req-6")).decode()

    _assert_fails(_verify(_rewrite(lines, index, change)), 5, FailureReason.CHAIN_BROKEN)


def test_changed_byte_in_the_last_entry_breaks_the_checkpoint_root(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, 30)

    def change(record: dict[str, object]) -> None:
        data = bytearray(base64.b64decode(str(record["entry"])))
        data[data.index(b"req-30") + 4] ^= 0x01
        record["entry"] = base64.b64encode(bytes(data)).decode()

    _assert_fails(_verify(_rewrite(lines, index, change)), 30, FailureReason.ROOT_MISMATCH)


def test_changed_byte_in_an_envelope_is_detected(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, 3)

    def change(record: dict[str, object]) -> None:
        data = bytearray(base64.b64decode(str(record["envelope"])))
        data[-1] ^= 0x01
        record["envelope"] = base64.b64encode(bytes(data)).decode()

    _assert_fails(_verify(_rewrite(lines, index, change)), 3, FailureReason.ENVELOPE_HASH_MISMATCH)


def test_changed_byte_in_a_checkpoint_is_detected(world: World) -> None:
    lines = world.export()
    index = next(i for i, line in enumerate(lines) if '"type":"checkpoint"' in line)
    size = json.loads(lines[index])["size"]

    def change(record: dict[str, object]) -> None:
        note = str(record["note"])
        root_line = note.split("\n")[2]
        flipped = root_line[:5] + ("A" if root_line[5] != "A" else "B") + root_line[6:]
        record["note"] = note.replace(root_line, flipped)

    _assert_fails(
        _verify(_rewrite(lines, index, change)), size - 1, FailureReason.BAD_CHECKPOINT_SIGNATURE
    )


def test_deleted_entry_is_detected(world: World) -> None:
    lines = world.export()
    del lines[_entry_index(lines, 9)]
    _assert_fails(_verify(lines), 9, FailureReason.SEQUENCE_GAP)


def test_swapped_entries_are_detected(world: World) -> None:
    lines = world.export()
    i, j = _entry_index(lines, 16), _entry_index(lines, 17)
    lines[i], lines[j] = lines[j], lines[i]
    _assert_fails(_verify(lines), 16, FailureReason.SEQUENCE_GAP)


def test_truncated_log_is_detected(world: World) -> None:
    lines = world.export()
    cut = lines[: _entry_index(lines, 20)]
    _assert_fails(_verify(cut), 20, FailureReason.TRUNCATED)
    # a cut mid-line is malformed, not silently short
    partial = [*lines[: _entry_index(lines, 20)], lines[_entry_index(lines, 20)][:30]]
    assert not _verify(partial).ok


def test_entry_resigned_with_another_departments_key_is_detected(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, 4)
    forged = _envelope(world.keys["b"], "a4")

    def change(record: dict[str, object]) -> None:
        # the forger also fixes the entry's envelope hash so the envelope check passes
        entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(str(record["entry"])))
        entry.envelope_hash = envelope_hash(forged)
        record["entry"] = base64.b64encode(entry.SerializeToString(deterministic=True)).decode()
        record["envelope"] = base64.b64encode(forged).decode()

    _assert_fails(_verify(_rewrite(lines, index, change)), 4, FailureReason.NO_VALID_KEY)


async def test_key_validity_follows_the_entry_time(engine: Engine, hub_key: SigningKey) -> None:
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    await ledger.append(draft(31, actor=A), _envelope(world.keys["a1"], "late"))
    await ledger.close()
    _assert_fails(_verify(world.export()), 31, FailureReason.NO_VALID_KEY)
    revoked = [
        KeyRecord(
            A,
            world.keys["a1"].keyid,
            world.keys["a1"].public_bytes,
            LONG_AGO,
            revoked_at=world.rotation - timedelta(days=1),
        ),
        *world.history[1:],
    ]
    world.history = revoked
    _assert_fails(_verify(world.export()), 0, FailureReason.NO_VALID_KEY)


def test_checkpoint_signed_by_another_key_is_detected(world: World) -> None:
    lines = world.export()
    index = next(i for i, line in enumerate(lines) if '"type":"checkpoint"' in line)
    record = json.loads(lines[index])
    from exchange.ledger import Checkpoint

    original = Checkpoint.parse(record["note"])
    rogue = SigningKey.generate()
    forged = sign_checkpoint(ORIGIN, original.size, original.root_hash, rogue, ORIGIN)
    bad = _rewrite(lines, index, lambda r: r.update(note=forged.note))
    _assert_fails(_verify(bad), original.size - 1, FailureReason.BAD_CHECKPOINT_SIGNATURE)
    # the forger also declares his key in the header: pinning the hub key still catches it
    bad = _rewrite(bad, 0, lambda r: r.update(hub_keys=[verifier_key(ORIGIN, rogue.public_bytes)]))
    _assert_fails(
        _verify(bad, hub_keys=[world.hub_vkey]),
        original.size - 1,
        FailureReason.BAD_CHECKPOINT_SIGNATURE,
    )


async def test_forked_history_is_detected_against_a_trusted_checkpoint(
    tmp_path: Path, world: World
) -> None:
    trusted = Ledger(world.engine, world.hub, ORIGIN).checkpoint_at(14)
    # The same hub key rewrites history in another database: self-consistent, re-signed.
    other = open_engine(f"sqlite:///{tmp_path / 'fork.db'}")
    upgrade(other)
    fork = await _build(other, world.hub, salt="x")
    lines = fork.export()
    assert _verify(lines).ok  # on its own the fork is a valid log
    _assert_fails(
        _verify(lines, trusted_checkpoint=trusted.note, hub_keys=[world.hub_vkey]),
        13,
        FailureReason.TRUSTED_CHECKPOINT_MISMATCH,
    )
    assert _verify(world.export(), trusted_checkpoint=trusted.note).ok
    other.dispose()


def test_cli_export_and_verify(tmp_path: Path, world: World, db_url: str) -> None:
    runner = CliRunner()
    history = tmp_path / "keys.json"
    from exchange.ledger.export import key_record_json

    history.write_text(json.dumps([key_record_json(k) for k in world.history]))
    out = tmp_path / "ledger.jsonl"
    result = runner.invoke(
        audit,
        [
            "export",
            "--out",
            str(out),
            "--database-url",
            db_url,
            "--key-history",
            str(history),
            "--hub-verifier-key",
            world.hub_vkey,
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(audit, ["verify", str(out), "--hub-verifier-key", world.hub_vkey])
    assert result.exit_code == 0, result.output
    assert "valid: 31 entries" in result.output
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(Ledger(world.engine, world.hub, ORIGIN).checkpoint_at(14).note)
    result = runner.invoke(audit, ["verify", str(out), "--trusted-checkpoint", str(trusted)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines(keepends=True)
    del lines[_entry_index(lines, 9)]
    out.write_text("".join(lines))
    result = runner.invoke(audit, ["verify", str(out)])
    assert result.exit_code == 1
    assert "sequence 9: SEQUENCE_GAP" in result.output


def test_cli_export_takes_engine_key_history_and_hub_key_from_the_context(
    tmp_path: Path, world: World
) -> None:
    out = tmp_path / "ledger.jsonl"
    obj = {
        "engine": world.engine,
        "key_history": lambda engine: world.history,
        "hub_key": world.hub,
    }
    result = CliRunner().invoke(audit, ["export", "--out", str(out)], obj=obj)
    assert result.exit_code == 0, result.output
    report = verify_export(out.open(), hub_keys=[world.hub_vkey])
    assert report.ok, report.first_failure


def test_checkpoint_right_after_a_chunk_boundary_is_checked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = world.export()
    first = next(json.loads(line) for line in lines if '"type":"checkpoint"' in line)
    monkeypatch.setattr(verify_module, "CHUNK", first["size"])
    assert _verify(lines, workers=0).ok
    index = next(i for i, line in enumerate(lines) if '"type":"checkpoint"' in line)
    rogue = sign_checkpoint(ORIGIN, first["size"], bytes(32), world.hub, ORIGIN)
    bad = _rewrite(lines, index, lambda r: r.update(note=rogue.note))
    _assert_fails(_verify(bad, workers=0), first["size"] - 1, FailureReason.ROOT_MISMATCH)
