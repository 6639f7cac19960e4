"""``exchange``: keys, the hub process, the operator's registry commands, health."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from exchange import config as config_module
from exchange.config import Config

T = TypeVar("T")


def load_config(ctx: click.Context, **flags: Any) -> Config:
    """The configuration: defaults < --config file < EXCHANGE_* environment < these flags."""
    try:
        return config_module.load(ctx.obj.get("config_file"), os.environ, flags)
    except config_module.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion for a command."""
    return asyncio.run(coroutine)


def fail(message: str) -> None:
    """Print an error and exit 1."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (EXCHANGE_* variables and flags override it).",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """The cross-department data-sharing exchange: hub, keys, ledger audit."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


def _register_subcommands() -> None:
    from exchange.cli import hub_commands, keys_commands

    main.add_command(keys_commands.keys)
    main.add_command(hub_commands.serve)
    main.add_command(hub_commands.health)
    main.add_command(hub_commands.migrate)
    main.add_command(hub_commands.registry)
    for optional in (
        "exchange.cli.audit",
        "exchange.cli.demo",
        "exchange.cli.flows_commands",
        "exchange.cli.person_commands",
        "exchange.cli.supervise_commands",
        "exchange.cli.adapter_commands",
        "exchange.cli.witness_commands",
        "exchange.cli.web_commands",
    ):
        try:
            module = __import__(optional, fromlist=["commands"])
        except ImportError as exc:
            if exc.name != optional:
                raise
            continue
        for command in getattr(module, "COMMANDS", ()):
            main.add_command(command)


_register_subcommands()

Command = Callable[..., Any]
