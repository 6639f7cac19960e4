"""``exchange audit``: export the ledger, and verify an export offline.

The group is importable on its own. The main ``exchange`` CLI registers it and passes what the
ledger does not know through ``ctx.obj``:

- ``engine``: a SQLAlchemy Engine (else ``--database-url`` or the configured database);
- ``key_history``: a callable(engine) -> list[KeyRecord] giving every department key (else
  ``--key-history FILE``, a JSON list of key records as in the export, else the database's
  registry);
- ``hub_key``: the hub's key as a SigningKey, raw public key bytes or verifier key string
  (else ``--hub-verifier-key``, else the public key in <keys>/hub/signing.pub); a SigningKey or
  bytes is named by the log origin.

No command here needs a secret of the hub's.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import click

from exchange.cli.main import with_options
from exchange.cli.progress import LineCounter, progress
from exchange.crypto.keys import SigningKey
from exchange.ledger.checkpoint import CheckpointError, NoteVerifier, verifier_key

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from exchange.ledger.export import KeyRecord

# SQLAlchemy, the exporter and the verifier load when a command runs, not for `--help`.
KeyHistory = Callable[["Engine"], Sequence["KeyRecord"]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _obj(ctx: click.Context) -> dict[str, Any]:
    return ctx.obj if isinstance(ctx.obj, dict) else {}


def _key_history_file(path: Path) -> list[KeyRecord]:
    from exchange.ledger.export import KeyRecord

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


def _configured(ctx: click.Context) -> Any:
    """The hub configuration of the ``exchange`` CLI (file < environment < flags); the
    defaults when the group runs on its own."""
    from exchange.cli.main import load_config
    from exchange.config import Config

    return load_config(ctx) if "config_file" in _obj(ctx) else Config()


def _registry_key_history(hub_id: str, legacy_operator_key: bytes) -> KeyHistory:
    """Every department key from the database's registry, plus the operator's keys; a
    database whose hub never recorded an operator key (before the operator's key was apart
    from the hub's) had the hub key sign as the operator: ``legacy_operator_key``."""

    def history(engine: Engine) -> Sequence[KeyRecord]:
        from exchange.crypto.keys import keyid as keyid_of
        from exchange.hub import key_history
        from exchange.ledger.export import KeyRecord
        from exchange.store.operator_keys import OperatorKeys
        from exchange.store.registry import Registry

        keys = key_history(Registry(engine), OperatorKeys(engine, hub_id))
        if not any(k.actor == hub_id for k in keys):
            keys.insert(
                0,
                KeyRecord(hub_id, keyid_of(legacy_operator_key), legacy_operator_key, _EPOCH),
            )
        return keys

    return history


def _published_verifier(config: Any) -> str:
    """The hub's verifier key from the public half of its key (<keys>/hub/signing.pub)."""
    from exchange.crypto.keys import KeyFileError, load_public_key

    try:
        public = load_public_key(Path(config.keys_dir) / "hub" / "signing.pub")
    except KeyFileError as exc:
        raise click.UsageError(
            f"{exc}; give the hub's verifier key with --hub-verifier-key "
            "(`exchange keys verifier` prints it)"
        ) from exc
    return verifier_key(config.origin, public)


def _policy(witnesses: tuple[str, ...], quorum: int | None) -> Any:
    """The witness policy of --witness / --quorum, or None without witnesses."""
    from exchange.witness.cosignature import WitnessPolicy

    if not witnesses:
        if quorum is not None:
            raise click.UsageError("--quorum needs --witness keys")
        return None
    try:
        return WitnessPolicy.parse(witnesses, quorum)
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--witness/--quorum") from exc


witness_policy_options = [
    click.option(
        "--witness",
        "witnesses",
        multiple=True,
        help="A witness key (<name>+<id>+<key>) of the policy; repeatable.",
    ),
    click.option(
        "--quorum",
        type=click.IntRange(min=1),
        default=None,
        help="How many of the --witness keys must have cosigned a checkpoint (default: all).",
    ),
]


_with_policy_options = with_options(*witness_policy_options)


@click.group(name="audit")
def audit() -> None:
    """Export the ledger and verify exports offline."""


@audit.command(name="export")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The export file to write.",
)
@click.option("--database-url", envvar="EXCHANGE_DATABASE_URL", help="When not configured.")
@click.option(
    "--key-history",
    "key_history_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON list of key records, when not configured.",
)
@click.option(
    "--hub-verifier",
    "--hub-verifier-key",
    "hub_verifier_keys",
    multiple=True,
    help="The hub's verifier key <name>+<id>+<key> (repeatable).",
)
@click.pass_context
def export_command(
    ctx: click.Context,
    out_path: Path,
    database_url: str | None,
    key_history_path: Path | None,
    hub_verifier_keys: tuple[str, ...],
) -> None:
    """Write the ledger (up to its latest checkpoint) as a self-describing stream to --out.

    Needs public material only: the database (or --database-url), the hub's verifier key
    (--hub-verifier-key, else from <keys>/hub/signing.pub) and the departments' public keys
    (from the database's registry, or --key-history).
    """
    from exchange.ledger import storage
    from exchange.ledger.export import export_ledger, first_keys
    from exchange.store.engines import open_engine
    from exchange.store.files import open_private_text

    obj = _obj(ctx)
    engine: Engine | None = obj.get("engine")
    configured = _configured(ctx)
    try:
        hub_keys = [str(NoteVerifier.parse(k)) for k in hub_verifier_keys]
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--hub-verifier-key") from exc
    with ExitStack() as stack:
        if engine is None:
            url = database_url or (configured.database_url if configured else None)
            if not url:
                raise click.UsageError("--database-url is required")
            engine = open_engine(url, create=False)
            stack.callback(engine.dispose)
        with engine.connect() as conn:
            latest = storage.latest_checkpoint(conn)
        if latest is None:
            raise click.ClickException("the ledger has no checkpoint yet; nothing to export")
        if obj.get("hub_key") is not None:
            hub_keys.append(_hub_verifier(obj["hub_key"], latest.origin))
        if not hub_keys:
            hub_keys.append(_published_verifier(configured))
        history: KeyHistory | None = obj.get("key_history")
        if history is not None:
            keys = list(history(engine))
        elif key_history_path is not None:
            keys = _key_history_file(key_history_path)
        else:
            legacy = NoteVerifier.parse(hub_keys[0]).public_key
            keys = list(_registry_key_history(configured.hub_id, legacy)(engine))
        temporary = out_path.with_name(out_path.name + ".partial")
        with (
            open_private_text(temporary) as out,  # owner-readable only
            progress("exporting", latest.size) as advance,
        ):
            summary = export_ledger(
                engine,
                cast(IO[str], LineCounter(out, advance)),
                keys,
                hub_keys,
                operator_keys=first_keys(keys, configured.hub_id),
            )
        temporary.replace(out_path)
    click.echo(
        f"exported {summary.entries} entries, {summary.checkpoints} checkpoints and "
        f"{summary.keys} keys to {out_path}"
    )


@audit.command(name="verify")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--trusted-checkpoint",
    "trusted_checkpoints",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed checkpoint you already hold (a receipt's, `audit watch`'s state, a "
    "witness's); the export must extend it. Repeatable: each one is checked.",
)
@click.option(
    "--hub-verifier",
    "--hub-verifier-key",
    "hub_verifier_keys",
    multiple=True,
    help="Pin the hub key (<name>+<id>+<key>); default: the keys the export declares.",
)
@click.option(
    "--operator-key",
    "operator_keys",
    multiple=True,
    help="Pin the operator's first public key (hex; `exchange keys verifier --operator`); "
    "default: the keys the export declares.",
)
@click.option("--workers", type=int, default=None, help="Processes for signatures (all cores).")
@_with_policy_options
@click.option(
    "--issue-window",
    "issue_window",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="The hub's replay window in seconds: how far an entry's time may lie from its "
    "request's issued_at.",
)
@click.pass_context
def verify_command(
    ctx: click.Context,
    export_file: Path,
    trusted_checkpoints: tuple[Path, ...],
    hub_verifier_keys: tuple[str, ...],
    operator_keys: tuple[str, ...],
    workers: int | None,
    witnesses: tuple[str, ...],
    quorum: int | None,
    issue_window: int,
) -> None:
    """Verify an export offline; exit 0 if valid, 1 naming the first failing sequence."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from exchange.audit.verify import verify_export

    try:
        pinned = [str(NoteVerifier.parse(k)) for k in hub_verifier_keys]
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint="--hub-verifier-key") from exc
    try:
        operators = [bytes.fromhex(k) for k in operator_keys]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--operator-key") from exc
    if any(len(k) != 32 for k in operators):
        raise click.BadParameter("an Ed25519 public key is 32 bytes", param_hint="--operator-key")
    trusted = [path.read_text(encoding="utf-8") for path in trusted_checkpoints]
    policy = _policy(witnesses, quorum)
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
            issue_window_seconds=issue_window,
            operator_keys=operators,
            witness_policy=None if policy is None else policy.require_quorum,
        )
    if not pinned:
        console.print(
            "warning: hub key not pinned; trusted the keys the export declares "
            "(use --hub-verifier-key)"
        )
    if not operators:
        console.print(
            "warning: operator key not pinned; trusted the keys the export declares "
            "(use --operator-key)"
        )
    failure = report.first_failure
    if failure is not None:
        click.echo(f"INVALID: {failure}", err=True)
        sys.exit(1)
    click.echo(
        f"valid: {report.entries} entries, {report.checkpoints} checkpoints, "
        f"{report.signatures} envelope signatures, origin {report.origin}"
    )
    if report.witnessed_size is not None:
        click.echo(
            f"witnessed: the checkpoint of size {report.witnessed_size} carries the quorum"
            + (
                f"; entries {report.witnessed_size} to {report.entries - 1} are not witnessed yet"
                if report.witnessed_size < report.entries
                else ""
            )
        )


def _auditor_client(
    ctx: click.Context, department: str, listen: str | None, keys_dir: Path | None
) -> Any:
    from adapters.client import HubClient, Identity
    from exchange.cli.main import load_config
    from exchange.crypto.keystore import Keystore

    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    if department == config.hub_id:
        identity = Identity(department, store.operator_signing_key(), store.operator_tls())
    else:
        identity = Identity(
            department, store.department_signing_key(department), store.department_tls(department)
        )
    # grpc.aio channels belong to the event loop that creates them: make it inside asyncio.run.
    return config, lambda: HubClient(config.listen, identity, server_name="localhost")


def _watching(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier_key: str | None,
    state_file: Path,
    witnesses: tuple[str, ...],
    quorum: int | None,
) -> tuple[Any, Callable[[], Any]]:
    """The configuration, and how to make the auditor's ``Watcher`` of the watch options (inside
    ``asyncio.run``: its client's channel belongs to that loop); the caller closes its client."""
    from adapters.auditor import Watcher

    config, connect = _auditor_client(ctx, department, listen, keys_dir)
    verifier = _verifier(config, hub_verifier_key)
    policy = _policy(witnesses, quorum)
    return config, lambda: Watcher(connect(), verifier, state_file, policy)


def _verifier(config: Any, given: str | None) -> str:
    if given:
        return str(NoteVerifier.parse(given))
    from exchange.crypto.keys import load_public_key

    public = load_public_key(Path(config.keys_dir) / "hub" / "signing.pub")
    return verifier_key(config.origin, public)


watch_options = [
    click.option(
        "--as", "department", required=True, help="The auditor department (or the hub id)."
    ),
    click.option("--listen", default=None, help="The hub's host:port."),
    click.option(
        "--keys-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The keystore root.",
    ),
    click.option(
        "--hub-verifier",
        "--hub-verifier-key",
        "hub_verifier_key",
        default=None,
        help="The hub's verifier key (default: from keys/hub/signing.pub and the origin).",
    ),
    click.option(
        "--state",
        "state_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("var/audit/trusted-checkpoint"),
        show_default=True,
        help="Where the last trusted checkpoint is kept.",
    ),
]


_with_watch_options = with_options(*watch_options)


@audit.command(name="watch")
@_with_watch_options
@_with_policy_options
@click.option("--interval", default=5.0, show_default=True, help="Seconds between checks.")
@click.option("--once", is_flag=True, help="Check once and exit.")
@click.pass_context
def watch_command(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier_key: str | None,
    state_file: Path,
    witnesses: tuple[str, ...],
    quorum: int | None,
    interval: float,
    once: bool,
) -> None:
    """Follow the live log: every new checkpoint must extend the trusted one.

    A rewritten or forked log is reported loudly with both checkpoints and exit code 3. With
    --witness keys, a checkpoint without the witness quorum is refused (exit 1).
    """
    import asyncio

    from adapters.auditor import ForkDetected
    from adapters.client import Refused
    from exchange.cli.main import call_failed

    config, watching = _watching(
        ctx, department, listen, keys_dir, hub_verifier_key, state_file, witnesses, quorum
    )

    async def loop() -> None:
        watcher = watching()
        try:
            while True:
                advance = await watcher.check()
                checkpoint = advance.checkpoint
                if advance.old_size != checkpoint.size:
                    click.echo(
                        f"ok: size {advance.old_size} -> {checkpoint.size}, consistent; "
                        f"root {checkpoint.root_hash.hex()[:16]}…"
                    )
                if once:
                    return
                await asyncio.sleep(interval)
        finally:
            await watcher.client.close()

    try:
        asyncio.run(loop())
    except ForkDetected as fork:
        click.secho("!" * 72, fg="red", err=True)
        click.secho(str(fork), fg="red", bold=True, err=True)
        click.secho("!" * 72, fg="red", err=True)
        sys.exit(3)
    except Refused as exc:
        call_failed(exc, config.listen)
    except CheckpointError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


@audit.command(name="check-receipt")
@click.argument("receipt_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_with_watch_options
@_with_policy_options
@click.pass_context
def check_receipt_command(
    ctx: click.Context,
    receipt_file: Path,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier_key: str | None,
    state_file: Path,
    witnesses: tuple[str, ...],
    quorum: int | None,
) -> None:
    """Prove a receipt (JSON form of exchange.v1.Receipt): signed, included, consistent with
    the trusted checkpoint."""
    import asyncio

    from google.protobuf import json_format

    from adapters.auditor import ForkDetected
    from adapters.client import Refused
    from exchange.cli.main import call_failed
    from exchange.v1 import common_pb2

    try:
        receipt = json_format.Parse(receipt_file.read_text(), common_pb2.Receipt())
    except json_format.ParseError as exc:
        raise click.BadParameter(str(exc), param_hint="RECEIPT_FILE") from exc
    config, watching = _watching(
        ctx, department, listen, keys_dir, hub_verifier_key, state_file, witnesses, quorum
    )

    async def check() -> Any:
        watcher = watching()
        try:
            return await watcher.check_receipt(receipt)
        finally:
            await watcher.client.close()

    try:
        checkpoint = asyncio.run(check())
    except ForkDetected as fork:
        click.secho(str(fork), fg="red", bold=True, err=True)
        sys.exit(3)
    except Refused as exc:
        call_failed(exc, config.listen)
    except CheckpointError as exc:
        click.secho(f"INVALID: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"valid: entry {receipt.sequence} is in the hub's log of size {checkpoint.size}")


COMMANDS = [audit]
