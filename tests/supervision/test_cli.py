"""``exchange supervise alerts`` and ``exchange report burden`` against a running hub."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re

import pytest
from click.testing import CliRunner, Result

from adapters.client import Refused
from exchange.cli.main import main
from exchange.config import SupervisionConfig
from exchange.v1 import catalog_pb2, common_pb2, exchange_pb2
from tests.conftest import RunningHub, StartHub

CIVIL = "js.nj.civil-affairs"
# The hub runs in this process, so its log lines land in the captured output too.
HUB_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def output(result: Result) -> str:
    """What the command printed, without the in-process hub's log lines."""
    return "".join(
        line for line in result.output.splitlines(keepends=True) if not HUB_LOG_LINE.match(line)
    )


async def invoke(hub: RunningHub, *args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop) as the hub's operator."""
    argv = [*args, "--listen", hub.target, "--keys-dir", str(hub.keystore.root)]
    return await asyncio.to_thread(CliRunner().invoke, main, argv, env={}, catch_exceptions=False)


async def with_activity(start_hub: StartHub) -> RunningHub:
    """A hub with a published material type and one repeated-refusals alert."""
    # Office hours all day, every day: the off-hours rule must not add an alert of its own when
    # the suite runs at night in the hub's time zone.
    hub = await start_hub(
        supervision=SupervisionConfig(
            refusals_per_window=2, office_hours_start=0, office_hours_end=24, weekends_off=False
        )
    )
    civil = await hub.register(CIVIL, (common_pb2.PROVIDER,), endpoint="127.0.0.1:9")
    await civil.publish_material_type(
        material_type=catalog_pb2.MaterialType(
            id="marriage-record",
            name="Marriage record",
            sharing_class=catalog_pb2.CONDITIONAL,
            fields=[catalog_pb2.FieldSpec(name="spouse", type=catalog_pb2.STRING)],
        )
    )
    consumer = await hub.register("js.nj.social-security", (common_pb2.CONSUMER,))
    for _ in range(2):
        with pytest.raises(Refused):
            await consumer.call(
                "/exchange.v1.Exchange/Request",
                exchange_pb2.MaterialRequest(
                    material_type="marriage-record", subject_id="320102199001011232", purpose="x"
                ),
                exchange_pb2.MaterialResponse,
            )
    return hub


async def test_supervise_alerts_prints_a_table_and_json(start_hub: StartHub) -> None:
    hub = await with_activity(start_hub)
    table = await invoke(hub, "supervise", "alerts")
    assert table.exit_code == 0, table.output
    assert "repeated-refusals" in table.output and "YELLOW" in table.output
    as_json = await invoke(hub, "supervise", "alerts", "--format", "json")
    [alert] = json.loads(output(as_json))
    assert (alert["rule"], alert["level"], alert["category"]) == (
        "repeated-refusals",
        "YELLOW",
        "PROCESS",
    )
    none = await invoke(hub, "supervise", "alerts", "--min-level", "red", "--format", "json")
    assert json.loads(output(none)) == []


async def test_report_burden_prints_table_json_and_csv(start_hub: StartHub) -> None:
    hub = await with_activity(start_hub)
    table = await invoke(hub, "report", "burden")
    assert table.exit_code == 0, table.output
    assert "marriage-record" in table.output and CIVIL in table.output

    as_json = json.loads(output(await invoke(hub, "report", "burden", "--format", "json")))
    [row] = as_json["rows"]
    assert (row["department"], row["refused"], row["zombie"]) == (CIVIL, 2, False)
    assert as_json["idle_days"] == 90  # the configured default

    as_csv = output(await invoke(hub, "report", "burden", "--format", "csv", "--idle-days", "7"))
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [(r["department"], r["material_type"], r["refused"], r["zombie"]) for r in rows] == [
        (CIVIL, "marriage-record", "2", "no")
    ]
    assert rows[0]["failed"] == "0"  # a zero is written, not an empty cell


async def test_cli_reports_a_refusal_without_a_running_hub(start_hub: StartHub) -> None:
    hub = await start_hub()
    await hub.server.stop(grace=0)
    result = await invoke(hub, "report", "burden")
    assert result.exit_code == 1
