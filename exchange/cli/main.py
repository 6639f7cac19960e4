"""``exchange``: keys, the hub process, the operator's registry commands, health.

The group loads each command's module only when that command runs (or its own ``--help`` is
asked for): ``exchange --help`` and quick commands must not pay for gRPC, SQLAlchemy and the
hub's modules they do not use (bench/startup.py measures it). The table below therefore carries
each command's one-line help; tests/cli/test_cli_surface.py checks it against the command's own.

Exit codes, the same for every command (docs/cli.md): 0 done; 1 an error (configuration, keys,
database, a hub that does not answer, a verification that fails), printed as one ``error:`` line;
2 the hub refused (``refused: CODE REASON: message``) or a usage error (click's ``Usage:``);
3 a forked log (``audit watch``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from adapters.client import Refused
    from exchange.config import Config

T = TypeVar("T")

ERROR_EXIT = 1
REFUSED_EXIT = 2
FORK_EXIT = 3

COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:attribute", one-line help)
    "keys": ("exchange.cli.keys_commands:keys", "Create keys and certificates in the keystore."),
    "serve": ("exchange.cli.hub_commands:serve", "Run the hub until SIGTERM or SIGINT."),
    "health": ("exchange.cli.hub_commands:health", "Ask the hub's gRPC health service."),
    "migrate": (
        "exchange.cli.hub_commands:migrate",
        "Upgrade the database's schema as a step of its own.",
    ),
    "person": (
        "exchange.cli.person_commands:person",
        "The person's side: assertions, history, objections, consents, confirmation.",
    ),
    "witness": ("exchange.cli.witness_commands:witness", "Run a checkpoint witness (C2SP)."),
    "web": ("exchange.cli.web_commands:web", "The counter and my-data pages (exchange web)."),
    "registry": (
        "exchange.cli.hub_commands:registry",
        "Register departments and manage their keys (hub operator).",
    ),
    "config": (
        "exchange.cli.config_commands:config",
        "Show the effective configuration and where each value came from.",
    ),
    "backup": ("exchange.cli.backup_commands:backup", "Back up the hub's database."),
    "restore": (
        "exchange.cli.backup_commands:restore",
        "Restore a backup and verify its ledger against checkpoints you hold.",
    ),
    "audit": ("exchange.cli.audit:audit", "Export the ledger and verify exports offline."),
    "demo": ("exchange.cli.demo:demo", "Run the whole story on this machine, then stop."),
    "check": ("exchange.cli.flows_commands:check", "Is material on file for a subject?"),
    "submit": (
        "exchange.cli.flows_commands:submit",
        "Submit material collected from the person (collect once).",
    ),
    "request": (
        "exchange.cli.flows_commands:request",
        "Request material from its holder for a purpose.",
    ),
    "prefill": (
        "exchange.cli.flows_commands:prefill",
        "Prefill a registered form, each value with its source.",
    ),
    "history": (
        "exchange.cli.person_commands:history",
        "Who accessed a subject's material, when and why (as `person history`).",
    ),
    "objection": (
        "exchange.cli.records_commands:objection",
        "Objections to material: file, list, resolve.",
    ),
    "grant": ("exchange.cli.flows_commands:grant", "Grants: issue, revoke, list."),
    "catalog": (
        "exchange.cli.flows_commands:catalog",
        "The catalog: material types, purposes, forms.",
    ),
    "form": ("exchange.cli.records_commands:form", "Forms (一表通): register, show."),
    "supervise": (
        "exchange.cli.supervise_commands:supervise",
        "Supervision alerts raised over the ledger (operator).",
    ),
    "report": ("exchange.cli.supervise_commands:report", "Reports over the exchange (operator)."),
    "reconcile": (
        "exchange.cli.reconcile_commands:reconcile",
        "Compare a holder's adapter, the index and the ledger; repair (operator).",
    ),
    "adapter": (
        "exchange.cli.adapter_commands:adapter",
        "A department's provider adapter in front of its own data.",
    ),
}


def load_config(ctx: click.Context, **flags: Any) -> Config:
    """The configuration: defaults < --config file < EXCHANGE_* environment < these flags."""
    from exchange import config as config_module

    try:
        return config_module.load(_root_obj(ctx).get("config_file"), os.environ, flags)
    except config_module.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _root_obj(ctx: click.Context) -> dict[str, Any]:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, dict) else {}


def with_options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator for several click options and arguments, shown in the order given."""

    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion for a command."""
    return asyncio.run(coroutine)


def fail(message: str) -> NoReturn:
    """Print one ``error:`` line and exit 1."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(ERROR_EXIT)


def refused(code: str, reason: str, message: str) -> NoReturn:
    """Print the hub's refusal as ``refused: CODE REASON: message`` and exit 2."""
    click.secho(f"refused: {code} {reason}: {message}", fg="yellow", err=True)
    sys.exit(REFUSED_EXIT)


def call_failed(exc: Refused, listen: str) -> NoReturn:
    """End a command whose call to the hub at ``listen`` failed: the hub's refusal (a reason
    came back) as ``refused: …`` with exit 2; a call no hub answered as one ``error:`` line
    with exit 1. The same for every command."""
    if not exc.reason:  # no ErrorInfo: a transport failure, not the hub's decision
        fail(f"the hub at {listen} did not answer: {exc}")
    refused(exc.code.name, exc.reason, exc.message)


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used; startup and connection errors of any
    subcommand become one ``error:`` line (exchange.cli.errors)."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.lazy, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in self.lazy:
            return None
        module_name, _, attribute = self.lazy[cmd_name][0].partition(":")
        module = __import__(module_name, fromlist=[attribute])
        command: click.Command = getattr(module, attribute)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [
            (name, command.get_short_help_str())
            for name, command in sorted(self.commands.items())
            if name not in self.lazy
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            from exchange.cli.errors import describe

            message = describe(exc)
            if message is None:
                raise
            fail(message)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (EXCHANGE_* variables and flags override it); its relative "
    "paths are relative to the file.",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """The cross-department data-sharing exchange: hub, keys, flows, ledger audit."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


Command = Callable[..., Any]
