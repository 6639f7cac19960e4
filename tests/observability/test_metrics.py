"""Metrics and the monitors' endpoints, scraped over real HTTP from a real hub after real calls
(the flow tests' world: two provider adapters over SQLite and files)."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.client import Refused
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import Keystore
from exchange.ledger import verifier_key
from exchange.witness.cosignature import WitnessKey
from exchange.witness.server import Witness, WitnessServer
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CARL,
    HOUSEHOLD,
    MARRIAGE,
    POLICE,
    SOCIAL,
    World,
    running,
)
from tests.integration.test_change_and_entry import ledger_down

EXCHANGE = "/exchange.v1.Exchange"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def world(start_hub: StartHub, tmp_path: Path) -> AsyncIterator[World]:
    async with running(start_hub, tmp_path, metrics_listen="127.0.0.1:0") as built:
        yield built


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(world: World, path: str) -> tuple[int, str]:
    port = world.hub.server.observability.monitor.port
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_calls_holders_ledger_and_caches_without_personal_data(
    world: World,
) -> None:
    social = world.clients[SOCIAL]
    before = samples((await get(world, "/metrics"))[1])
    await social.request(HOUSEHOLD, ANNA, purpose=ASSISTANCE)
    with pytest.raises(Refused):
        await social.request(MARRIAGE, ANNA, purpose=ASSISTANCE)  # no grant
    await social.check(HOUSEHOLD, BEN)
    await social.check(MARRIAGE, CARL)
    status, text = await get(world, "/metrics")
    assert status == 200
    after = samples(text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    request, check = f"{EXCHANGE}/Request", f"{EXCHANGE}/Check"
    assert grew("exchange_calls_total", method=request, outcome="ok", reason="") == 1
    assert grew("exchange_calls_total", method=request, outcome="refused", reason="NO_GRANT") == 1
    assert grew("exchange_calls_total", method=check, outcome="ok", reason="") == 2
    assert grew("exchange_call_seconds_count", method=request) == 2
    holder = f"127.0.0.1:{world.adapters[POLICE].port}"
    assert grew("exchange_holder_calls_total", holder=holder, method="Fetch", outcome="ok") == 1
    assert grew("exchange_holder_call_seconds_count", holder=holder, method="Fetch") == 1
    assert after["exchange_ledger_entries", ()] >= world.hub.server.hub.ledger.size() - 1
    assert grew("exchange_ledger_batch_entries_count") >= 1
    assert grew("exchange_ledger_commit_seconds_count") >= 1
    assert grew("exchange_ledger_head_lock_wait_seconds_count") >= 1
    assert ("exchange_checkpoint_age_seconds", ()) in after
    assert ("exchange_supervision_lag_entries", ()) in after
    assert any(
        name == "exchange_cache_lookups" and dict(labels)["result"] == "hit" and value > 0
        for (name, labels), value in after.items()
    )
    for subject in (ANNA, BEN, CARL, "张三", "married"):
        assert subject not in text


async def test_a_ledger_that_cannot_commit_is_counted(world: World) -> None:
    before = samples((await get(world, "/metrics"))[1])
    with ledger_down(world), pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].check(HOUSEHOLD, BEN)
    assert caught.value.reason == "LEDGER_UNAVAILABLE"
    after = samples((await get(world, "/metrics"))[1])
    failures = "exchange_ledger_commit_failures_total", ()
    assert after[failures] - before.get(failures, 0.0) >= 1
    failed = (
        "exchange_calls_total",
        (("method", f"{EXCHANGE}/Check"), ("outcome", "failed"), ("reason", "LEDGER_UNAVAILABLE")),
    )
    assert after[failed] - before.get(failed, 0.0) == 1


async def test_health_endpoints_answer_without_a_client_certificate(world: World) -> None:
    assert await get(world, "/healthz") == (200, "ok\n")
    assert await get(world, "/readyz") == (200, "ready\n")
    assert (await get(world, "/anything-else"))[0] == 404
    assert (await get(world, "/"))[0] == 404
    # Shutdown turns readiness off first, before the server stops accepting calls.
    world.hub.server.serving = False
    assert await get(world, "/readyz") == (503, "not ready\n")
    assert await get(world, "/healthz") == (200, "ok\n")
    world.hub.server.serving = True


async def test_readiness_fails_while_the_database_does_not_answer(world: World) -> None:
    engine = world.hub.server.hub.engine
    original = engine.connect

    def broken() -> object:
        raise OSError("database down")

    engine.connect = broken  # type: ignore[method-assign]
    try:
        assert (await get(world, "/readyz"))[0] == 503
    finally:
        engine.connect = original  # type: ignore[method-assign]
    assert (await get(world, "/readyz"))[0] == 200


async def test_metrics_listener_is_off_by_default(start_hub: StartHub) -> None:
    hub = await start_hub()
    assert hub.server.observability.monitor is None


async def test_witness_cosigning_state_per_witness_by_name(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path
) -> None:
    # One witness cosigns (a real witness server on loopback), the other cannot be reached.
    origin = "exchange.local/hub"
    log_key = verifier_key(origin, keystore.hub_signing_key().public_bytes)
    key = SigningKey.generate()
    cosigning = WitnessServer(Witness(key, "witness.test/w1", [log_key], tmp_path / "w1.db"))
    cosigning.start()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    absent = WitnessKey.of("witness.test/down", SigningKey.generate().public_bytes)
    setting = (
        f"{cosigning.url} {WitnessKey.of('witness.test/w1', key.public_bytes)}, "
        f"http://127.0.0.1:{dead} {absent}"
    )
    try:
        hub = await start_hub(metrics_listen="127.0.0.1:0", witnesses=setting, origin=origin)
        client = await hub.register("js.nj.civil-affairs")
        answer = await client.list_departments()
        witnessing = hub.server.hub.witnessing
        for _ in range(200):
            if witnessing.clients[0].cosigned_size > answer.receipt.sequence:
                break
            await asyncio.sleep(0.05)
        port = hub.server.observability.monitor.port
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        cosigning.stop()
    assert status == 200
    found = samples(text)
    up, down = (("witness", "witness.test/w1"),), (("witness", "witness.test/down"),)
    assert found["exchange_witness_cosigned_size", up] > answer.receipt.sequence
    assert found["exchange_witness_cosigned_size", down] == 0
    assert found["exchange_witness_uncosigned_entries", down] >= answer.receipt.sequence
    assert found["exchange_witness_cosignature_age_seconds", up] >= 0
    assert ("exchange_witness_cosignature_age_seconds", down) not in found  # never cosigned
    assert found["exchange_witness_consecutive_failures", up] == 0
    assert found["exchange_witness_consecutive_failures", down] >= 1
    cosigned = (("outcome", "cosigned"), *up)
    unreachable = (("outcome", "unreachable"), *down)
    assert found["exchange_witness_submissions_total", cosigned] >= 1
    assert found["exchange_witness_submissions_total", unreachable] >= 1
    assert found["exchange_witness_submission_seconds_count", up] >= 1

    # Every metric this hub exports is in docs/operations.md's table, and nothing else is.
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # prometheus-client's start times
    }
    table = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").split("## Metrics")[1]
    documented = set(re.findall(r"^\| `(exchange_\w+)` \|", table, flags=re.MULTILINE))
    assert exported == documented
