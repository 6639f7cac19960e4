"""What a hub process starts for its operators besides the gRPC server: the monitors' listener
(metrics, liveness, readiness) and the delivery of alerts to people. One ``start`` and one
``stop``, called by exchange.api.server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from exchange.config import Config
    from exchange.hub import Hub

READY_CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True)
class Observability:
    """The running pieces (each None when not configured)."""

    monitor: Any = None
    alerts: Any = None
    parts: list[Any] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop every piece, the monitors' listener last (a probe sees the shutdown)."""
        for part in reversed(self.parts):
            await part.stop()
        self.parts.clear()


def _database_answers(hub: Hub) -> bool:
    with hub.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return True


async def start(config: Config, hub: Hub, serving: Callable[[], bool]) -> Observability:
    """Start what ``config`` asks for. ``serving`` tells whether the gRPC server serves calls
    (false while starting and once shutdown began). Raises OSError if an address is taken."""
    running = Observability()
    if config.metrics_listen:
        from exchange.observability import metrics
        from exchange.observability.http import MonitorServer

        async def ready() -> bool:
            if not serving():
                return False
            return await asyncio.wait_for(
                asyncio.to_thread(_database_answers, hub), READY_CHECK_TIMEOUT_SECONDS
            )

        running.monitor = MonitorServer(config.metrics_listen, metrics.registry_for(hub), ready)
        await running.monitor.start()
        running.parts.append(running.monitor)
    if config.alert_webhook_url or config.alert_syslog:
        from exchange.observability.alerts import AlertDelivery, sinks_from

        running.alerts = AlertDelivery(
            hub.engine, sinks_from(config.alert_webhook_url, config.alert_syslog)
        )
        await running.alerts.start()
        running.parts.append(running.alerts)
    return running
