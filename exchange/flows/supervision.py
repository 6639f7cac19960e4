"""The Supervision calls: ListAlerts and BurdenReport, for auditors and the hub operator.

Each answers what the engine has processed once it has caught up with the log this process
knows of (``Supervisor.settle``), and records one READ entry.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from exchange import errors
from exchange.clock import to_timestamp
from exchange.errors import EntryFacts
from exchange.flows.record import record, with_receipt
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.policy.roles import require_auditor
from exchange.supervision.burden import BurdenReport, FormToolRecord, build_report
from exchange.supervision.model import Alert, AlertCategory, AlertLevel
from exchange.supervision.rules import DAY_US
from exchange.v1 import common_pb2, ledger_pb2, supervision_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SETTLE_SECONDS = 2.0
# An idle window beyond a century says nothing more, and its start must stay an int64 time.
MAX_IDLE_DAYS = 36_525


def alert_to_proto(alert: Alert) -> supervision_pb2.Alert:
    """The contract form of a stored alert."""
    return supervision_pb2.Alert(
        id=alert.id,
        level=int(alert.level),  # type: ignore[arg-type]
        category=supervision_pb2.AlertCategory.Value(alert.category.value),
        rule=alert.rule,
        department=alert.department,
        material_type=alert.material_type,
        message=alert.message,
        sequence=alert.sequence,
        raised_at=to_timestamp(alert.raised_us),
    )


def report_to_proto(report: BurdenReport) -> supervision_pb2.BurdenReportResponse:
    """The contract form of a burden report (without its receipt)."""
    answer = supervision_pb2.BurdenReportResponse(
        idle_form_tools=list(report.idle_form_tools),
        idle_days=report.idle_days,
        as_of=to_timestamp(report.as_of_us),
    )
    for row in report.rows:
        message = answer.rows.add(
            department=row.department,
            material_type=row.material_type,
            stored=row.stored,
            avoided=row.avoided,
            served=row.served,
            refused=row.refused,
            failed=row.failed,
            prefills=row.prefills,
            zombie=row.zombie,
            listed=row.listed,
        )
        if row.last_use_us is not None:
            message.last_use.CopyFrom(to_timestamp(row.last_use_us))
    for tool in report.form_tools:
        use = answer.form_tools.add(
            department=tool.department, state=tool.state, uses=tool.uses, idle=tool.idle
        )
        if tool.last_use_us is not None:
            use.last_use.CopyFrom(to_timestamp(tool.last_use_us))
    for overlap in report.overlaps:
        answer.form_overlaps.add(
            form_a=overlap.form_a,
            form_b=overlap.form_b,
            shared_fields=list(overlap.shared_fields),
            overlap=overlap.overlap,
        )
    return answer


async def list_alerts(
    hub: Hub, caller: Caller, body: supervision_pb2.ListAlertsRequest
) -> supervision_pb2.ListAlertsResponse:
    """Alerts, newest first, filtered by minimum level and category. Auditors and the operator.

    Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument for an unknown level or category.
    """
    require_auditor(caller, "supervision")
    try:
        min_level = AlertLevel(body.min_level) if body.min_level else None
        category = (
            AlertCategory(supervision_pb2.AlertCategory.Name(body.category))
            if body.category
            else None
        )
    except ValueError as exc:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, "min_level or category is not a known value"
        ) from exc
    limit = min(body.limit or DEFAULT_LIMIT, MAX_LIMIT)
    await hub.supervision.settle(SETTLE_SECONDS)
    alerts = await asyncio.to_thread(hub.supervision.store.alerts, min_level, category, limit)
    response = supervision_pb2.ListAlertsResponse(alerts=[alert_to_proto(a) for a in alerts])
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "alerts", "count": str(len(alerts))}),
        answer=with_receipt(response),
    )
    return with_receipt(response)(receipt)


def compute_report(hub: Hub, idle_days: int, now_us: int) -> BurdenReport:
    """The burden report from the stored counters, the catalog, the forms and the registry's
    form tools. Blocks (database reads): call it in a thread."""
    since_day = (now_us - idle_days * DAY_US) // DAY_US
    tools = [
        FormToolRecord(d.id, d.state, d.registered_us)
        for d in hub.registry.all()
        if Role.FORM_TOOL in d.roles
    ]
    return build_report(
        hub.supervision.store.counters(),
        hub.catalog.material_types(),
        hub.catalog.forms(),
        tools,
        hub.supervision.store.usage(since_day),
        now_us=now_us,
        idle_days=idle_days,
        config=hub.config.supervision,
    )


async def burden_report(
    hub: Hub, caller: Caller, body: supervision_pb2.BurdenReportRequest
) -> supervision_pb2.BurdenReportResponse:
    """The burden report (一本账) with an idle window of ``idle_days`` (default from the
    configuration). Auditors and the operator.

    Raises PermissionDenied (ROLE_REQUIRED), InvalidArgument (idle_days beyond 100 years).
    """
    require_auditor(caller, "supervision")
    idle_days = body.idle_days or hub.config.supervision.idle_days
    if idle_days > MAX_IDLE_DAYS:
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD, f"idle_days must be at most {MAX_IDLE_DAYS}"
        )
    await hub.supervision.settle(SETTLE_SECONDS)
    report = await asyncio.to_thread(compute_report, hub, idle_days, hub.supervision.clock())
    answer = report_to_proto(report)
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "burden", "idle_days": str(idle_days)}),
        answer=with_receipt(answer),
    )
    return with_receipt(answer)(receipt)
