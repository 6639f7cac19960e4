"""``exchange backup`` and ``exchange restore``: copies of the hub's database that are proven
against the checkpoints the operator and auditors hold before they are trusted.

SQLite: SQLite's online backup API copies a consistent snapshot while the hub keeps serving
(readers and the writer are not stopped; the copy restarts its pages if the writer changes
them). PostgreSQL: a wrapper around ``pg_dump --format=custom`` and ``pg_restore`` (the
PostgreSQL client tools must be installed); docs/operations.md shows the same commands by hand.

``restore`` puts the backup in place, then exports its ledger and verifies it offline, as an
auditor would (exchange.audit.verify): every entry, signature, the hash chain and the Merkle
tree, and that it extends every ``--trusted-checkpoint`` given. A backup older than a
checkpoint an auditor holds is refused: serving it would fork the log they saw.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click

from exchange.cli.main import fail, load_config
from exchange.store.files import create_private

SQLITE_PREFIX = "sqlite:///"


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for another database."""
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX) :]
        if not path or path == ":memory:":
            fail("an in-memory database cannot be backed up")
        return Path(path)
    if url.startswith("sqlite"):
        fail(f"use {SQLITE_PREFIX}PATH for a SQLite database")
    return None


def _libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq (pg_dump) takes it: no ``+driver``."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        fail(f"backup supports sqlite:/// and postgresql:// databases, not {scheme or url!r}")
    return f"postgresql://{rest}"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        fail(
            f"{name} not found: install the PostgreSQL client tools "
            "(e.g. apt install postgresql-client)"
        )
    return found


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no message"])[0]
        fail(f"{Path(argv[0]).name} failed: {first}")


def sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite database with the online backup API, through a temporary file beside
    ``target`` renamed into place (a crash leaves no half-written ``target``)."""
    temporary = target.with_name(target.name + ".partial")
    temporary.unlink(missing_ok=True)
    # A copy holds what the database holds: owner-readable only, like the database itself
    # (SQLite opens the empty file and gives its journal the same mode).
    create_private(temporary)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(temporary)
        try:
            src.backup(dst)
            # A self-contained file: no WAL beside it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(temporary, target)


database_option = click.option(
    "--database-url",
    default=None,
    help="The hub's database (default: the configuration's database_url).",
)


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@database_option
@click.pass_context
def backup(ctx: click.Context, out: Path, database_url: str | None) -> None:
    """Back up the hub's database to OUT while the hub runs (SQLite's online backup; for
    PostgreSQL, pg_dump's custom format), and save the latest checkpoint beside it."""
    config = load_config(ctx, database_url=database_url)
    source = _sqlite_path(config.database_url)
    if out.exists():
        fail(f"{out} exists; choose a new file (a backup never overwrites one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        if not source.is_file():
            fail(f"no SQLite database at {source}")
        sqlite_copy(source, out)
        url = f"{SQLITE_PREFIX}{out}"
    else:
        create_private(out)  # pg_dump writes into it, keeping its owner-only mode
        try:
            _run(
                [
                    _tool("pg_dump"),
                    "--format=custom",
                    "--file",
                    str(out),
                    _libpq_url(config.database_url),
                ]
            )
        except BaseException:  # a failed dump leaves no empty file behind
            out.unlink(missing_ok=True)
            raise
        url = config.database_url
    checkpoint = _latest_checkpoint(url)
    if checkpoint is not None:
        Path(f"{out}.checkpoint").write_text(checkpoint.note, encoding="utf-8")
        click.echo(
            f"backed up to {out}: ledger at checkpoint size {checkpoint.size} "
            f"(saved to {out}.checkpoint)"
        )
    else:
        click.echo(f"backed up to {out}: the ledger has no checkpoint yet")


def _latest_checkpoint(url: str) -> Any:
    from exchange.ledger import storage
    from exchange.store.engines import open_engine

    engine = open_engine(url, create=False)
    try:
        with engine.connect() as conn:
            return storage.latest_checkpoint(conn)
    finally:
        engine.dispose()


@click.command()
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@database_option
@click.option(
    "--trusted-checkpoint",
    "trusted",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed checkpoint the operator or an auditor holds (repeatable); the restored "
    "ledger must extend each one.",
)
@click.option(
    "--hub-verifier",
    default=None,
    help="Pin the hub's verifier key <name>+<id>+<key> (default: from the keystore).",
)
@click.option("--force", is_flag=True, help="Replace an existing SQLite database file.")
@click.pass_context
def restore(
    ctx: click.Context,
    backup_file: Path,
    database_url: str | None,
    trusted: tuple[Path, ...],
    hub_verifier: str | None,
    force: bool,
) -> None:
    """Restore BACKUP_FILE into the database, then verify its ledger offline and against every
    --trusted-checkpoint; exit 1 naming the first failure (then do not serve it)."""
    config = load_config(ctx, database_url=database_url)
    target = _sqlite_path(config.database_url)
    if target is not None:
        if target.exists() and not force:
            fail(f"{target} exists; stop the hub and pass --force to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):  # a stale WAL would be replayed into the restored file
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        sqlite_copy(backup_file, target)
    else:
        _run(
            [
                _tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--dbname",
                _libpq_url(config.database_url),
                str(backup_file),
            ]
        )
    click.echo(f"restored {backup_file} into {_shown(config.database_url)}")
    verify_restored(config, trusted, hub_verifier)


def _shown(url: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def verify_restored(config: Any, trusted: tuple[Path, ...], hub_verifier: str | None) -> None:
    """Export the restored ledger and verify it as an auditor would, against each trusted
    checkpoint. Exits 1 on the first failure."""
    from exchange.audit.verify import verify_export
    from exchange.cli.audit import _published_verifier, _registry_key_history
    from exchange.ledger import storage
    from exchange.ledger.checkpoint import NoteVerifier
    from exchange.ledger.export import export_ledger, first_keys
    from exchange.store.engines import open_engine

    engine = open_engine(config.database_url, create=False)
    try:
        with engine.connect() as conn:
            latest = storage.latest_checkpoint(conn)
        if latest is None:
            if trusted:
                fail("the restored ledger has no checkpoint, but checkpoints are held: refuse it")
            click.echo("verified: the restored ledger is empty")
            return
        pinned = (
            str(NoteVerifier.parse(hub_verifier)) if hub_verifier else _published_verifier(config)
        )
        legacy = NoteVerifier.parse(pinned).public_key
        keys = list(_registry_key_history(config.hub_id, legacy)(engine))
        with tempfile.TemporaryDirectory() as scratch:
            export = Path(scratch) / "ledger.export"
            with export.open("w", encoding="utf-8") as out:
                export_ledger(
                    engine, out, keys, [pinned], operator_keys=first_keys(keys, config.hub_id)
                )
            for checkpoint in (None, *trusted):
                with export.open(encoding="utf-8") as handle:
                    report = verify_export(
                        handle,
                        hub_keys=[pinned],
                        trusted_checkpoint=(
                            checkpoint.read_text(encoding="utf-8") if checkpoint else None
                        ),
                        workers=0,
                    )
                if report.first_failure is not None:
                    against = f" against {checkpoint}" if checkpoint else ""
                    fail(f"INVALID{against}: {report.first_failure}; do not serve this database")
    finally:
        engine.dispose()
    held = f", extends {len(trusted)} held checkpoint(s)" if trusted else ""
    click.echo(
        f"verified: {report.entries} entries, {report.checkpoints} checkpoints, "
        f"origin {report.origin}{held}"
    )
