"""``exchange supervise alerts`` and ``exchange report burden``: supervision, as the operator.

Both call the hub's Supervision service with the operator's key and certificate (the hub
operator may read alerts and the burden report like an auditor department).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.table import Table

from exchange.cli.hub_commands import operator_call, with_hub_options
from exchange.cli.main import load_config
from exchange.config import Config
from exchange.v1 import supervision_pb2

SUPERVISION = "/exchange.v1.Supervision"

BURDEN_COLUMNS = (
    "department",
    "material_type",
    "stored",
    "avoided",
    "served",
    "refused",
    "failed",
    "prefills",
    "last_use",
    "zombie",
)


def _time(ts: timestamp_pb2.Timestamp, present: bool = True) -> str:
    if not present:
        return ""
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).isoformat(timespec="seconds")


def _call(config: Config, method: str, body: Any, response: Any) -> Any:
    return operator_call(config, f"{SUPERVISION}/{method}", body, response)


# ------------------------------------------------------------------------------ rendering


def alerts_as_dicts(answer: supervision_pb2.ListAlertsResponse) -> list[dict[str, Any]]:
    """The alerts as plain dictionaries (the JSON output)."""
    return [
        {
            "id": a.id,
            "raised_at": _time(a.raised_at),
            "level": supervision_pb2.AlertLevel.Name(a.level),
            "category": supervision_pb2.AlertCategory.Name(a.category),
            "rule": a.rule,
            "department": a.department,
            "material_type": a.material_type,
            "message": a.message,
            "sequence": a.sequence,
        }
        for a in answer.alerts
    ]


def render_alerts(answer: supervision_pb2.ListAlertsResponse, console: Console) -> None:
    """Print the alerts as a table."""
    table = Table(title=f"Alerts ({len(answer.alerts)})")
    for column in ("raised (UTC)", "level", "category", "rule", "department", "type", "entry"):
        table.add_column(column)
    table.add_column("message", overflow="fold")
    for a in alerts_as_dicts(answer):
        style = "red" if a["level"] == "RED" else "yellow"
        table.add_row(
            a["raised_at"],
            f"[{style}]{a['level']}[/{style}]",
            a["category"],
            a["rule"],
            a["department"],
            a["material_type"],
            f"#{a['sequence']}",
            a["message"],
        )
    console.print(table)


def burden_as_dict(answer: supervision_pb2.BurdenReportResponse) -> dict[str, Any]:
    """The burden report as a plain dictionary (the JSON output)."""
    return {
        "as_of": _time(answer.as_of),
        "idle_days": answer.idle_days,
        "rows": [
            {
                "department": r.department,
                "material_type": r.material_type,
                "stored": r.stored,
                "avoided": r.avoided,
                "served": r.served,
                "refused": r.refused,
                "failed": r.failed,
                "prefills": r.prefills,
                "last_use": _time(r.last_use, r.HasField("last_use")) or None,
                "zombie": r.zombie,
                "listed": r.listed,
            }
            for r in answer.rows
        ],
        "form_tools": [
            {
                "department": t.department,
                "state": t.state,
                "uses": t.uses,
                "last_use": _time(t.last_use, t.HasField("last_use")) or None,
                "idle": t.idle,
            }
            for t in answer.form_tools
        ],
        "idle_form_tools": list(answer.idle_form_tools),
        "form_overlaps": [
            {
                "form_a": o.form_a,
                "form_b": o.form_b,
                "overlap": o.overlap,
                "shared_fields": list(o.shared_fields),
            }
            for o in answer.form_overlaps
        ],
    }


def burden_csv(answer: supervision_pb2.BurdenReportResponse) -> str:
    """The report's rows (one per material type) as CSV with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BURDEN_COLUMNS)
    for row in burden_as_dict(answer)["rows"]:
        writer.writerow(
            [
                # A zero is a count like any other: only a missing value is an empty cell.
                "yes"
                if row[c] is True
                else "no"
                if row[c] is False
                else ("" if row[c] is None else row[c])
                for c in BURDEN_COLUMNS
            ]
        )
    return out.getvalue()


def render_burden(answer: supervision_pb2.BurdenReportResponse, console: Console) -> None:
    """Print the burden report as tables: rows, form tools, overlapping forms."""
    report = burden_as_dict(answer)
    table = Table(title=f"Burden report (一本账) as of {report['as_of']}")
    for column in BURDEN_COLUMNS:
        table.add_column(column.replace("_", " "))
    for row in report["rows"]:
        table.add_row(
            *[
                ("[red]zombie[/red]" if row[c] else "")
                if c == "zombie"
                else str(row[c] if row[c] is not None else "-")
                for c in BURDEN_COLUMNS
            ]
        )
    console.print(table)
    if report["form_tools"]:
        tools = Table(title=f"Form tools (uses in the last {report['idle_days']} days)")
        for column in ("department", "state", "uses", "last use", "idle"):
            tools.add_column(column)
        for t in report["form_tools"]:
            tools.add_row(
                t["department"],
                t["state"],
                str(t["uses"]),
                t["last_use"] or "-",
                "[red]little used[/red]" if t["idle"] else "",
            )
        console.print(tools)
    if report["form_overlaps"]:
        overlaps = Table(title="Forms asking for largely the same fields (consolidation)")
        for column in ("form a", "form b", "overlap", "shared fields"):
            overlaps.add_column(column)
        for o in report["form_overlaps"]:
            overlaps.add_row(
                o["form_a"], o["form_b"], f"{o['overlap']:.0%}", ", ".join(o["shared_fields"])
            )
        console.print(overlaps)


# ------------------------------------------------------------------------------ commands


@click.group()
def supervise() -> None:
    """Supervision (电子监察): alerts raised over the ledger (operator)."""


@supervise.command("alerts")
@click.option(
    "--min-level",
    type=click.Choice(["yellow", "red"]),
    default=None,
    help="Only alerts of this level or worse.",
)
@click.option(
    "--category",
    type=click.Choice(["timeliness", "process", "content", "discretion", "risk"]),
    default=None,
    help="Only alerts of this category.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many alerts.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    help="A table for people or JSON.",
)
@with_hub_options
@click.pass_context
def alerts(
    ctx: click.Context,
    min_level: str | None,
    category: str | None,
    limit: int,
    fmt: str,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """List alerts, newest first."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = supervision_pb2.ListAlertsRequest(limit=limit)
    if min_level:
        body.min_level = supervision_pb2.AlertLevel.Value(min_level.upper())
    if category:
        body.category = supervision_pb2.AlertCategory.Value(category.upper())
    answer = _call(config, "ListAlerts", body, supervision_pb2.ListAlertsResponse)
    if fmt == "json":
        click.echo(json.dumps(alerts_as_dicts(answer), ensure_ascii=False, indent=2))
    else:
        render_alerts(answer, Console(width=160))


@click.group()
def report() -> None:
    """Reports over the exchange (operator)."""


@report.command("burden")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    help="A table for people, JSON, or CSV (one row per material type).",
)
@click.option(
    "--idle-days",
    type=click.IntRange(1, 3650),
    default=None,
    help="Unused for this many days: a zombie candidate (default: the hub's configuration).",
)
@with_hub_options
@click.pass_context
def burden(
    ctx: click.Context,
    fmt: str,
    idle_days: int | None,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """The burden report (一本账): per department and material type, with zombie candidates."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = supervision_pb2.BurdenReportRequest(idle_days=idle_days or 0)
    answer = _call(config, "BurdenReport", body, supervision_pb2.BurdenReportResponse)
    if fmt == "json":
        click.echo(json.dumps(burden_as_dict(answer), ensure_ascii=False, indent=2))
    elif fmt == "csv":
        click.echo(burden_csv(answer), nl=False)
    else:
        render_burden(answer, Console(width=160))


COMMANDS = [supervise, report]
