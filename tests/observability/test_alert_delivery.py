"""Alerts delivered to a real webhook (an HTTP server in this process) and to syslog over UDP:
each alert accepted exactly once, also across a restart of the hub, retried after a failure,
and free of personal data. The ``alert_raised`` log level follows the alert's level."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from adapters.client import Refused
from exchange.api.server import HubServer
from exchange.config import ConfigError, SupervisionConfig
from exchange.crypto.keystore import Keystore
from exchange.observability.alerts import SyslogSink, backoff_seconds
from tests.conftest import RunningHub, StartHub, hub_config
from tests.observability.test_metrics import samples

SUBJECT = "990101199001010019"
CONSUMER = "js.nj.social-security"


@dataclass
class Receiver:
    """A webhook: refuses the first ``failures`` posts with 503, accepts the rest."""

    failures: int = 0
    attempts: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.attempts.append(body["id"])
                if state.failures > 0:
                    state.failures -= 1
                    self.send_response(503)
                else:
                    state.accepted.append(body)
                    state.keys.append(self.headers["Idempotency-Key"])
                    self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


SUPERVISION = SupervisionConfig(refusals_per_window=1)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


async def refuse_twice(hub: RunningHub) -> None:
    """Two refused checks by one consumer: a YELLOW, then a RED repeated-refusals alert."""
    client = await hub.register(CONSUMER)
    for _ in range(2):
        with pytest.raises(Refused):
            await client.check("no-such-type", SUBJECT)
    assert await hub.server.hub.supervision.settle(10.0)


async def delivered(receiver: Receiver, count: int, hub: HubServer) -> None:
    """Run delivery rounds (beside the hub's own loop) until ``count`` alerts were accepted."""
    for _ in range(200):
        await hub.observability.alerts.deliver_once()
        if len(receiver.accepted) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {len(receiver.accepted)} of {count} alerts arrived")


async def test_webhook_receives_each_alert_once_across_a_restart(
    receiver: tuple[Receiver, str], keystore: Keystore, tmp_path: Path, start_hub: StartHub
) -> None:
    state, url = receiver
    url_db = f"sqlite:///{tmp_path / 'exchange.db'}"
    config = hub_config(keystore, url_db, alert_webhook_url=url, supervision=SUPERVISION)
    first = HubServer(config)
    await first.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await refuse_twice(RunningHub(first, keystore, config))
        await delivered(state, 2, first)
    finally:
        await first.stop(grace=1.0)
    levels = {(e["alert_level"], e["log_level"]) for e in logs if e["event"] == "alert_raised"}
    assert levels == {("YELLOW", "warning"), ("RED", "error")}

    second = await start_hub(url_db, alert_webhook_url=url, supervision=SUPERVISION)
    for _ in range(5):  # nothing left to send: the restart sends nothing again
        assert await second.server.observability.alerts.deliver_once() == 0
    ids = [a["id"] for a in state.accepted]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert state.keys == ids  # the idempotency key is the alert id
    assert {a["level"] for a in state.accepted} == {"YELLOW", "RED"}
    assert all(a["category"] == "PROCESS" and a["department"] == CONSUMER for a in state.accepted)
    assert SUBJECT not in json.dumps(state.accepted)


async def test_a_failed_delivery_is_retried_and_accepted_once(
    receiver: tuple[Receiver, str], start_hub: StartHub
) -> None:
    state, url = receiver
    state.failures = 1
    hub = await start_hub(alert_webhook_url=url, supervision=SUPERVISION)
    await refuse_twice(hub)
    await delivered(state, 2, hub.server)
    assert len(state.attempts) == 3  # one refused attempt, then each alert once
    assert sorted(a["id"] for a in state.accepted) == sorted(set(state.attempts))


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff_seconds(n) for n in range(1, 15)]
    assert waits[:3] == [1.0, 2.0, 4.0]
    assert waits == sorted(waits) and max(waits) == 300.0


async def test_syslog_receives_rfc5424_messages_with_the_alert_severity(
    start_hub: StartHub,
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    try:
        hub = await start_hub(alert_syslog=f"127.0.0.1:{port}", supervision=SUPERVISION)
        await refuse_twice(hub)
        messages = []
        while len(messages) < 2:
            await hub.server.observability.alerts.deliver_once()
            data = await asyncio.to_thread(listener.recv, 65536)
            messages.append(data.decode())
    finally:
        listener.close()
    # local0 (16): warning (4) for YELLOW is <132>, error (3) for RED is <131>
    assert sorted(m[:5] for m in messages) == ["<131>", "<132>"]
    assert all('category="PROCESS"' in m and SUBJECT not in m for m in messages)


def test_syslog_target_must_be_local_or_host_port() -> None:
    with pytest.raises(ConfigError):
        SyslogSink("nonsense")
    assert SyslogSink("127.0.0.1:514").address == ("127.0.0.1", 514)


async def test_alerts_and_deliveries_are_counted_in_the_metrics(
    receiver: tuple[Receiver, str], start_hub: StartHub
) -> None:
    state, url = receiver
    state.failures = 1
    hub = await start_hub(
        alert_webhook_url=url, supervision=SUPERVISION, metrics_listen="127.0.0.1:0"
    )
    scrape = f"http://127.0.0.1:{hub.server.observability.monitor.port}/metrics"
    before = samples(await asyncio.to_thread(fetch, scrape))
    await refuse_twice(hub)
    await delivered(state, 2, hub.server)
    text = await asyncio.to_thread(fetch, scrape)
    after = samples(text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("exchange_alerts_total", level="YELLOW", category="PROCESS") == 1
    assert grew("exchange_alerts_total", level="RED", category="PROCESS") == 1
    assert grew("exchange_alert_deliveries_total", sink="webhook", outcome="retried") == 1
    assert grew("exchange_alert_deliveries_total", sink="webhook", outcome="delivered") == 2
    assert after["exchange_supervision_lag_entries", ()] == 0  # settled
    assert SUBJECT not in text and CONSUMER not in text  # levels and categories only
