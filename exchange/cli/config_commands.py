"""``exchange config check``: the effective configuration and where each value came from."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import click

from exchange.cli.main import _root_obj


def _mask(name: str, value: Any) -> Any:
    """A database URL's password is never printed."""
    if name == "database_url" and isinstance(value, str):
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", value)
    return value


def effective(config: Any, sources: dict[str, str]) -> list[tuple[str, Any, str]]:
    """(name, value, source) for every setting, sub-tables as ``table.name``; the source is a
    file path, ``environment``, ``command line`` or ``default``."""
    rows: list[tuple[str, Any, str]] = []

    def walk(value: Any, prefix: str) -> None:
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                walk(item, f"{prefix}{field.name}.")
                continue
            name = prefix + field.name
            shown = str(item) if not isinstance(item, bool | int | float) else item
            rows.append((name, _mask(field.name, shown), sources.get(name, "default")))

    walk(config, "")
    return rows


@click.group()
def config() -> None:
    """Show the effective configuration and where each value came from."""


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Load the configuration (defaults < --config file < EXCHANGE_* environment) and print each
    setting, its value and where it came from; exit 1 naming a bad setting."""
    from exchange import config as config_module
    from exchange.cli.main import fail

    try:
        loaded, sources = config_module.load_explained(
            _root_obj(ctx).get("config_file"), os.environ, {}
        )
    except config_module.ConfigError as exc:
        fail(str(exc))
    rows = effective(loaded, sources)
    if as_json:
        click.echo(
            json.dumps(
                {name: {"value": value, "source": source} for name, value, source in rows},
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:{width}}  {value!s:40}  ({source})")
