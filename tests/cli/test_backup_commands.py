"""``exchange backup`` and ``exchange restore`` against a real hub's database (SQLite, and
PostgreSQL with pg_dump/pg_restore): the restored ledger is verified offline and against the
checkpoints held; a tampered or too old backup is refused in one line."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from exchange.cli.main import main
from exchange.crypto.keystore import Keystore
from exchange.store.engines import open_engine
from tests.conftest import RunningHub, StartHub, require_postgres
from tests.postgres import scratch_postgres


def exchange(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={})


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exc_info)
    return result.output


def one_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def shared_umask() -> Iterator[None]:
    """A umask that lets others read new files: a backup must be owner-only all the same."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def owner_only(path: Path) -> bool:
    return path.stat().st_mode & 0o077 == 0


async def grow(hub: RunningHub, *departments: str) -> None:
    """Registry entries, then a stored checkpoint covering them."""
    for department in departments:
        await hub.register(department)
    ledger = hub.server.hub.ledger
    for _ in range(100):
        latest = ledger.latest_checkpoint()
        if latest is not None and latest.size == ledger.size():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint covers the entries")


async def test_sqlite_backup_while_serving_then_restore_verifies(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path, shared_umask: None
) -> None:
    hub = await start_hub()
    await grow(hub, "js.nj.one", "js.nj.two")
    keys = str(keystore.root)
    out = tmp_path / "backups" / "hub.db"
    printed = ok(
        await asyncio.to_thread(
            exchange, "backup", str(out), "--database-url", hub.config.database_url
        )
    )
    assert "backed up to" in printed and out.is_file()
    assert owner_only(out)  # it holds what the database holds
    held = Path(f"{out}.checkpoint")
    assert held.read_text().startswith(hub.server.hub.ledger.origin)
    assert one_error(
        await asyncio.to_thread(
            exchange, "backup", str(out), "--database-url", hub.config.database_url
        )
    ).endswith("(a backup never overwrites one)")

    restored = tmp_path / "restored" / "exchange.db"
    result = await asyncio.to_thread(
        exchange,
        "--config",
        str(write_config(tmp_path, restored, keys)),
        "restore",
        str(out),
        "--trusted-checkpoint",
        str(held),
    )
    assert "verified: " in ok(result) and "extends 1 held checkpoint" in result.output
    assert owner_only(restored)

    # A later checkpoint an auditor holds: the older backup must not be served.
    await grow(hub, "js.nj.three")
    later = tmp_path / "later.checkpoint"
    later.write_text(hub.server.hub.ledger.latest_checkpoint().note)  # type: ignore[union-attr]
    again = await asyncio.to_thread(
        exchange,
        "--config",
        str(write_config(tmp_path, restored, keys)),
        "restore",
        str(out),
        "--force",
        "--trusted-checkpoint",
        str(later),
    )
    assert "INVALID against" in one_error(again)


async def test_restore_refuses_a_tampered_ledger(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path
) -> None:
    hub = await start_hub()
    await grow(hub, "js.nj.one", "js.nj.two")
    out = tmp_path / "hub.backup"
    ok(
        await asyncio.to_thread(
            exchange, "backup", str(out), "--database-url", hub.config.database_url
        )
    )
    engine = open_engine(f"sqlite:///{out}")
    with engine.begin() as conn:  # change one byte of one entry in the backup
        entry = conn.execute(text("SELECT entry FROM ledger_entries WHERE sequence = 1")).scalar()
        changed = bytes(entry[:-1]) + bytes([entry[-1] ^ 1])
        conn.execute(
            text("UPDATE ledger_entries SET entry = :e WHERE sequence = 1"), {"e": changed}
        )
    engine.dispose()
    restored = tmp_path / "restored.db"
    result = await asyncio.to_thread(
        exchange,
        "--config",
        str(write_config(tmp_path, restored, str(keystore.root))),
        "restore",
        str(out),
    )
    assert "do not serve this database" in one_error(result)


async def test_restore_refuses_to_replace_a_database_without_force(tmp_path: Path) -> None:
    existing = tmp_path / "exchange.db"
    existing.write_bytes(b"")
    backup_file = tmp_path / "b.db"
    backup_file.write_bytes(b"")
    result = await asyncio.to_thread(
        exchange, "restore", str(backup_file), "--database-url", f"sqlite:///{existing}"
    )
    assert "pass --force" in one_error(result)


def test_backup_of_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "exchange.db"
    result = exchange("backup", str(tmp_path / "b.db"), "--database-url", f"sqlite:///{missing}")
    assert "no SQLite database" in one_error(result)
    assert not missing.parent.exists()


def write_config(folder: Path, database: Path, keys: str) -> Path:
    config = folder / "hub.toml"
    config.write_text(f'database_url = "sqlite:///{database}"\nkeys_dir = "{keys}"\n')
    return config


async def test_postgres_backup_and_restore_with_pg_dump(
    start_hub: StartHub,
    keystore: Keystore,
    tmp_path: Path,
    postgres_url: str,
    shared_umask: None,
) -> None:
    hub = await start_hub(postgres_url)
    await grow(hub, "js.nj.one", "js.nj.two")
    out = tmp_path / "hub.pgdump"
    ok(await asyncio.to_thread(exchange, "backup", str(out), "--database-url", postgres_url))
    assert owner_only(out)
    held = Path(f"{out}.checkpoint")
    with scratch_postgres(require_postgres(), "exchange_restore") as target:
        config = tmp_path / "pg.toml"
        config.write_text(f'database_url = "{target}"\nkeys_dir = "{keystore.root}"\n')
        result = await asyncio.to_thread(
            exchange,
            "--config",
            str(config),
            "restore",
            str(out),
            "--trusted-checkpoint",
            str(held),
        )
        assert "verified: " in ok(result)
