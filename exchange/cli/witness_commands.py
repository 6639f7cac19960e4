"""``exchange witness``: run a C2SP tlog-witness for a hub's log (another department's or
province's), with its own key and durable state."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from exchange.cli.main import fail
from exchange.crypto.keys import KeyFileError, SigningKey, load_signing_key, save_signing_key
from exchange.ledger.checkpoint import CheckpointError, NoteVerifier
from exchange.witness.cosignature import WitnessKey

KEY_FILE = "witness.key"
STATE_FILE = "state.db"


@click.group()
def witness() -> None:
    """Cosign a hub's checkpoints as an independent witness (C2SP tlog-witness)."""


@witness.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The directory to create the witness's key in.",
)
@click.option("--name", required=True, help="The witness's name, e.g. witness.js.gov.example/w1.")
def init(directory: Path, name: str) -> None:
    """Create the witness's key in --dir and print its witness key (auditors and the hub
    configure it)."""
    path = directory / KEY_FILE
    if path.exists():
        fail(f"{path} exists")
    key = SigningKey.generate()
    try:
        witness_key = WitnessKey.of(name, key.public_bytes)
    except CheckpointError as exc:
        fail(str(exc))
    save_signing_key(path, key)
    click.echo(str(witness_key))


@witness.command("serve")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The witness's directory (its key and durable state).",
)
@click.option("--name", required=True, help="The name given to `witness init`.")
@click.option("--listen", default="127.0.0.1:7480", show_default=True, help="host:port.")
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="The verifier key of a log to witness (`exchange keys verifier`); its name is the "
    "log's origin. Repeatable.",
)
def serve(directory: Path, name: str, listen: str, logs: tuple[str, ...]) -> None:
    """Serve POST /add-checkpoint until SIGTERM or SIGINT. The state (the latest checkpoint
    cosigned per log) is kept in --dir/state.db."""
    from exchange import logs as logging_setup
    from exchange.witness.server import Witness, WitnessServer

    logging_setup.configure("info", "json")
    if not (directory / KEY_FILE).exists():
        fail(
            f"no witness key in {directory}: make one with "
            f"`exchange witness init --dir {directory} --name {name}`"
        )
    try:
        key = load_signing_key(directory / KEY_FILE)
        verifiers = [NoteVerifier.parse(text) for text in logs]
        witness_key = WitnessKey.of(name, key.public_bytes)
    except (KeyFileError, CheckpointError) as exc:
        fail(str(exc))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--listen is host:port, got {listen!r}")
    try:
        server = WitnessServer(
            Witness(key, name, verifiers, directory / STATE_FILE), host, int(port)
        )
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    click.echo(f"witness {witness_key} on {host}:{server.port}", err=True)
    stop.wait()
    server.stop()


COMMANDS = [witness]
