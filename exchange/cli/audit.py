"""``exchange audit``: export the ledger, and verify an export offline.

The group is importable on its own. The main ``exchange`` CLI registers it and passes what the
ledger does not know through ``ctx.obj``:

- ``engine``: a SQLAlchemy Engine (else ``--database-url`` is required for ``export``);
- ``key_history``: a callable(engine) -> list[KeyRecord] giving every department key (else
  ``--key-history FILE``, a JSON list of key records as in the export, or none);
- ``hub_key``: the hub's key as a SigningKey, raw public key bytes or verifier key string
  (else ``--hub-verifier-key``); a SigningKey or bytes is named by the log origin.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from exchange.crypto.keys import SigningKey
from exchange.ledger import storage
from exchange.ledger.checkpoint import CheckpointError, NoteVerifier, verifier_key
from exchange.ledger.export import KeyRecord, export_ledger
from exchange.ledger.verify import verify_export
from exchange.store.database import open_engine

KeyHistory = Callable[[Engine], Sequence[KeyRecord]]


def _obj(ctx: click.Context) -> dict[str, Any]:
    return ctx.obj if isinstance(ctx.obj, dict) else {}


def _key_history_file(path: Path) -> list[KeyRecord]:
    records = json.loads(path.read_text())
    return [
        KeyRecord(
            actor=r["actor"],
            keyid=r["keyid"],
            public_key=base64.b64decode(r["public_key"]),
            valid_from=datetime.fromisoformat(r["valid_from"]),
            valid_until=datetime.fromisoformat(r["valid_until"]) if r.get("valid_until") else None,
            revoked_at=datetime.fromisoformat(r["revoked_at"]) if r.get("revoked_at") else None,
        )
        for r in records
    ]


def _hub_verifier(hub_key: object, origin: str) -> str:
    if isinstance(hub_key, SigningKey):
        return verifier_key(origin, hub_key.public_bytes)
    if isinstance(hub_key, bytes):
        return verifier_key(origin, hub_key)
    if isinstance(hub_key, str):
        return str(NoteVerifier.parse(hub_key))
    raise click.UsageError("ctx.obj['hub_key'] is not a key")


@click.group(name="audit")
def audit() -> None:
    """Export the ledger and verify exports offline."""


@audit.command(name="export")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--database-url", envvar="EXCHANGE_DATABASE_URL", help="When not configured.")
@click.option(
    "--key-history",
    "key_history_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON list of key records, when not configured.",
)
@click.option("--hub-verifier-key", "hub_verifier_keys", multiple=True, help="<name>+<id>+<key>.")
@click.pass_context
def export_command(
    ctx: click.Context,
    out_path: Path,
    database_url: str | None,
    key_history_path: Path | None,
    hub_verifier_keys: tuple[str, ...],
) -> None:
    """Write the ledger (up to its latest checkpoint) as a self-describing stream to --out."""
    obj = _obj(ctx)
    engine: Engine | None = obj.get("engine")
    with ExitStack() as stack:
        if engine is None:
            if not database_url:
                raise click.UsageError("--database-url is required")
            engine = open_engine(database_url)
            stack.callback(engine.dispose)
        history: KeyHistory | None = obj.get("key_history")
        if history is not None:
            keys = list(history(engine))
        elif key_history_path is not None:
            keys = _key_history_file(key_history_path)
        else:
            keys = []
        with engine.connect() as conn:
            latest = storage.latest_checkpoint(conn)
        if latest is None:
            raise click.ClickException("the ledger has no checkpoint yet; nothing to export")
        hub_keys = [str(NoteVerifier.parse(k)) for k in hub_verifier_keys]
        if obj.get("hub_key") is not None:
            hub_keys.append(_hub_verifier(obj["hub_key"], latest.origin))
        if not hub_keys:
            raise click.UsageError("the hub's verifier key is needed (--hub-verifier-key)")
        temporary = out_path.with_name(out_path.name + ".partial")
        with temporary.open("w", encoding="utf-8") as out:
            summary = export_ledger(engine, out, keys, hub_keys)
        temporary.replace(out_path)
    click.echo(
        f"exported {summary.entries} entries, {summary.checkpoints} checkpoints and "
        f"{summary.keys} keys to {out_path}"
    )


@audit.command(name="verify")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trusted-checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed checkpoint you already hold; the export must extend it.",
)
@click.option(
    "--hub-verifier-key",
    "hub_verifier_keys",
    multiple=True,
    help="Pin the hub key (<name>+<id>+<key>); default: the keys the export declares.",
)
@click.option("--workers", type=int, default=None, help="Processes for signatures (all cores).")
@click.pass_context
def verify_command(
    ctx: click.Context,
    export_file: Path,
    trusted_checkpoint: Path | None,
    hub_verifier_keys: tuple[str, ...],
    workers: int | None,
) -> None:
    """Verify an export offline; exit 0 if valid, 1 naming the first failing sequence."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    try:
        pinned = [str(NoteVerifier.parse(k)) for k in hub_verifier_keys]
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--hub-verifier-key") from exc
    trusted = trusted_checkpoint.read_text(encoding="utf-8") if trusted_checkpoint else None
    console = Console(stderr=True)
    with ExitStack() as stack:
        advance: Callable[[int], None] | None = None
        on_header: Callable[[int], None] | None = None
        if console.is_terminal:
            bar = stack.enter_context(
                Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=console,
                )
            )
            task = bar.add_task("verifying", total=None)

            def advance(n: int) -> None:
                bar.advance(task, n)

            def on_header(size: int) -> None:
                bar.update(task, total=size)

        handle = stack.enter_context(export_file.open(encoding="utf-8"))
        report = verify_export(
            handle,
            hub_keys=pinned,
            trusted_checkpoint=trusted,
            workers=workers,
            progress=advance,
            on_header=on_header,
        )
    if not pinned:
        console.print(
            "warning: hub key not pinned; trusted the keys the export declares "
            "(use --hub-verifier-key)"
        )
    failure = report.first_failure
    if failure is not None:
        click.echo(f"INVALID: {failure}", err=True)
        sys.exit(1)
    click.echo(
        f"valid: {report.entries} entries, {report.checkpoints} checkpoints, "
        f"{report.signatures} envelope signatures, origin {report.origin}"
    )
