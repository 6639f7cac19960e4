"""Supervision alerts delivered to people: a webhook (JSON over HTTP POST) and syslog.

Alerts are stored by supervision (``supervision_alerts``) before anything is delivered; this
module is an outbox over that table. Each sink has a row per alert in ``alert_deliveries``:

- a new alert gets a ``pending`` row (the primary key (sink, alert id) makes that once, whichever
  hub process sees it first);
- a process takes a due row by moving its ``next_attempt_us`` forward by a lease, compare-and-set
  on the old value, so two hubs on one database never send the same alert at once;
- a delivery that succeeds marks the row ``delivered``: it is never sent again, also after a
  restart; one that fails is retried with exponential backoff (up to ``MAX_BACKOFF_SECONDS``),
  and counted in ``exchange_alert_deliveries_total``.

A process that dies between sending and marking sends that alert again once its lease ends: the
webhook carries the alert id as ``Idempotency-Key`` (and in the body) so a receiver can drop
the repeat. Exactly-once over a network needs the receiver's help; everything else is once.

Nothing delivered holds personal data: an alert names a rule, a department, a material type, a
ledger sequence and a message that may count subjects but never names them.
Alerts raised more than ``BACKFILL_SECONDS`` before a sink first sees them are not sent (a sink
configured today does not receive last year's alerts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    String,
    Table,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from exchange.clock import now_us
from exchange.config import ConfigError
from exchange.observability import metrics
from exchange.store.metadata import metadata
from exchange.store.write_lock import write_lock
from exchange.supervision.model import AlertLevel
from exchange.supervision.store import supervision_alerts

log = structlog.get_logger("exchange.alerts")

PENDING = "pending"
DELIVERED = "delivered"
BATCH = 100
LEASE_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
BACKFILL_SECONDS = 86_400
SEND_TIMEOUT_SECONDS = 5.0

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("sink", String(16), primary_key=True),
    Column("alert_id", String(200), primary_key=True),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger, nullable=True),
    Index("ix_alert_deliveries_due", "sink", "state", "next_attempt_us"),
)


@dataclass(frozen=True, slots=True)
class OutgoingAlert:
    """What a sink receives: the stored alert's facts (no personal data)."""

    id: str
    level: str
    category: str
    rule: str
    department: str
    material_type: str
    message: str
    sequence: int
    raised_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level,
            "category": self.category,
            "rule": self.rule,
            "department": self.department,
            "material_type": self.material_type,
            "message": self.message,
            "ledger_sequence": self.sequence,
            "raised_at": self.raised_at,
        }


class DeliveryError(Exception):
    """A sink did not take an alert; it will be retried."""


class Sink(Protocol):
    """Where alerts go. ``send`` blocks (it runs in a worker thread) and raises DeliveryError."""

    name: str

    def send(self, alert: OutgoingAlert) -> None: ...


class WebhookSink:
    """POSTs each alert as one JSON object; any 2xx answer is a delivery."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"alert_webhook_url {url!r} must start with http:// or https://")
        self.url = url
        self.timeout = timeout

    def send(self, alert: OutgoingAlert) -> None:
        body = json.dumps(alert.as_dict(), ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Idempotency-Key": alert.id,
                "User-Agent": "gov-exchange-alerts",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                if not 200 <= answer.status < 300:
                    raise DeliveryError(f"webhook answered {answer.status}")
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"webhook not reached: {type(exc).__name__}") from None


# RFC 5424 severities: a RED alert is an error, a YELLOW one a warning; facility local0.
SYSLOG_FACILITY = 16
SYSLOG_SEVERITY = {AlertLevel.RED.name: 3, AlertLevel.YELLOW.name: 4}


class SyslogSink:
    """Sends each alert as one RFC 5424 message: ``local`` is the host's /dev/log socket,
    ``host:port`` a syslog server over UDP."""

    name = "syslog"

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "local":
            self.family, self.address = socket.AF_UNIX, "/dev/log"
        else:
            host, sep, port = target.rpartition(":")
            if not sep or not port.isdigit():
                raise ConfigError(f"alert_syslog {target!r} must be 'local' or host:port")
            self.family, self.address = socket.AF_INET, (host.strip("[]"), int(port))  # type: ignore[assignment]
            if ":" in host:
                self.family = socket.AF_INET6

    def message(self, alert: OutgoingAlert) -> bytes:
        """The RFC 5424 line: structured data carries the facts, the message the text."""
        priority = SYSLOG_FACILITY * 8 + SYSLOG_SEVERITY.get(alert.level, 4)

        def param(value: object) -> str:
            return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

        data = (
            f'[alert@32473 id="{param(alert.id)}" level="{alert.level}" '
            f'category="{alert.category}" rule="{param(alert.rule)}" '
            f'department="{param(alert.department)}" '
            f'material_type="{param(alert.material_type)}" sequence="{alert.sequence}"]'
        )
        header = f"<{priority}>1 {alert.raised_at} {socket.gethostname()} exchange - alert"
        return f"{header} {data} {alert.message}".encode()

    def send(self, alert: OutgoingAlert) -> None:
        try:
            with socket.socket(self.family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.sendto(self.message(alert), self.address)
        except OSError as exc:
            raise DeliveryError(f"syslog not reached: {type(exc).__name__}") from None


def backoff_seconds(attempts: int) -> float:
    """Wait before attempt ``attempts + 1``: 1, 2, 4 … seconds, at most MAX_BACKOFF_SECONDS."""
    return float(min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** max(0, attempts - 1)))


class AlertOutbox:
    """The delivery state of one sink on one database. Every method blocks."""

    def __init__(self, engine: Engine, sink: str) -> None:
        self.engine = engine
        self.sink = sink
        self._write_lock = write_lock(engine)

    def enqueue_new(self, now: int) -> int:
        """Give every alert raised in the backfill window a pending row for this sink, once.
        Returns how many were added."""
        a, d = supervision_alerts.c, alert_deliveries.c
        missing = (
            select(a.id)
            .outerjoin(alert_deliveries, and_(d.alert_id == a.id, d.sink == self.sink))
            .where(d.alert_id.is_(None), a.raised_us >= now - BACKFILL_SECONDS * 1_000_000)
            .order_by(a.raised_us, a.id)
            .limit(BATCH)
        )
        added = 0
        with self._write_lock, self.engine.connect() as conn:
            for (alert_id,) in conn.execute(missing).all():
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(alert_deliveries).values(
                                sink=self.sink,
                                alert_id=alert_id,
                                state=PENDING,
                                attempts=0,
                                next_attempt_us=now,
                            )
                        )
                    added += 1
                except IntegrityError:  # another hub process enqueued it first
                    continue
            conn.commit()
        return added

    def take_due(self, now: int) -> list[tuple[OutgoingAlert, int]]:
        """Lease the pending alerts due at ``now`` (oldest first) to this process; return each
        with its attempts so far. A row another process leased meanwhile is skipped."""
        a, d = supervision_alerts.c, alert_deliveries.c
        due = (
            select(supervision_alerts, d.attempts, d.next_attempt_us)
            .join(alert_deliveries, d.alert_id == a.id)
            .where(d.sink == self.sink, d.state == PENDING, d.next_attempt_us <= now)
            .order_by(a.raised_us, a.id)
            .limit(BATCH)
        )
        taken: list[tuple[OutgoingAlert, int]] = []
        with self._write_lock, self.engine.connect() as conn:
            for row in conn.execute(due).all():
                leased = conn.execute(
                    update(alert_deliveries)
                    .where(
                        d.sink == self.sink,
                        d.alert_id == row.id,
                        d.state == PENDING,
                        d.next_attempt_us == row.next_attempt_us,
                    )
                    .values(next_attempt_us=now + int(LEASE_SECONDS * 1_000_000))
                )
                if leased.rowcount == 1:
                    taken.append((_outgoing(row), int(row.attempts)))
            conn.commit()
        return taken

    def delivered(self, alert_id: str, now: int) -> None:
        """Mark an alert delivered to this sink: it is never sent again."""
        d = alert_deliveries.c
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(
                update(alert_deliveries)
                .where(d.sink == self.sink, d.alert_id == alert_id)
                .values(state=DELIVERED, delivered_us=now)
            )

    def failed(self, alert_id: str, attempts: int, now: int) -> None:
        """Count a failed attempt and schedule the next one."""
        d = alert_deliveries.c
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(
                update(alert_deliveries)
                .where(d.sink == self.sink, d.alert_id == alert_id, d.state == PENDING)
                .values(
                    attempts=attempts,
                    next_attempt_us=now + int(backoff_seconds(attempts) * 1_000_000),
                )
            )


def _outgoing(row: Any) -> OutgoingAlert:
    raised = datetime.fromtimestamp(int(row.raised_us) / 1e6, tz=UTC)
    return OutgoingAlert(
        id=row.id,
        level=AlertLevel(int(row.level)).name,
        category=str(row.category).upper(),
        rule=row.rule,
        department=row.department,
        material_type=row.material_type,
        message=row.message,
        sequence=int(row.sequence),
        raised_at=raised.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


class AlertDelivery:
    """Delivers every stored alert to each configured sink, polling every ``interval``."""

    def __init__(self, engine: Engine, sinks: list[Sink], interval: float = 1.0) -> None:
        self.outboxes = [(sink, AlertOutbox(engine, sink.name)) for sink in sinks]
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_once()
            except SQLAlchemyError as exc:  # database down: try again next round
                log.warning("alert_delivery_paused", error=type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def deliver_once(self) -> int:
        """One round: enqueue new alerts, send what is due to every sink. Returns deliveries."""
        sent = 0
        for sink, outbox in self.outboxes:
            await asyncio.to_thread(outbox.enqueue_new, now_us())
            for alert, attempts in await asyncio.to_thread(outbox.take_due, now_us()):
                try:
                    await asyncio.to_thread(sink.send, alert)
                except DeliveryError as exc:
                    metrics.ALERT_DELIVERIES.labels(sink.name, "retried").inc()
                    log.warning(
                        "alert_delivery_failed",
                        sink=sink.name,
                        alert_id=alert.id,
                        attempts=attempts + 1,
                        error=str(exc),
                    )
                    await asyncio.to_thread(outbox.failed, alert.id, attempts + 1, now_us())
                    continue
                await asyncio.to_thread(outbox.delivered, alert.id, now_us())
                metrics.ALERT_DELIVERIES.labels(sink.name, "delivered").inc()
                sent += 1
        return sent


def sinks_from(webhook_url: str, syslog: str) -> list[Sink]:
    """The sinks a configuration names. Raises ConfigError for a malformed target."""
    sinks: list[Sink] = []
    if webhook_url:
        sinks.append(WebhookSink(webhook_url))
    if syslog:
        sinks.append(SyslogSink(syslog))
    return sinks
