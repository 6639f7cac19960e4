"""``exchange web``: serve the counter and "my data" pages, and manage the counter's staff.

``exchange web serve --as <form tool>`` runs the web app (adapters/web) as that registered form
tool, signing with its keys from the keystore and calling the hub through the client SDK, like
any department system. Staff accounts live in a TOML file written by ``exchange web add-staff``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from adapters.identity import DevelopmentIdentityProvider
from adapters.web.identity import SigningIdentityProvider
from adapters.web.pages import WebSettings
from adapters.web.server import WebServer
from adapters.web.staff import StaffAccounts, StaffFileError, add_account
from exchange.cli.flows_commands import Caller, _department, _verifier
from exchange.cli.main import fail, load_config, run
from exchange.crypto.keys import KeyFileError
from exchange.crypto.keystore import Keystore


@click.group()
def web() -> None:
    """The web form tool: the counter (基层窗口) and my data (我的数据)."""


@web.command()
@click.option(
    "--as",
    "department",
    required=True,
    callback=_department,
    metavar="FORM_TOOL",
    help="The registered form tool the web app acts as (its keys sign every call).",
)
@click.option("--listen", default=None, help="host:port of the hub.")
@click.option(
    "--keys-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Keystore."
)
@click.option("--hub-verifier", default=None, callback=_verifier, help="The hub's verifier key.")
@click.option(
    "--web",
    "web_address",
    default="127.0.0.1:8080",
    show_default=True,
    help="host:port the pages are served on (port 0: any free port).",
)
@click.option(
    "--staff-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="TOML file of staff accounts (exchange web add-staff).",
)
@click.option(
    "--idle-minutes",
    default=15,
    show_default=True,
    help="Sign sessions out after this long without use.",
)
@click.option(
    "--development-identity-provider",
    "identity_member",
    default=None,
    metavar="MEMBER",
    help="Sign assertions as this registered identity provider (keys from the keystore) for "
    "any ID number typed in: demo and tests only.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    web_address: str,
    staff_file: Path,
    idle_minutes: int,
    identity_member: str | None,
) -> None:
    """Serve the counter and my data pages until Ctrl-C."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    if not identity_member:
        fail(
            "no identity provider is configured: pass --development-identity-provider MEMBER "
            "for a demo (docs/web.md says how a real one plugs in)"
        )
    try:
        staff = StaffAccounts.load(staff_file)
    except StaffFileError as exc:
        fail(str(exc))
    member: str = identity_member or ""
    host, _, port = web_address.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--web must be host:port, not {web_address!r}")

    async def go() -> None:
        try:
            client = Caller(config, department, hub_verifier).client()
            provider = DevelopmentIdentityProvider(
                member, Keystore(config.keys_dir).department_signing_key(member)
            )
        except KeyFileError as exc:
            fail(str(exc))
        server = WebServer(
            WebSettings(department, staff, idle_seconds=idle_minutes * 60.0),
            client,
            SigningIdentityProvider(provider),
            host=host.strip("[]"),
            port=int(port),
            access_log=True,
        )
        try:
            await server.start()
            click.echo(f"counter:  {server.url}/counter")
            click.echo(f"my data:  {server.url}/me")
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()
        finally:
            await server.stop()
            await client.close()

    try:
        run(go())
    except KeyboardInterrupt:
        click.echo("stopped")


@web.command("add-staff")
@click.argument("account")
@click.option(
    "--staff-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="TOML file of staff accounts (created if missing).",
)
@click.option("--name", default="", help="Display name (default: the account).")
@click.password_option(help="The password (prompted if not given).")
def add_staff(account: str, staff_file: Path, name: str, password: str) -> None:
    """Add or replace a counter clerk's ACCOUNT in the staff file."""
    try:
        add_account(staff_file, account, name or account, password)
    except StaffFileError as exc:
        fail(str(exc))
    click.echo(f"{account} saved in {staff_file}")


COMMANDS = [web]
