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

from exchange.audit import verify as verify_module
from exchange.audit.verify import FailureReason, Report, verify_export
from exchange.cli.audit import audit
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.ledger import EntryDraft, Ledger, LedgerConfig, merkle, sign_checkpoint, verifier_key
from exchange.ledger.entry import envelope_hash
from exchange.ledger.export import KeyRecord, export_ledger
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from exchange.v1 import common_pb2, envelope_pb2, exchange_pb2, ledger_pb2, registry_pb2

from .support import ORIGIN, draft

A, B, HUB = "js.nj.civil-affairs", "js.nj.public-security", "hub"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Where things are in the world's log: the operator registers A (key a1) and B (key b), A calls
# twelve times (req-0 … req-11), B once, A is refused once, the operator rotates A's key to a2,
# A calls sixteen times with a2 (req-14 … req-29), B once more (req-30).
REGISTER_A, REGISTER_B, ROTATE_A, LAST = 0, 1, 16, 33


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


def _header(department: str, request_id: str) -> common_pb2.RequestHeader:
    header = common_pb2.RequestHeader(request_id=request_id, department_id=department)
    header.issued_at.GetCurrentTime()
    return header


def _envelope(key: SigningKey, department: str, request_id: str) -> bytes:
    """A department's signed Check call."""
    body = exchange_pb2.CheckRequest(
        header=_header(department, request_id), material_type="household-registration"
    )
    return sign(body.SerializeToString(), "exchange.v1.CheckRequest", key).SerializeToString()


def _registration(
    hub: SigningKey, department: str, key: SigningKey, request_id: str, rotate: bool = False
) -> tuple[EntryDraft, bytes]:
    """The operator's signed registration (or rotation) of ``key`` for ``department``."""
    header = _header(HUB, request_id)
    kind, body_type = ledger_pb2.DEPARTMENT_REGISTRATION, "exchange.v1.RegisterDepartmentRequest"
    if rotate:
        kind, body_type = ledger_pb2.KEY_ROTATION, "exchange.v1.RotateKeyRequest"
        payload = registry_pb2.RotateKeyRequest(
            header=header, department_id=department, new_public_key=key.public_bytes
        ).SerializeToString()
    else:
        registered = registry_pb2.Department(id=department, name=department)
        registered.keys.add(public_key=key.public_bytes)
        payload = registry_pb2.RegisterDepartmentRequest(
            header=header, department=registered
        ).SerializeToString()
    entry = draft(
        0,
        actor=HUB,
        kind=kind,
        request_id=request_id,
        counterparty=department,
        material_type="",
        attributes={"keyid": key.keyid},
    )
    return entry, sign(payload, body_type, hub).SerializeToString()


def _revocation(
    hub: SigningKey, department: str, keyid: str, request_id: str
) -> tuple[EntryDraft, bytes]:
    """The operator's signed revocation of a department's key."""
    body = registry_pb2.RevokeKeyRequest(
        header=_header(HUB, request_id), department_id=department, keyid=keyid
    )
    envelope = sign(body.SerializeToString(), "exchange.v1.RevokeKeyRequest", hub)
    entry = draft(
        0,
        actor=HUB,
        kind=ledger_pb2.KEY_REVOCATION,
        request_id=request_id,
        counterparty=department,
        material_type="",
        attributes={"keyid": keyid},
    )
    return entry, envelope.SerializeToString()


async def _build(engine: Engine, hub: SigningKey, salt: str = "") -> World:
    keys = {"a1": SigningKey.generate(), "a2": SigningKey.generate(), "b": SigningKey.generate()}
    ledger = Ledger(engine, hub, ORIGIN, LedgerConfig(checkpoint_every=7, max_batch=4))
    await ledger.start()
    await ledger.append(*_registration(hub, A, keys["a1"], f"op-{salt}1"))
    await ledger.append(*_registration(hub, B, keys["b"], f"op-{salt}2"))
    for i in range(12):
        rid = f"req-{salt}{i}"
        await ledger.append(draft(i, actor=A, request_id=rid), _envelope(keys["a1"], A, rid))
    await ledger.append(draft(12, actor=B), _envelope(keys["b"], B, "req-12"))
    # a refused call whose envelope signature is bad: recorded, only its hash must match
    refused = _envelope(keys["b"], A, "req-13").replace(b"req-13", b"REQ-13")
    await ledger.append(draft(13, actor=A, outcome=ledger_pb2.REFUSED, reason=10), refused)
    await ledger.append(*_registration(hub, A, keys["a2"], f"op-{salt}3", rotate=True))
    await asyncio.sleep(0.002)
    rotation = datetime.now(UTC)
    await asyncio.sleep(0.002)
    await asyncio.gather(
        *(
            ledger.append(draft(i, actor=A), _envelope(keys["a2"], A, f"req-{i}"))
            for i in range(14, 30)
        )
    )
    await ledger.append(draft(30, actor=B), _envelope(keys["b"], B, "req-30"))
    await ledger.close()
    history = [
        KeyRecord(HUB, hub.keyid, hub.public_bytes, EPOCH),
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
    assert report.entries == report.size == LAST + 1
    assert report.checkpoints >= 4
    assert report.signatures == LAST  # every OK entry; the refused one is not checked
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


def _flip_material_type(record: dict[str, object]) -> None:
    data = base64.b64decode(str(record["entry"]))
    changed = data.replace(b"household-registration", b"household-registrbtion")
    assert changed != data
    record["entry"] = base64.b64encode(changed).decode()


def _shift_time(record: dict[str, object]) -> None:
    """An outside editor's change to a field only the hub vouches for: the entry's time."""
    entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(str(record["entry"])))
    entry.time.nanos = (entry.time.nanos + 1) % 1_000_000_000
    record["entry"] = base64.b64encode(entry.SerializeToString(deterministic=True)).decode()


def test_changed_byte_in_an_entry_is_detected(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, 7)
    _assert_fails(_verify(_rewrite(lines, index, _shift_time)), 7, FailureReason.CHAIN_BROKEN)
    # a change to what the department signed is named as such, and breaks the chain too
    report = _verify(_rewrite(lines, index, _flip_material_type))
    _assert_fails(report, 7, FailureReason.ENVELOPE_ENTRY_MISMATCH)
    assert (7, FailureReason.CHAIN_BROKEN) in [(f.sequence, f.reason) for f in report.failures]


def test_changed_byte_in_the_last_entry_breaks_the_checkpoint_root(world: World) -> None:
    lines = world.export()
    index = _entry_index(lines, LAST)
    _assert_fails(_verify(_rewrite(lines, index, _shift_time)), LAST, FailureReason.ROOT_MISMATCH)


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
    index = _entry_index(lines, 6)
    forged = _envelope(world.keys["b"], A, "req-4")

    def change(record: dict[str, object]) -> None:
        # the forger also fixes the entry's envelope hash so the envelope check passes
        entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(str(record["entry"])))
        entry.envelope_hash = envelope_hash(forged)
        record["entry"] = base64.b64encode(entry.SerializeToString(deterministic=True)).decode()
        record["envelope"] = base64.b64encode(forged).decode()

    _assert_fails(_verify(_rewrite(lines, index, change)), 6, FailureReason.NO_VALID_KEY)


async def test_key_validity_follows_the_entry_time(engine: Engine, hub_key: SigningKey) -> None:
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    await ledger.append(draft(31, actor=A), _envelope(world.keys["a1"], A, "req-31"))
    await ledger.close()
    _assert_fails(_verify(world.export()), LAST + 1, FailureReason.NO_VALID_KEY)
    revoked = [
        world.history[0],
        KeyRecord(
            A,
            world.keys["a1"].keyid,
            world.keys["a1"].public_bytes,
            LONG_AGO,
            revoked_at=world.rotation - timedelta(days=1),
        ),
        *world.history[2:],
    ]
    world.history = revoked
    _assert_fails(_verify(world.export()), REGISTER_B + 1, FailureReason.NO_VALID_KEY)


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
    assert f"valid: {LAST + 1} entries" in result.output
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


# ---------------------------------------------------------------- a dishonest hub
#
# The hub holds the hub key: it can rewrite entries, re-chain them and re-sign every
# checkpoint, so the export is self-consistent. What it cannot do is sign as a department or as
# the operator key the auditor pinned; these tests check that what it can do is still caught.

Change = Callable[[ledger_pb2.LedgerEntry, bytes], bytes]


def _reforge(
    lines: list[str], hub: SigningKey, changes: dict[int, Change], origin: str = ORIGIN
) -> list[str]:
    """Apply ``changes`` (by sequence: alter the entry in place, return the new envelope), then
    re-chain every entry and re-sign every checkpoint of ``origin`` with the hub key."""
    out: list[str] = []
    leaves: list[bytes] = []
    prev = bytes(32)
    for line in lines:
        record = json.loads(line)
        if record["type"] == "entry":
            entry = ledger_pb2.LedgerEntry.FromString(base64.b64decode(record["entry"]))
            envelope = base64.b64decode(record["envelope"])
            change = changes.get(entry.sequence)
            if change is not None:
                envelope = change(entry, envelope)
            entry.envelope_hash = envelope_hash(envelope)
            entry.prev_leaf_hash = prev
            data = entry.SerializeToString(deterministic=True)
            prev = merkle.leaf_hash(data)
            leaves.append(prev)
            record["entry"] = base64.b64encode(data).decode()
            record["envelope"] = base64.b64encode(envelope).decode()
        elif record["type"] == "checkpoint":
            size = record["size"]
            record["note"] = sign_checkpoint(
                origin, size, merkle.root(leaves[:size]), hub, origin
            ).note
        out.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
    assert set(changes) <= set(range(len(leaves)))
    return out


def _envelope_of(lines: list[str], sequence: int) -> bytes:
    return base64.b64decode(json.loads(lines[_entry_index(lines, sequence)])["envelope"])


def test_the_reforged_export_itself_verifies(world: World) -> None:
    lines = world.export()
    assert _reforge(lines, world.hub, {}) == lines

    # a rewrite of what only the hub vouches for (the reference), re-chained and re-signed,
    # verifies: the tests below fail for what they change, not for the reforging
    def harmless(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.reference = "r-forged"
        return envelope

    assert _verify(_reforge(lines, world.hub, {5: harmless}), hub_keys=[world.hub_vkey]).ok


def test_envelope_of_another_request_beside_an_entry_is_detected(world: World) -> None:
    lines = world.export()
    other = _envelope_of(lines, 4)  # A's signed req-2, valid under the same key
    forged = _reforge(lines, world.hub, {3: lambda entry, envelope: other})
    report = _verify(forged, hub_keys=[world.hub_vkey])
    _assert_fails(report, 3, FailureReason.ENVELOPE_ENTRY_MISMATCH)
    assert "req-2" in str(report.first_failure)


def test_envelope_of_another_department_beside_an_entry_is_detected(world: World) -> None:
    lines = world.export()
    # A signed a request in B's name (the hub refused it: the certificate names A); the hub
    # keeps it and records it as an OK call of A.
    claimed = _envelope(world.keys["a1"], B, "req-3")
    forged = _reforge(lines, world.hub, {5: lambda entry, envelope: claimed})
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey]), 5, FailureReason.ENVELOPE_ENTRY_MISMATCH
    )

    # the same envelope beside a rewritten entry of B is not B's signature
    def as_b(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.actor = B
        return claimed

    forged = _reforge(lines, world.hub, {5: as_b})
    _assert_fails(_verify(forged, hub_keys=[world.hub_vkey]), 5, FailureReason.NO_VALID_KEY)


def test_registration_whose_body_names_another_key_is_detected(world: World) -> None:
    lines = world.export()
    # the operator's registration of B placed beside the entry registering A
    of_b = _envelope_of(lines, REGISTER_B)

    def swap(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.request_id = "op-2"
        return of_b

    forged = _reforge(lines, world.hub, {REGISTER_A: swap})
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey]),
        REGISTER_A,
        FailureReason.ENVELOPE_ENTRY_MISMATCH,
    )


async def test_backdated_entry_is_detected(engine: Engine, hub_key: SigningKey) -> None:
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    # a call signed with A's rotated-out key: refused by a verifier (its time is after the end
    # of the key's validity) …
    await ledger.append(draft(31, actor=A), _envelope(world.keys["a1"], A, "req-31"))
    await ledger.close()
    lines = world.export()
    _assert_fails(_verify(lines), LAST + 1, FailureReason.NO_VALID_KEY)

    # … so the hub backdates it into the key's validity window, re-chains and re-signs
    def backdate(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        moment = world.rotation - timedelta(seconds=1)
        entry.time.FromDatetime(moment)
        return envelope

    forged = _reforge(lines, world.hub, {LAST + 1: backdate})
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey]), LAST + 1, FailureReason.TIME_REGRESSION
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_ok_entry_without_its_envelope_is_detected(
    world: World, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "CHUNK", 4)
    lines = world.export()
    forged = _reforge(lines, world.hub, {9: lambda entry, envelope: b""})
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey], workers=workers),
        9,
        FailureReason.MISSING_ENVELOPE,
    )
    # also the operator's own calls carry their envelope
    forged = _reforge(lines, world.hub, {ROTATE_A: lambda entry, envelope: b""})
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey], workers=workers),
        ROTATE_A,
        FailureReason.MISSING_ENVELOPE,
    )


def test_key_record_not_introduced_by_a_registry_entry_is_detected(world: World) -> None:
    # The hub adds a key of its own making for A to the key history and signs A's calls.
    rogue = SigningKey.generate()
    world.history.append(KeyRecord(A, rogue.keyid, rogue.public_bytes, LONG_AGO))
    lines = world.export()
    assert _verify(lines, hub_keys=[world.hub_vkey]).ok  # an unused record harms nobody

    def resign(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        return _envelope(rogue, A, entry.request_id)

    forged = _reforge(lines, world.hub, {8: resign})
    report = _verify(forged, hub_keys=[world.hub_vkey])
    _assert_fails(report, 8, FailureReason.UNREGISTERED_KEY)
    assert rogue.keyid[:16] in str(report.first_failure)


def test_key_record_introduced_for_another_department_is_detected(world: World) -> None:
    # B's registered key does not become A's because the hub says so
    b = world.keys["b"]
    world.history.append(KeyRecord(A, b.keyid, b.public_bytes, LONG_AGO))

    def resign(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        return _envelope(b, A, entry.request_id)

    forged = _reforge(world.export(), world.hub, {8: resign})
    _assert_fails(_verify(forged, hub_keys=[world.hub_vkey]), 8, FailureReason.UNREGISTERED_KEY)


def test_forged_registration_needs_the_pinned_operator_key(world: World) -> None:
    # The hub replaces the operator's key record by a key of its own, signs a registration of
    # a rogue key for A with it and uses the rogue key: the operator's key is pinned by the hub
    # verifier key, so the registration vouches for nothing.
    operator, rogue = SigningKey.generate(), SigningKey.generate()
    world.history[0] = KeyRecord(HUB, operator.keyid, operator.public_bytes, EPOCH)
    world.history.append(KeyRecord(A, rogue.keyid, rogue.public_bytes, LONG_AGO))

    def register(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        _, signed = _registration(operator, A, rogue, entry.request_id)
        entry.attributes["keyid"] = rogue.keyid
        return signed

    def resign_operator(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        payload = envelope_pb2.Envelope.FromString(envelope)
        return sign(payload.payload, payload.payload_type, operator).SerializeToString()

    changes: dict[int, Change] = {
        REGISTER_A: register,
        REGISTER_B: resign_operator,
        ROTATE_A: resign_operator,
        8: lambda entry, envelope: _envelope(rogue, A, entry.request_id),
    }
    forged = _reforge(world.export(), world.hub, changes)
    _assert_fails(
        _verify(forged, hub_keys=[world.hub_vkey]), REGISTER_A, FailureReason.UNREGISTERED_KEY
    )


def test_key_record_giving_the_hub_key_to_a_department_is_detected(world: World) -> None:
    # with it, the hub could sign B's calls itself
    world.history.append(KeyRecord(B, world.hub.keyid, world.hub.public_bytes, EPOCH))
    _assert_fails(
        _verify(world.export(), hub_keys=[world.hub_vkey]), None, FailureReason.UNREGISTERED_KEY
    )


async def test_key_revoked_in_the_log_does_not_verify_later_entries(
    engine: Engine, hub_key: SigningKey
) -> None:
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    await ledger.append(*_revocation(hub_key, B, world.keys["b"].keyid, "op-4"))
    await asyncio.sleep(0.002)
    # the hub serves B's key after revoking it, and exports a key record without revoked_at
    await ledger.append(draft(31, actor=B), _envelope(world.keys["b"], B, "req-31"))
    await ledger.close()
    report = _verify(world.export(), hub_keys=[world.hub_vkey])
    _assert_fails(report, LAST + 2, FailureReason.REVOKED_KEY_USED)
    assert f"revoked by entry {LAST + 1}" in str(report.first_failure)


def test_key_rotated_out_does_not_verify_after_the_grace_period(world: World) -> None:
    # The hub drops valid_until from A's first key and serves it after the rotation: the
    # operator-signed rotation (grace 0) ends it at the rotation entry's time.
    world.history[1] = KeyRecord(A, world.keys["a1"].keyid, world.keys["a1"].public_bytes, LONG_AGO)
    a1 = world.keys["a1"]
    forged = _reforge(
        world.export(), world.hub, {20: lambda entry, envelope: _envelope(a1, A, entry.request_id)}
    )
    report = _verify(forged, hub_keys=[world.hub_vkey])
    _assert_fails(report, 20, FailureReason.REVOKED_KEY_USED)
    assert f"rotated out by entry {ROTATE_A}" in str(report.first_failure)


# ---------------------------------------------------------------- a large log, chunked
#
# The workers check each chunk of entries apart and the parent joins them: links, dates and
# checkpoint roots across chunk boundaries are the parent's, those inside a chunk the worker's.
# Every tampering must be found at the same sequence for the same reason whichever way the log
# is cut, in a pool or in this process.

LARGE = 700  # entries after the operator's registration


@pytest.fixture
async def large(engine: Engine, hub_key: SigningKey) -> list[str]:
    a1 = SigningKey.generate()
    ledger = Ledger(engine, hub_key, ORIGIN, LedgerConfig(checkpoint_every=37, max_batch=50))
    await ledger.start()
    await ledger.append(*_registration(hub_key, A, a1, "op-1"))
    await asyncio.gather(
        *(
            ledger.append(draft(i, actor=A, request_id=f"req-{i}"), _envelope(a1, A, f"req-{i}"))
            for i in range(LARGE)
        )
    )
    await ledger.close()
    history = [
        KeyRecord(HUB, hub_key.keyid, hub_key.public_bytes, EPOCH),
        KeyRecord(A, a1.keyid, a1.public_bytes, LONG_AGO),
    ]
    out = io.StringIO()
    export_ledger(engine, out, history, [verifier_key(ORIGIN, hub_key.public_bytes)])
    return out.getvalue().splitlines(keepends=True)


# (chunk size, workers): one chunk in this process, power-of-two chunks in a pool (the parent
# adds whole subtrees), and chunks of an odd size (the parent adds leaf by leaf)
CUTS = [(4096, 0), (64, 2), (48, 2), (64, 0)]


def _failures_by_cut(
    lines: list[str], monkeypatch: pytest.MonkeyPatch, **kw: object
) -> list[list[tuple[int | None, FailureReason]]]:
    found = []
    for chunk, workers in CUTS:
        monkeypatch.setattr(verify_module, "CHUNK", chunk)
        report = _verify(lines, workers=workers, **kw)
        found.append([(f.sequence, f.reason) for f in report.failures])
    return found


def test_large_log_verifies_however_it_is_cut(
    large: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for chunk, workers in CUTS:
        monkeypatch.setattr(verify_module, "CHUNK", chunk)
        report = _verify(large, workers=workers)
        assert report.ok, (chunk, workers, report.first_failure)
        assert report.entries == LARGE + 1 and report.signatures == LARGE + 1
        assert report.checkpoints > LARGE // 64  # several inside every cut's chunks


# Sequences inside a chunk of 64 (and of 48), the first and last of a chunk of 64, and the
# first of a chunk of 48 (144 = 3 x 48), the first entry of all and the last.
PLACES = [350, 63, 64, 65, 127, 128, 144, 1, LARGE]


@pytest.mark.parametrize("sequence", PLACES)
def test_changed_entry_in_a_large_log_is_found_wherever_the_chunks_end(
    large: list[str], monkeypatch: pytest.MonkeyPatch, sequence: int
) -> None:
    bad = _rewrite(large, _entry_index(large, sequence), _shift_time)
    found = _failures_by_cut(bad, monkeypatch)
    # the next entry's link names it; the last entry has none, its checkpoint's root does
    reason = FailureReason.CHAIN_BROKEN if sequence < LARGE else FailureReason.ROOT_MISMATCH
    assert (sequence, reason) in found[0]
    assert min(position or 0 for position, _ in found[0]) == sequence
    assert all(failures == found[0] for failures in found), found


@pytest.mark.parametrize("sequence", [350, 64, 144])
def test_altered_envelope_in_a_large_log_is_found_in_every_chunk(
    large: list[str], monkeypatch: pytest.MonkeyPatch, sequence: int
) -> None:
    index = _entry_index(large, sequence)
    bad = _rewrite(large, index, lambda r: r.update(envelope=base64.b64encode(b"x").decode()))
    found = _failures_by_cut(bad, monkeypatch)
    assert found[0] == [(sequence, FailureReason.ENVELOPE_HASH_MISMATCH)]
    assert all(failures == found[0] for failures in found), found


@pytest.mark.parametrize("sequence", [350, 64, 63, 144])
def test_removed_entry_in_a_large_log_is_found_at_its_place(
    large: list[str], monkeypatch: pytest.MonkeyPatch, sequence: int
) -> None:
    bad = list(large)
    del bad[_entry_index(large, sequence)]
    found = _failures_by_cut(bad, monkeypatch)
    assert (sequence, FailureReason.SEQUENCE_GAP) in found[0]
    assert all(failures == found[0] for failures in found), found


@pytest.mark.parametrize("sequence", [350, 64, 128, 144])
def test_dishonest_hub_backdating_in_a_large_log_is_found_at_chunk_boundaries(
    large: list[str], hub_key: SigningKey, monkeypatch: pytest.MonkeyPatch, sequence: int
) -> None:
    # re-chained and re-signed: only the date gives it away (and the issue window)
    def backdate(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.time.seconds -= 1
        return envelope

    forged = _reforge(large, hub_key, {sequence: backdate})
    found = _failures_by_cut(forged, monkeypatch)
    assert found[0] == [(sequence, FailureReason.TIME_REGRESSION)]
    assert all(failures == found[0] for failures in found), found


def test_replayed_request_across_chunks_of_a_large_log_is_found(
    large: list[str], hub_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # entry 70 (a later chunk) carries entry 40's signed request, re-chained and re-signed
    envelopes = {
        json.loads(line)["sequence"]: base64.b64decode(json.loads(line)["envelope"])
        for line in large
        if '"type":"entry"' in line
    }

    def replay(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        request = exchange_pb2.CheckRequest.FromString(
            envelope_pb2.Envelope.FromString(envelopes[40]).payload
        )
        entry.request_id = request.header.request_id
        return envelopes[40]

    forged = _reforge(large, hub_key, {70: replay})
    found = _failures_by_cut(forged, monkeypatch)
    assert (70, FailureReason.REQUEST_RECORDED_TWICE) in found[0]
    assert all(failures == found[0] for failures in found), found


def _with_checkpoint(lines: list[str], size: int, root: bytes, hub: SigningKey) -> list[str]:
    """``lines`` with a hub-signed checkpoint of ``size`` and ``root`` in its place (after entry
    ``size - 1``), instead of any stored checkpoint of that size."""
    out = [
        line
        for line in lines
        if not ('"type":"checkpoint"' in line and json.loads(line)["size"] == size)
    ]
    note = sign_checkpoint(ORIGIN, size, root, hub, ORIGIN).note
    record = json.dumps({"type": "checkpoint", "size": size, "note": note}, separators=(",", ":"))
    out.insert(_entry_index(out, size - 1) + 1, record + "\n")
    return out


@pytest.mark.parametrize("size", [64, 127, 128, 129, 144, 350])
def test_checkpoint_roots_inside_and_at_the_ends_of_chunks_are_checked(
    large: list[str], hub_key: SigningKey, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    leaves = [
        merkle.leaf_hash(base64.b64decode(json.loads(line)["entry"]))
        for line in large
        if '"type":"entry"' in line
    ]
    right = _with_checkpoint(large, size, merkle.root(leaves[:size]), hub_key)
    assert _failures_by_cut(right, monkeypatch) == [[]] * len(CUTS)
    wrong = _with_checkpoint(large, size, merkle.root(leaves[1 : size + 1]), hub_key)
    found = _failures_by_cut(wrong, monkeypatch)
    assert found[0] == [(size - 1, FailureReason.ROOT_MISMATCH)]
    assert all(failures == found[0] for failures in found), found


# ---------------------------------------------------------------- an export file


def _verify_file(path: Path, **kw: object) -> Report:
    with path.open(encoding="utf-8") as handle:
        assert verify_module._plain_file(handle) is not None  # the workers read the file
        return verify_export(handle, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("sequence", [64, 144, LARGE])
def test_workers_reading_the_export_file_find_what_a_stream_shows(
    large: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sequence: int
) -> None:
    # From a plain file each worker reads its chunk itself, by byte range; the parent reads
    # the file in blocks, which chunks and lines straddle here.
    bad = _rewrite(large, _entry_index(large, sequence), _shift_time)
    path = tmp_path / "export.jsonl"
    path.write_text("".join(bad), encoding="utf-8")
    monkeypatch.setattr(verify_module, "BLOCK", 4000)
    streamed = _failures_by_cut(bad, monkeypatch)
    for (chunk, workers), expected in zip(CUTS, streamed, strict=True):
        monkeypatch.setattr(verify_module, "CHUNK", chunk)
        report = _verify_file(path, workers=workers)
        assert [(f.sequence, f.reason) for f in report.failures] == expected, (chunk, workers)
        assert report.entries == LARGE + 1
    assert streamed[0]


def test_an_export_file_with_crlf_line_ends_verifies(
    large: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Lines read as text end where the handle's newline mode says: from the first carriage
    # return on, the parent reads the file as text and hands the workers text.
    path = tmp_path / "export.jsonl"
    path.write_bytes(
        "".join(large[:500]).encode() + "".join(large[500:]).encode().replace(b"\n", b"\r\n")
    )
    monkeypatch.setattr(verify_module, "BLOCK", 4000)
    monkeypatch.setattr(verify_module, "CHUNK", 64)
    report = _verify_file(path, workers=2)
    assert report.ok, report.first_failure
    assert report.entries == LARGE + 1 and report.signatures == LARGE + 1


@pytest.mark.parametrize("workers", [0, 2])
def test_an_entry_line_of_the_export_file_that_is_not_utf8_is_a_malformed_export(
    large: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    index = _entry_index(large, 300)
    data = [line.encode() for line in large]
    data[index] = data[index][:60] + b"\xff" + data[index][61:]
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(data))
    monkeypatch.setattr(verify_module, "CHUNK", 64)
    report = _verify_file(path, workers=workers)
    _assert_fails(report, None, FailureReason.MALFORMED_EXPORT)
    assert f"line {index + 1}:" in str(report.first_failure)


def _malformed(lines: list[str], tmp_path: Path, source: str, workers: int) -> str:
    """The one failure of ``lines`` read from a stream or a file: a malformed export."""
    if source == "stream":
        report = _verify(lines, workers=workers)
    else:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(lines), encoding="utf-8")
        report = _verify_file(path, workers=workers)
    assert [f.reason for f in report.failures if f.sequence is None] == [
        FailureReason.MALFORMED_EXPORT
    ], report.failures
    return str(report.first_failure)


@pytest.mark.parametrize(("source", "workers"), [("stream", 0), ("file", 0), ("file", 2)])
def test_records_out_of_place_are_a_malformed_export_at_their_line(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, workers: int
) -> None:
    monkeypatch.setattr(verify_module, "CHUNK", 4)
    lines = world.export()
    # blank lines count as lines and are passed over: the export still verifies
    spaced = [*lines[:3], "\n", "  \n", *lines[3:]]
    path = tmp_path / "spaced.jsonl"
    path.write_text("".join(spaced), encoding="utf-8")
    assert (_verify(spaced) if source == "stream" else _verify_file(path, workers=workers)).ok
    entry = next(line for line in lines if line.startswith('{"type":"entry"'))
    key = next(line for line in lines if line.startswith('{"type":"key"'))
    after_end = [*spaced, entry]
    assert f"line {len(after_end)}: records after the end record" in _malformed(
        after_end, tmp_path, source, workers
    )
    late_key = [*spaced[:12], key, *spaced[12:]]
    assert "line 13: key records must come before entries" in _malformed(
        late_key, tmp_path, source, workers
    )
    unknown = [*spaced[:20], '{"type":"gossip"}\n', *spaced[20:]]
    assert "line 21: unknown record type 'gossip'" in _malformed(unknown, tmp_path, source, workers)
    assert "bad header" in _malformed(["\n"], tmp_path, source, workers)
