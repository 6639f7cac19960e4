"""The Supervision service on a real hub: auditors only; alerts and the burden report."""

from __future__ import annotations

import grpc
import pytest

from adapters.client import HubClient, Refused
from exchange.config import SupervisionConfig
from exchange.v1 import catalog_pb2, common_pb2, exchange_pb2, supervision_pb2
from tests.conftest import RunningHub, StartHub

from .support import DAY

LIST_ALERTS = "/exchange.v1.Supervision/ListAlerts"
BURDEN = "/exchange.v1.Supervision/BurdenReport"
CIVIL = "js.nj.civil-affairs"
TOOL = "js.nj.township-form"


async def list_alerts(client: HubClient, **fields: object) -> supervision_pb2.ListAlertsResponse:
    return await client.call(
        LIST_ALERTS,
        supervision_pb2.ListAlertsRequest(**fields),  # type: ignore[arg-type]
        supervision_pb2.ListAlertsResponse,
    )


async def burden(client: HubClient, idle_days: int = 0) -> supervision_pb2.BurdenReportResponse:
    return await client.call(
        BURDEN,
        supervision_pb2.BurdenReportRequest(idle_days=idle_days),
        supervision_pb2.BurdenReportResponse,
    )


async def refused_requests(consumer: HubClient, count: int) -> None:
    for _ in range(count):
        with pytest.raises(Refused):
            await consumer.call(
                "/exchange.v1.Exchange/Request",
                exchange_pb2.MaterialRequest(
                    material_type="no-such-type", subject_id="320102199001011232", purpose="x"
                ),
                exchange_pb2.MaterialResponse,
            )


@pytest.mark.parametrize("method", [LIST_ALERTS, BURDEN])
async def test_supervision_is_refused_without_the_auditor_role(
    hub: RunningHub, method: str
) -> None:
    consumer = await hub.register("js.nj.social-security", (common_pb2.CONSUMER,))
    body = (
        supervision_pb2.ListAlertsRequest()
        if method == LIST_ALERTS
        else supervision_pb2.BurdenReportRequest()
    )
    with pytest.raises(Refused) as caught:
        await consumer.call(method, body, supervision_pb2.ListAlertsResponse)
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "ROLE_REQUIRED"
    assert caught.value.ledger_sequence is not None  # the refusal is on the record


async def test_auditor_lists_alerts_raised_by_the_live_entry_stream(start_hub: StartHub) -> None:
    hub = await start_hub(supervision=SupervisionConfig(refusals_per_window=3))
    consumer = await hub.register("js.nj.social-security", (common_pb2.CONSUMER,))
    auditor = await hub.register("js.nj.audit-bureau", (common_pb2.AUDITOR,))
    await refused_requests(consumer, 2)
    assert (await list_alerts(auditor)).alerts == []  # near miss: two refusals
    await refused_requests(consumer, 1)
    answer = await list_alerts(auditor)
    [alert] = answer.alerts
    assert (alert.rule, alert.department) == ("repeated-refusals", "js.nj.social-security")
    assert alert.level == supervision_pb2.YELLOW and alert.category == supervision_pb2.PROCESS
    assert answer.receipt.leaf_hash  # the read itself is on the record
    assert (await list_alerts(auditor, min_level=supervision_pb2.RED)).alerts == []
    assert (await list_alerts(auditor, category=supervision_pb2.RISK)).alerts == []
    assert [a.id for a in (await list_alerts(hub.operator)).alerts] == [alert.id]


async def test_burden_report_counts_catalog_entries_form_tools_and_overlaps(
    hub: RunningHub,
) -> None:
    civil = await hub.register(CIVIL, (common_pb2.PROVIDER,), endpoint="127.0.0.1:9")
    tool = await hub.register(TOOL, (common_pb2.FORM_TOOL,))
    auditor = await hub.register("js.nj.audit-bureau", (common_pb2.AUDITOR,))
    await hub.operator.define_purpose(
        purpose=catalog_pb2.Purpose(id="benefit", name="Benefit", legal_basis="Art. 1")
    )
    await civil.publish_material_type(
        material_type=catalog_pb2.MaterialType(
            id="marriage-record",
            name="Marriage record",
            sharing_class=catalog_pb2.CONDITIONAL,
            fields=[
                catalog_pb2.FieldSpec(name=n, type=catalog_pb2.STRING)
                for n in ("spouse", "date", "office")
            ],
        )
    )
    for form_id, extra in (("marriage-benefit", "phone"), ("housing-subsidy", "income")):
        await tool.register_form(
            form=catalog_pb2.Form(
                id=form_id,
                name=form_id,
                purpose="benefit",
                fields=[
                    catalog_pb2.FormField(name=n, material_type="marriage-record", material_field=n)
                    for n in ("spouse", "date")
                ]
                + [catalog_pb2.FormField(name=extra)],
            )
        )

    answer = await burden(auditor, idle_days=30)
    [row] = answer.rows
    assert (row.department, row.material_type, row.listed, row.zombie) == (
        CIVIL,
        "marriage-record",
        True,
        False,  # listed just now
    )
    assert answer.idle_days == 30 and answer.receipt.leaf_hash
    assert [(t.department, t.idle) for t in answer.form_tools] == [(TOOL, False)]  # too new
    [overlap] = answer.form_overlaps
    assert (overlap.form_a, overlap.form_b, overlap.overlap) == (
        "housing-subsidy",
        "marriage-benefit",
        1.0,
    )
    assert list(overlap.shared_fields) == ["marriage-record.date", "marriage-record.spouse"]

    # Forty days on, nothing used: the catalog entry and the form tool are zombie candidates.
    supervisor = hub.server.hub.supervision
    real_clock = supervisor.clock
    supervisor.clock = lambda: real_clock() + 40 * DAY
    later = await burden(hub.operator, idle_days=30)
    assert [r.zombie for r in later.rows] == [True]
    assert list(later.idle_form_tools) == [TOOL]
