"""The Supervision service's methods (alerts and the burden report), served by the Pipeline."""

from __future__ import annotations

from typing import Any

from exchange.api.pipeline import Method
from exchange.flows import supervision as service
from exchange.v1 import ledger_pb2, supervision_pb2

SUPERVISION = "exchange.v1.Supervision"

SUPERVISION_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{SUPERVISION}/ListAlerts",
        supervision_pb2.ListAlertsRequest,
        supervision_pb2.ListAlertsResponse,
        ledger_pb2.READ,
        service.list_alerts,
    ),
    Method(
        f"/{SUPERVISION}/BurdenReport",
        supervision_pb2.BurdenReportRequest,
        supervision_pb2.BurdenReportResponse,
        ledger_pb2.READ,
        service.burden_report,
    ),
)
