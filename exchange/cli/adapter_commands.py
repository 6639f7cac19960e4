"""``exchange adapter``: a department's provider adapter — check its mapping, serve, publish."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from exchange.cli.main import call_failed, fail, run
from exchange.cli.progress import progress

if TYPE_CHECKING:
    from adapters.settings import DepartmentSettings

config_option = click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The department's adapter TOML (see docs/adapters.md).",
)


@click.group()
def adapter() -> None:
    """A department's provider adapter in front of its own database or files."""


def _settings(config_file: Path) -> DepartmentSettings:
    from adapters.errors import SettingsError
    from adapters.settings import load

    try:
        return load(config_file)
    except SettingsError as exc:
        fail(str(exc))
        raise  # fail() exits; this only informs the type checker


@adapter.command("check")
@config_option
def check_mapping(config_file: Path) -> None:
    """Check the mapping against the real tables, columns or files, then exit."""
    from adapters.backends import open_backend
    from adapters.errors import BackendError, MappingError

    settings = _settings(config_file)
    backend = open_backend(settings)
    try:
        backend.validate()
    except (MappingError, BackendError) as exc:
        fail(str(exc))
    finally:
        backend.close()
    for material_type, mapping in settings.materials.items():
        store = "stored" if mapping.store is not None else "read only"
        click.echo(
            f"{material_type:32} {mapping.source:40} {len(mapping.fields)} field(s), {store}"
        )
    click.echo("mapping OK")


@adapter.command()
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    default="json",
    help="json lines (default) or console for people.",
)
@click.option("--log-level", default="info", help="debug, info (default), warning or error.")
def serve(config_file: Path, log_format: str, log_level: str) -> None:
    """Serve the hub until SIGTERM or SIGINT; refuse to start on a bad mapping."""
    from adapters.backends import open_backend
    from adapters.errors import BackendError, MappingError
    from adapters.provider import ProviderServer
    from exchange import logs
    from exchange.crypto.keys import KeyFileError
    from exchange.rpc.ports import AddressInUse

    settings = _settings(config_file)
    logs.configure(log_level, log_format)

    async def go() -> None:
        server = ProviderServer(settings, open_backend(settings))
        port = await server.start()
        click.echo(
            f"adapter {settings.department_id} serving {', '.join(settings.materials)} "
            f"on port {port}",
            err=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    try:
        run(go())
    except (MappingError, BackendError, KeyFileError, AddressInUse, RuntimeError) as exc:
        fail(str(exc))


@adapter.command()
@config_option
@click.option(
    "--material-type",
    "material_types",
    multiple=True,
    help="Publish only this type (repeatable; default every mapped type).",
)
@click.option(
    "--hub", "hub_target", default=None, help="host:port of the hub (default hub_target)."
)
@click.option(
    "--hub-verifier",
    default=None,
    help="The hub's signed-note verifier key; when given, every receipt is verified.",
)
def publish(
    config_file: Path,
    material_types: tuple[str, ...],
    hub_target: str | None,
    hub_verifier: str | None,
) -> None:
    """Make the material this department already holds known to the hub's index."""
    from adapters.backends import open_backend
    from adapters.client import HubClient, Identity, Refused
    from adapters.errors import AdapterError
    from adapters.holdings import publish_holdings
    from exchange.crypto.keys import KeyFileError
    from exchange.ledger import CheckpointError

    settings = _settings(config_file)
    unknown = [t for t in material_types if t not in settings.materials]
    if unknown:
        fail(f"not mapped in {config_file}: {', '.join(unknown)}")

    async def go() -> None:
        keystore = settings.keystore
        identity = Identity(
            settings.department_id,
            keystore.department_signing_key(settings.department_id),
            keystore.department_tls(settings.department_id),
        )
        backend = open_backend(settings)
        try:
            await asyncio.to_thread(backend.validate)
            async with HubClient(
                hub_target or settings.hub_target,
                identity,
                server_name=settings.hub_server_name,
                hub_verifier=hub_verifier,
            ) as client:
                for material_type in material_types or tuple(settings.materials):
                    with progress(f"publishing {material_type}") as advance:
                        summary = await publish_holdings(
                            client, backend, material_type, progress=advance
                        )
                    counts = ", ".join(f"{n} {o}" for o, n in sorted(summary.outcomes.items()))
                    click.echo(f"{material_type}: {summary.total} published ({counts or 'none'})")
        finally:
            backend.close()

    try:
        run(go())
    except Refused as exc:
        call_failed(exc, hub_target or settings.hub_target)
    except (AdapterError, KeyFileError, CheckpointError) as exc:
        fail(str(exc))


COMMANDS = [adapter]
