"""``exchange keys``: the development CA, the hub's keys, departments' keys and certificates."""

from __future__ import annotations

from pathlib import Path

import click

from exchange.cli.main import fail, load_config
from exchange.crypto.keys import KeyFileError
from exchange.crypto.keystore import Keystore

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")

dir_option = click.option(
    "--dir",
    "keys_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The keystore root (default ./keys).",
)


@click.group()
def keys() -> None:
    """Create keys and certificates in the keystore (default ./keys)."""


@keys.command("init")
@dir_option
@click.option("--hub-id", default=None, help="The hub's id (default from configuration: hub).")
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="DNS name or IP address of the hub's TLS certificate (repeatable; default localhost, "
    "127.0.0.1, ::1).",
)
@click.pass_context
def init(
    ctx: click.Context, keys_dir: Path | None, hub_id: str | None, server_names: tuple[str, ...]
) -> None:
    """Create the hub's signing key, subject secret, a development CA and TLS certificates."""
    config = load_config(ctx, keys_dir=keys_dir, hub_id=hub_id)
    try:
        key = Keystore(config.keys_dir).init_hub(config.hub_id, server_names or SERVER_NAMES)
    except (KeyFileError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"hub {config.hub_id}: signing key {key.keyid[:16]}… in {config.keys_dir}/hub")
    click.echo(f"development CA: {config.keys_dir}/ca/ca.pem (replace with your PKI in production)")


@keys.command("department")
@click.argument("department_id")
@dir_option
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="Also make the certificate a server certificate for these names (provider adapters).",
)
@click.pass_context
def department(
    ctx: click.Context, department_id: str, keys_dir: Path | None, server_names: tuple[str, ...]
) -> None:
    """Create a department's Ed25519 signing key and its TLS client certificate."""
    config = load_config(ctx, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    try:
        key = store.add_department(department_id, server_names=server_names)
    except (KeyFileError, ValueError) as exc:
        fail(str(exc))
    click.echo(
        f"{department_id}: signing key {key.keyid[:16]}… in {store.department_dir(department_id)}"
    )
    click.echo(f"public key: {key.public_bytes.hex()}")


@keys.command("operator")
@dir_option
@click.pass_context
def operator(ctx: click.Context, keys_dir: Path | None) -> None:
    """Create the operator's signing key (for a keystore made before it was apart from the
    hub's). The hub reads only its public half: move operator/signing.key to the operator."""
    config = load_config(ctx, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    try:
        key = store.init_operator()
    except KeyFileError as exc:
        fail(str(exc))
    click.echo(f"operator: signing key {key.keyid[:16]}… in {store.operator_dir}")
    click.echo(f"public key: {key.public_bytes.hex()}")


@keys.command("rotate-hub-key")
@dir_option
@click.pass_context
def rotate_hub_key(ctx: click.Context, keys_dir: Path | None) -> None:
    """Create the hub's next log key (hub/signing.next.key) and print its verifier key and
    public key; the operator then approves it (`exchange registry rotate-log-key`)."""
    from exchange.ledger.checkpoint import verifier_key

    config = load_config(ctx, keys_dir=keys_dir)
    try:
        key = Keystore(config.keys_dir).init_next_hub_key()
    except KeyFileError as exc:
        fail(str(exc))
    click.echo(f"next verifier key: {verifier_key(config.origin, key.public_bytes)}")
    click.echo(f"public key: {key.public_bytes.hex()}")


@keys.command("verifier")
@dir_option
@click.option("--origin", default=None, help="The log origin (default from configuration).")
@click.option(
    "--operator",
    "operator_key",
    is_flag=True,
    help="Print the operator's public key (hex) instead, which auditors pin with "
    "`audit verify --operator-key`.",
)
@click.pass_context
def verifier(
    ctx: click.Context, keys_dir: Path | None, origin: str | None, operator_key: bool
) -> None:
    """Print the hub's verifier key, which auditors pin (`audit verify --hub-verifier-key`).

    Reads only public halves (<keys>/hub/signing.pub, <keys>/operator/signing.pub): no secret
    is needed.
    """
    from exchange.crypto.keys import load_public_key
    from exchange.ledger.checkpoint import CheckpointError, verifier_key

    config = load_config(ctx, keys_dir=keys_dir, origin=origin)
    try:
        if operator_key:
            click.echo(Keystore(config.keys_dir).operator_public_key().hex())
            return
        public = load_public_key(Path(config.keys_dir) / "hub" / "signing.pub")
        click.echo(verifier_key(config.origin, public))
    except (KeyFileError, CheckpointError, OSError) as exc:
        fail(str(exc))


@keys.command("next")
@click.argument("department_id")
@dir_option
@click.pass_context
def next_key(ctx: click.Context, department_id: str, keys_dir: Path | None) -> None:
    """Make a department's next signing key for a rotation (its current key keeps signing
    until `exchange registry rotate DEPARTMENT --next`)."""
    config = load_config(ctx, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    try:
        key = store.add_next_key(department_id)
    except (KeyFileError, ValueError) as exc:
        fail(str(exc))
    click.echo(
        f"{department_id}: next signing key {key.keyid[:16]}… waiting in "
        f"{store.department_dir(department_id)}"
    )
    click.echo(f"public key: {key.public_bytes.hex()}")
    click.echo(f"rotate to it with: exchange registry rotate {department_id} --next")
