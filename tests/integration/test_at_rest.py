"""No personal data at rest in the clear at the hub: objections' reasons and proposed values and
the answers kept for retries are sealed, proposed values are erased at resolution, database files
and exports are owner-readable only, and an embedded hub logs without local variables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from exchange.crypto.sealing import AtRest, SealError
from exchange.store.exchange_tables import objections
from exchange.store.files import create_private, open_private_text
from exchange.store.tables import requests
from exchange.v1 import exchange_pb2
from tests.conftest import StartHub
from tests.flows.world import ANNA, CIVIL, FORM_TOOL, MARRIAGE, World

SECRET_VALUE = "离婚 (demo secret)"
SECRET_REASON = "我已于去年离婚 (demo reason)"
SECRET_RESOLUTION = "赵六 (demo) 的婚姻登记仍有效 (demo resolution)"


def stored_bytes(world: World) -> bytes:
    """Every objection row and every kept answer, as the database holds them."""
    with world.hub.server.hub.engine.connect() as conn:
        rows = conn.execute(select(objections)).all()
        answers = conn.execute(select(requests.c.response)).all()
    return repr([tuple(r) for r in rows]).encode() + b"".join(bytes(a[0] or b"") for a in answers)


async def kept_answer(world: World, method: str) -> bytes:
    """The answer kept for retries of the last call of ``method`` (written just after the
    call answered, by the request log's writer: waited for)."""
    for _ in range(200):
        with world.hub.server.hub.engine.connect() as conn:
            found = conn.execute(
                select(requests.c.response).where(
                    requests.c.method == method, requests.c.response.is_not(None)
                )
            ).first()
        if found is not None:
            return bytes(found[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer kept for {method}")


async def test_objection_values_and_kept_answers_are_sealed_and_erased(world: World) -> None:
    filed = await world.clients[FORM_TOOL].file_objection(
        MARRIAGE,
        ANNA,
        SECRET_REASON,
        proposed_fields={"spouse_name": SECRET_VALUE},
        assertion=world.assertion(ANNA),
    )
    civil = world.clients[CIVIL]
    listed = await civil.call(
        "/exchange.v1.Exchange/ListObjections",
        exchange_pb2.ListObjectionsRequest(open_only=True),
        exchange_pb2.ListObjectionsResponse,
    )
    # The owner reads them in the clear; the database holds them sealed.
    assert listed.objections[0].proposed_fields["spouse_name"] == SECRET_VALUE
    assert listed.objections[0].reason == SECRET_REASON
    await kept_answer(world, "/exchange.v1.Exchange/ListObjections")
    data = stored_bytes(world)
    for secret in (SECRET_VALUE, SECRET_REASON):
        assert secret.encode() not in data and secret.encode("unicode_escape") not in data
    with world.hub.server.hub.engine.connect() as conn:
        row = conn.execute(select(objections).where(objections.c.id == filed.id)).one()
    assert row.proposed_fields.startswith("sealed:v1:") and row.reason.startswith("sealed:v1:")
    # A sealed value moved to another row does not open there.
    with pytest.raises(SealError):
        world.hub.server.hub.at_rest.open_text(row.reason, "o-another")

    await civil.call(
        "/exchange.v1.Exchange/ResolveObjection",
        exchange_pb2.ResolveObjectionRequest(
            objection_id=filed.id, state=exchange_pb2.REJECTED, resolution=SECRET_RESOLUTION
        ),
        exchange_pb2.ObjectionResponse,
    )
    with world.hub.server.hub.engine.connect() as conn:
        row = conn.execute(select(objections).where(objections.c.id == filed.id)).one()
    assert row.proposed_fields == "{}"  # erased once resolved
    # The owner's answer travels as personal data (in the disclosure) and is kept sealed.
    assert row.resolution.startswith("sealed:v1:")
    data = stored_bytes(world)
    assert SECRET_RESOLUTION.encode() not in data
    assert SECRET_RESOLUTION.encode("unicode_escape") not in data
    resolved = await civil.call(
        "/exchange.v1.Exchange/ListObjections",
        exchange_pb2.ListObjectionsRequest(),
        exchange_pb2.ListObjectionsResponse,
    )
    assert resolved.objections[0].resolution == SECRET_RESOLUTION


async def test_kept_answers_are_erased_once_the_replay_window_has_passed(
    start_hub: StartHub,
) -> None:
    """A retry is refused as stale after the replay window (either side of the hub's clock),
    so an answer is needed for twice the window; the hub erases it soon after, not minutes."""
    hub = await start_hub(replay_window_seconds=2)
    await hub.register("js.nj.one")
    method = "/exchange.v1.Registry/RegisterDepartment"
    with hub.server.hub.engine.connect() as conn:
        kept = conn.execute(select(requests).where(requests.c.method == method)).all()
    assert kept  # the answer, kept for retries
    for _ in range(300):  # polled: the purge runs at least once a second
        with hub.server.hub.engine.connect() as conn:
            if not conn.execute(select(requests).where(requests.c.method == method)).all():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the answer outlived the replay window by more than 10 s")


def test_at_rest_sealing_opens_only_with_the_hub_secret() -> None:
    mine, other = AtRest(b"a" * 32), AtRest(b"b" * 32)
    sealed = mine.seal_text("320102199001011234", "o-1")
    assert "3201" not in sealed
    assert mine.open_text(sealed, "o-1") == "320102199001011234"
    with pytest.raises(SealError):
        other.open_text(sealed, "o-1")
    assert mine.open_text("written before sealing existed", "o-1").startswith("written")


async def test_database_files_are_owner_readable_only(start_hub: StartHub, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        hub = await start_hub()
        await hub.operator.list_departments()
    finally:
        os.umask(previous)
    database = tmp_path / "exchange.db"
    files = [database, *tmp_path.glob("exchange.db-*")]
    assert len(files) >= 2  # the database and its write-ahead log
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, path


def test_exports_and_private_files_are_created_owner_readable(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        export = tmp_path / "export.jsonl"
        export.write_text("old")
        export.chmod(0o644)
        with open_private_text(export) as handle:
            handle.write("{}\n")
        created = tmp_path / "new.db"
        create_private(created)
    finally:
        os.umask(previous)
    assert export.stat().st_mode & 0o777 == 0o600 and export.read_text() == "{}\n"
    assert created.stat().st_mode & 0o777 == 0o600


def test_an_embedded_hub_logs_tracebacks_without_local_variables(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import structlog
        from pathlib import Path
        from exchange.config import Config
        from exchange.crypto.keystore import Keystore
        from exchange.hub import Hub

        root = Path({str(tmp_path)!r})
        Keystore(root / "keys").init_hub("hub", ("localhost",))
        config = Config(database_url=f"sqlite:///{{root / 'hub.db'}}", keys_dir=root / "keys")
        hub = Hub.open(config)

        def lookup(subject_id):
            raise ValueError("lookup failed")

        try:
            lookup("990101199001010019")
        except ValueError:
            structlog.get_logger("embedded").exception("lookup_failed")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "lookup_failed" in output and "ValueError" in output
    assert "990101199001010019" not in output
