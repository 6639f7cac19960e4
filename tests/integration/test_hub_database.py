"""A hub's database and address are its own: another hub's database, a newer schema and a
taken port are refused with one line and a non-zero exit; `exchange migrate` upgrades the
schema as a step of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.provider import ProviderServer
from adapters.settings import parse
from exchange.crypto.keystore import Keystore
from exchange.rpc.ports import AddressInUse
from exchange.store.engines import open_engine
from exchange.store.schema import head
from tests.conftest import HUB_ID, StartHub
from tests.integration.test_hub_process import free_port, start, wait_serving

EXCHANGE = [sys.executable, "-m", "exchange.cli"]


def exchange(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    return subprocess.run(
        [*EXCHANGE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def serve(keys: Path, database: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`exchange serve` that is expected to refuse to start."""
    return exchange(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--keys-dir",
        str(keys),
        "--database-url",
        f"sqlite:///{database}",
        cwd=tmp_path,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


async def _used_database(start_hub: StartHub, tmp_path: Path) -> Path:
    """A database served by the test keystore's hub, with a stored checkpoint."""
    running = await start_hub()
    await running.register("js.nj.civil-affairs")
    await running.server.stop(grace=0.5)  # stores its final checkpoint
    return tmp_path / "exchange.db"


async def test_hub_with_another_hub_key_refuses_the_database(
    start_hub: StartHub, tmp_path: Path
) -> None:
    database = await _used_database(start_hub, tmp_path)
    other = Keystore(tmp_path / "other-keys")
    other.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
    line = one_line_error(serve(other.root, database, tmp_path))
    assert "checkpoints are not signed by this hub's key" in line


async def test_hub_with_another_subject_secret_refuses_the_database(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path
) -> None:
    database = await _used_database(start_hub, tmp_path)
    copy = tmp_path / "copied-keys"
    shutil.copytree(keystore.root, copy)
    secret = copy / keystore.hub_dir.relative_to(keystore.root) / "subject.key"
    secret.write_bytes(os.urandom(32))
    line = one_line_error(serve(copy, database, tmp_path))
    assert "another subject secret" in line


def test_migrate_then_newer_schema_is_refused_naming_both_revisions(
    keystore: Keystore, tmp_path: Path
) -> None:
    database = tmp_path / "migrated.db"
    url = f"sqlite:///{database}"
    first = exchange("migrate", "--database-url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"schema migrated from revision (empty) to {head()}" in first.stdout
    again = exchange("migrate", "--database-url", url, cwd=tmp_path)
    assert again.returncode == 0 and f"schema already at revision {head()}" in again.stdout
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    for result in (
        serve(keystore.root, database, tmp_path),
        exchange("migrate", "--database-url", url, cwd=tmp_path),
    ):
        line = one_line_error(result)
        assert f"revision 9999, newer than this exchange's {head()}" in line


async def test_second_process_on_a_taken_port_is_refused(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
    port = free_port()
    first = start(tmp_path, port)
    try:
        await wait_serving(f"127.0.0.1:{port}", store)
        second = exchange(
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--keys-dir",
            str(store.root),
            "--database-url",
            f"sqlite:///{tmp_path / 'second.db'}",
            cwd=tmp_path,
        )
        assert "address already in use" in one_line_error(second)
        # `localhost` resolves to 127.0.0.1 and ::1: gRPC alone would bind ::1 and succeed.
        store.add_department("js.nj.civil-affairs", server_names=("localhost", "127.0.0.1"))
        people = tmp_path / "people.csv"
        people.write_text("id_no,status\n")
        settings = parse(
            {
                "department": {
                    "id": "js.nj.civil-affairs",
                    "listen": f"localhost:{port}",
                    "keys_dir": str(store.root),
                    "hub_id": HUB_ID,
                },
                "backend": {"kind": "files"},
                "materials": {
                    "marriage-record": {
                        "file": str(people),
                        "subject_column": "id_no",
                        "fields": {"marital_status": "status"},
                    }
                },
            },
            tmp_path,
        )
        adapter = ProviderServer(settings, _NoBackend())  # type: ignore[arg-type]
        with pytest.raises(AddressInUse, match="address already in use"):
            await adapter.start()
    finally:
        first.terminate()
        first.wait(30)


class _NoBackend:
    def validate(self) -> None:
        return None

    def material_types(self) -> list[str]:
        return []
