"""The verifier binds every field an OK entry takes from the signed request beside it, and
catches replayed requests: tampering as a dishonest hub that re-chains and re-signs."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from exchange.audit.verify import FailureReason
from exchange.cli.audit import audit
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, sign_checkpoint, verifier_key
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from exchange.v1 import exchange_pb2, grants_pb2, ledger_pb2

from .support import ORIGIN, draft
from .test_audit import (
    LAST,
    A,
    World,
    _assert_fails,
    _build,
    _envelope_of,
    _header,
    _reforge,
    _verify,
)

PURPOSE = "social-assistance"


def _material_request(key: SigningKey, request_id: str, **body: object) -> bytes:
    header = _header(A, request_id)
    header.disclosure_sha256 = bytes(32)  # the subject id travels in the disclosure
    request = exchange_pb2.MaterialRequest(
        header=header,
        material_type="household-registration",
        purpose=PURPOSE,
        fields=["address", "members"],
        **body,  # type: ignore[arg-type]
    )
    return sign(request.SerializeToString(), "exchange.v1.MaterialRequest", key).SerializeToString()


async def _with_requests(engine: Engine, hub_key: SigningKey) -> World:
    """The standard world, then two Requests of A (sequences LAST+1, LAST+2) and a grant."""
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    a2 = world.keys["a2"]
    for n in (1, 2):
        await ledger.append(
            draft(
                0,
                actor=A,
                kind=ledger_pb2.REQUEST,
                request_id=f"get-{n}",
                purpose=PURPOSE,
                subject_ref=bytes(range(32)),
                attributes={"fields": "address,members"},
            ),
            _material_request(a2, f"get-{n}"),
        )
    grant = grants_pb2.IssueGrantRequest(header=_header(A, "grant-1"))
    grant.grant.consumer = "js.nj.public-security"
    grant.grant.material_type = "household-registration"
    grant.grant.fields.extend(["address"])
    grant.grant.purposes.extend([PURPOSE])
    await ledger.append(
        draft(
            0,
            actor=A,
            kind=ledger_pb2.GRANT_ISSUANCE,
            request_id="grant-1",
            counterparty="js.nj.public-security",
            attributes={"fields": "address", "purposes": PURPOSE},
        ),
        sign(grant.SerializeToString(), "exchange.v1.IssueGrantRequest", a2).SerializeToString(),
    )
    await ledger.close()
    return world


REQUEST, GRANT = LAST + 1, LAST + 3


@pytest.fixture
async def world(engine: Engine, hub_key: SigningKey) -> World:
    return await _build(engine, hub_key)


@pytest.fixture
async def requests(engine: Engine, hub_key: SigningKey) -> World:
    return await _with_requests(engine, hub_key)


def test_requests_as_recorded_verify(requests: World) -> None:
    report = _verify(requests.export(), hub_keys=[requests.hub_vkey])
    assert report.ok, report.first_failure


@pytest.mark.parametrize(
    ("sequence", "field", "value", "named"),
    [
        (REQUEST, "purpose", "tax-audit", "purpose 'tax-audit'"),
        (REQUEST, "material_type", "marriage-record", "material type 'marriage-record'"),
        (REQUEST, "subject_ref", b"", "no subject reference"),
        (GRANT, "counterparty", "js.nj.civil-affairs", "counterparty"),
        (GRANT, "material_type", "marriage-record", "material type"),
    ],
)
def test_rewritten_signed_field_is_detected(
    requests: World, sequence: int, field: str, value: object, named: str
) -> None:
    def rewrite(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        setattr(entry, field, value)
        return envelope

    report = _verify(_reforge(requests.export(), requests.hub, {sequence: rewrite}))
    _assert_fails(report, sequence, FailureReason.ENVELOPE_ENTRY_MISMATCH)
    assert named in str(report.first_failure)


@pytest.mark.parametrize(
    ("sequence", "attribute", "value"),
    [
        (REQUEST, "fields", "address,members,income"),
        (GRANT, "fields", "address,members"),
        (GRANT, "purposes", f"{PURPOSE},tax-audit"),
    ],
)
def test_field_the_request_did_not_name_is_detected(
    requests: World, sequence: int, attribute: str, value: str
) -> None:
    def widen(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.attributes[attribute] = value
        return envelope

    report = _verify(_reforge(requests.export(), requests.hub, {sequence: widen}))
    _assert_fails(report, sequence, FailureReason.ENVELOPE_ENTRY_MISMATCH)
    assert attribute in str(report.first_failure)


def test_entry_of_another_kind_is_detected(requests: World) -> None:
    def as_check(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.kind = ledger_pb2.CHECK
        return envelope

    report = _verify(_reforge(requests.export(), requests.hub, {REQUEST: as_check}))
    _assert_fails(report, REQUEST, FailureReason.ENVELOPE_ENTRY_MISMATCH)
    assert "kind CHECK" in str(report.first_failure)


def test_subject_reference_without_a_subject_is_detected(requests: World) -> None:
    # a Check that named no subject (no subject id, no disclosure) recorded as if it had one
    def add_subject(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.subject_ref = bytes(32)
        return envelope

    report = _verify(_reforge(requests.export(), requests.hub, {5: add_subject}))
    _assert_fails(report, 5, FailureReason.ENVELOPE_ENTRY_MISMATCH)


async def test_truncated_free_text_verifies(engine: Engine, hub_key: SigningKey) -> None:
    world = await _build(engine, hub_key)
    ledger = Ledger(engine, hub_key, ORIGIN)
    await ledger.start()
    long_purpose = "p" * 300
    request = exchange_pb2.MaterialRequest(
        header=_header(A, "long"), material_type="household-registration", purpose=long_purpose
    )
    signed = sign(request.SerializeToString(), "exchange.v1.MaterialRequest", world.keys["a2"])
    await ledger.append(
        draft(
            0,
            actor=A,
            kind=ledger_pb2.REQUEST,
            request_id="long",
            purpose=long_purpose[:128],
            attributes={"fields": "address"},
        ),
        signed.SerializeToString(),
    )
    await ledger.close()
    assert _verify(world.export(), hub_keys=[world.hub_vkey]).ok


# ---------------------------------------------------------------- replays


def test_request_replayed_an_hour_later_is_detected(requests: World) -> None:
    # The hub records a department's signed Request again an hour later, as a new OK entry
    # (same envelope, so the same request id), re-dated to look fresh: re-chained, re-signed.
    lines = requests.export()
    replayed = _envelope_of(lines, REQUEST)

    def replay(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.request_id = "get-1"
        entry.time.FromDatetime(entry.time.ToDatetime() + timedelta(hours=1))
        return replayed

    # the last entry (the grant) is replaced, so no later entry is dated before it
    def replay_last(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.kind = ledger_pb2.REQUEST
        entry.purpose = PURPOSE
        entry.counterparty = ""
        entry.subject_ref = bytes(range(32))
        entry.attributes.clear()
        entry.attributes["fields"] = "address"
        return replay(entry, envelope)

    report = _verify(_reforge(lines, requests.hub, {GRANT: replay_last}))
    _assert_fails(report, GRANT, FailureReason.OUTSIDE_ISSUE_WINDOW)
    assert "'get-1'" in str(report.first_failure)


def test_request_replayed_within_the_window_is_detected(requests: World) -> None:
    lines = requests.export()
    first = _envelope_of(lines, REQUEST)

    def replay(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.request_id = "get-1"
        return first

    report = _verify(_reforge(lines, requests.hub, {REQUEST + 1: replay}))
    _assert_fails(report, REQUEST + 1, FailureReason.REQUEST_RECORDED_TWICE)
    assert f"OK entry {REQUEST}" in str(report.first_failure)


def test_issue_window_is_configurable(requests: World) -> None:
    # a request recorded ten minutes after it was issued passes with a 15-minute window only
    def later(entry: ledger_pb2.LedgerEntry, envelope: bytes) -> bytes:
        entry.time.FromDatetime(entry.time.ToDatetime() + timedelta(minutes=10))
        return envelope

    forged = _reforge(requests.export(), requests.hub, {GRANT: later})
    _assert_fails(_verify(forged), GRANT, FailureReason.OUTSIDE_ISSUE_WINDOW)
    assert _verify(forged, issue_window_seconds=900).ok


# ---------------------------------------------------------------- trusted checkpoints and keys


async def test_every_trusted_checkpoint_is_checked(
    tmp_path: Path, world: World, db_url: str
) -> None:
    real = Ledger(world.engine, world.hub, ORIGIN).checkpoint_at(14).note
    other = open_engine(f"sqlite:///{tmp_path / 'fork.db'}")
    upgrade(other)
    fork = await _build(other, world.hub, salt="x")
    forked = Ledger(other, world.hub, ORIGIN).checkpoint_at(14).note
    other.dispose()
    out = tmp_path / "ledger.jsonl"
    out.write_text("".join(world.export()))
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(forked)
    second.write_text(real)
    runner = CliRunner()
    args = ["verify", str(out), "--hub-verifier-key", world.hub_vkey]
    result = runner.invoke(audit, [*args, "--trusted-checkpoint", str(second)])
    assert result.exit_code == 0, result.output
    # the forked checkpoint given first is not silently replaced by the second
    result = runner.invoke(
        audit, [*args, "--trusted-checkpoint", str(first), "--trusted-checkpoint", str(second)]
    )
    assert result.exit_code == 1, result.output
    assert "TRUSTED_CHECKPOINT_MISMATCH" in result.output and "#1 (size 14)" in result.output
    result = runner.invoke(
        audit, [*args, "--trusted-checkpoint", str(second), "--trusted-checkpoint", str(first)]
    )
    assert result.exit_code == 1 and "#2 (size 14)" in result.output, result.output
    del fork, db_url


def test_log_resigned_by_another_key_names_the_pinned_key(world: World) -> None:
    rogue = SigningKey.generate()
    lines = _reforge(world.export(), rogue, {})
    # the forger declares his own key in the header; the auditor pinned the real one
    header = json.loads(lines[0])
    header["hub_keys"] = [verifier_key(ORIGIN, rogue.public_bytes)]
    lines[0] = json.dumps(header, separators=(",", ":")) + "\n"
    report = _verify(lines, hub_keys=[world.hub_vkey])
    _assert_fails(report, None, FailureReason.NO_PINNED_CHECKPOINT)
    message = str(report.first_failure)
    pinned_id = world.hub_vkey.split("+")[1]
    rogue_id = verifier_key(ORIGIN, rogue.public_bytes).split("+")[1]
    assert pinned_id in message and rogue_id in message and "re-signed" in message


def test_one_checkpoint_by_another_key_is_named_at_its_size(world: World) -> None:
    lines = world.export()
    index = next(i for i, line in enumerate(lines) if '"type":"checkpoint"' in line)
    record = json.loads(lines[index])
    rogue = SigningKey.generate()
    from exchange.ledger import Checkpoint

    held = Checkpoint.parse(record["note"])
    record["note"] = sign_checkpoint(ORIGIN, held.size, held.root_hash, rogue, ORIGIN).note
    lines[index] = json.dumps(record, separators=(",", ":")) + "\n"
    report = _verify(lines, hub_keys=[world.hub_vkey])
    _assert_fails(report, held.size - 1, FailureReason.BAD_CHECKPOINT_SIGNATURE)
    assert "it is signed by" in str(report.first_failure)


def test_trusted_checkpoint_of_another_key_is_refused(world: World) -> None:
    rogue = SigningKey.generate()
    held = Ledger(world.engine, world.hub, ORIGIN).checkpoint_at(14)
    foreign = sign_checkpoint(ORIGIN, held.size, held.root_hash, rogue, ORIGIN).note
    report = _verify(
        world.export(), hub_keys=[world.hub_vkey], trusted_checkpoint=[held.note, foreign]
    )
    _assert_fails(report, None, FailureReason.BAD_TRUSTED_CHECKPOINT)
    assert "#2" in str(report.first_failure)


def test_request_id_memory_is_bounded_and_still_catches_recent_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exchange.audit import keyhistory

    # purge in bulk after a few entries (the default is 65,536)
    monkeypatch.setattr(keyhistory, "_PURGE_EVERY", 4)
    audit = keyhistory.RegistryAudit(issue_window_ns=10)
    audit._purge_at = 4
    second = 1_000_000_000

    def replays(sequence: int, time_ns: int, request_id: str) -> list[str]:
        problems = audit.observe(sequence, time_ns, A, "k", request_id)
        return [reason for reason, _ in problems if reason == "REQUEST_RECORDED_TWICE"]

    for n in range(40):
        assert replays(n, n * 100 * second, f"r-{n}") == []
    assert len(audit._recent) < 10  # old request ids were forgotten
    # a recent request id recorded again is still a replay
    assert replays(40, 39 * 100 * second, "r-39") == ["REQUEST_RECORDED_TWICE"]
