"""Several hub processes on one PostgreSQL database.

The test process runs hub A (in process, with the provider adapters of ``tests.flows.world``);
hubs B and C are `exchange serve` processes on the same database and keys. Members call B and C
while revocations go through A.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from adapters.client import HubClient, Identity, Refused
from exchange.crypto.keys import keyid as keyid_of
from exchange.crypto.keystore import Keystore
from exchange.v1 import exchange_pb2
from exchange.v1.envelope_pb2 import Envelope
from tests.conftest import HUB_ID, StartHub
from tests.flows.world import ANNA, ASSISTANCE, CIVIL, MARRIAGE, SOCIAL, World, build
from tests.integration.revocation import (
    REQUEST,
    Kind,
    check,
    issue_grant,
    race,
    refused_at_commit,
    revoke,
    verify,
)
from tests.integration.test_hub_database import one_line_error
from tests.integration.test_hub_process import free_port, wait_serving

EXCHANGE = [sys.executable, "-m", "exchange.cli"]


def copy(body: exchange_pb2.MaterialRequest) -> exchange_pb2.MaterialRequest:
    """A copy to sign (``HubClient.envelope`` fills in the header of what it is given)."""
    return exchange_pb2.MaterialRequest.FromString(body.SerializeToString())


@dataclass
class HubProcess:
    """An `exchange serve` process on loopback."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, store: Keystore, department: str) -> HubClient:
        identity = Identity(
            department, store.department_signing_key(department), store.department_tls(department)
        )
        return HubClient(self.target, identity, server_name="localhost", retries=0)


def spawn(keys: Path, url: str, directory: Path, name: str) -> HubProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    log = directory / f"{name}.log"
    process = subprocess.Popen(
        [
            *EXCHANGE,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--keys-dir",
            str(keys),
            "--database-url",
            url,
        ],
        env=env,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),  # a file: nobody reads a pipe of one line per call
    )
    return HubProcess(process, port, log)


def stop(hubs: list[HubProcess]) -> list[int]:
    for hub in hubs:
        if hub.process.poll() is None:
            hub.process.send_signal(signal.SIGTERM)
    codes = []
    for hub in hubs:
        try:
            codes.append(hub.process.wait(30))
        except subprocess.TimeoutExpired:
            hub.process.kill()
            codes.append(hub.process.wait())
    return codes


@pytest.fixture
async def shared(
    start_hub: StartHub, postgres_url: str, keystore: Keystore, tmp_path: Path
) -> AsyncIterator[tuple[World, list[HubProcess]]]:
    """The world on hub A (in process) and hubs B and C (processes), one database."""
    hub = await start_hub(postgres_url, provider_timeout_ms=5000)
    world = await build(hub, tmp_path)
    others = [spawn(keystore.root, postgres_url, tmp_path, name) for name in ("b", "c")]
    try:
        for other in others:
            await wait_serving(other.target, keystore)
        yield world, others
    finally:
        stop(others)
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
async def test_revocation_race_across_hub_processes(
    shared: tuple[World, list[HubProcess]], kind: Kind
) -> None:
    world, others = shared
    hub = world.hub
    store = hub.keystore
    grant = await issue_grant(world.clients[CIVIL])
    spy = world.spies[CIVIL]
    spy.delay = 0.15
    started = len(spy.fetches)
    requesters = [other.client(store, SOCIAL) for other in others for _ in range(2)]
    try:
        outcomes, revocation, returned = await race(
            requesters,
            lambda: revoke(
                kind,
                operator=hub.client(HUB_ID),
                owner=world.clients[CIVIL],
                grant=grant,
                keyid=keyid_of(store.department_signing_key(SOCIAL).public_bytes),
            ),
            in_flight=lambda: len(spy.fetches) >= started + 6,
        )
    finally:
        spy.delay = 0.0
        for client in requesters:
            await client.close()
    check(kind, outcomes, revocation, returned)
    ledger = hub.server.hub.ledger
    assert [s for s in refused_at_commit(ledger) if s > revocation]
    await verify(hub.server.hub.engine, ledger, hub.server.hub.key_history())


async def test_hub_with_other_keys_is_refused_by_a_shared_database(
    shared: tuple[World, list[HubProcess]], postgres_url: str, tmp_path: Path
) -> None:
    world, _ = shared
    await world.hub.server.hub.ledger.close()  # its final checkpoint is stored
    other = Keystore(tmp_path / "other-keys")
    other.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
    intruder = spawn(other.root, postgres_url, tmp_path, "intruder")
    code = intruder.process.wait(60)
    result = subprocess.CompletedProcess([], code, "", intruder.log.read_text())
    assert "checkpoints are not signed by this hub's key" in one_line_error(result)


async def test_three_hubs_started_at_once_on_an_empty_database(
    postgres_url: str, keystore: Keystore, tmp_path: Path
) -> None:
    hubs = [spawn(keystore.root, postgres_url, tmp_path, f"hub{i}") for i in range(3)]
    try:
        for hub in hubs:
            await wait_serving(hub.target, keystore, deadline=60)
        # Supervision runs in one of them; the others follow it.
        leading = '"event": "supervision_leading"'
        logs = [hub.log.read_text() for hub in hubs]
        leaders = [hub for hub, log in zip(hubs, logs, strict=True) if leading in log]
        assert len(leaders) == 1, logs
        assert sum('"event": "supervision_following"' in log for log in logs) == 2
        # When the leader dies, another takes over (its session ends, and with it the lock).
        leaders[0].process.kill()
        leaders[0].process.wait(10)
        others = [hub for hub in hubs if hub is not leaders[0]]
        deadline = time.monotonic() + 30
        while not any(leading in hub.log.read_text() for hub in others):
            assert time.monotonic() < deadline, "no hub took over supervision"
            await asyncio.sleep(0.2)
    finally:
        codes = stop(hubs)
    logs = [hub.log.read_text() for hub in hubs]
    assert codes.count(0) == 2, [log[-2000:] for log in logs]  # the killed one aside


@pytest.mark.slow
async def test_calls_in_flight_on_a_killed_hub_are_retried_through_another(
    shared: tuple[World, list[HubProcess]],
) -> None:
    world, (doomed, survivor) = shared
    hub = world.hub
    store = hub.keystore
    await issue_grant(world.clients[CIVIL])
    spy = world.spies[CIVIL]
    spy.delay = 1.0  # the calls wait at the holder when their hub dies
    started = len(spy.fetches)
    body = exchange_pb2.MaterialRequest(
        material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
    )
    on_doomed = doomed.client(store, SOCIAL)
    on_survivor = survivor.client(store, SOCIAL)
    # A retry sends the same bytes: the same signed envelope, request id and issue time.
    envelopes = [on_doomed.envelope(copy(body)) for _ in range(4)]
    try:
        calls = [
            asyncio.create_task(on_doomed.send(REQUEST, e, exchange_pb2.MaterialResponse))
            for e in envelopes
        ]
        deadline = time.monotonic() + 20
        while len(spy.fetches) < started + len(envelopes):
            assert time.monotonic() < deadline, "the calls never reached the holder"
            await asyncio.sleep(0.01)
        doomed.process.kill()  # SIGKILL: no shutdown, no final checkpoint
        doomed.process.wait(10)
        failed = await asyncio.gather(*calls, return_exceptions=True)
        assert all(
            isinstance(f, Refused) and f.code == grpc.StatusCode.UNAVAILABLE for f in failed
        ), failed
        spy.delay = 0.0
        served = [await retry(on_survivor, body, e) for e in envelopes]
    finally:
        spy.delay = 0.0
        await on_doomed.close()
        await on_survivor.close()
    ledger = hub.server.hub.ledger
    stored = {e.sequence: e.leaf_hash for e in ledger.entries(0, ledger.size())}
    for answer in served:
        assert stored[answer.receipt.sequence] == answer.receipt.leaf_hash
    await verify(hub.server.hub.engine, ledger, hub.server.hub.key_history())


async def retry(
    client: HubClient, body: exchange_pb2.MaterialRequest, envelope: Envelope
) -> exchange_pb2.MaterialResponse:
    """What a caller whose hub died does (docs/operations.md, "Several hubs"): the same call
    (the same envelope) through another hub, again while it is said to be in progress (the dead
    hub's claim); once that claim outlives a few seconds, a read is asked again under a new
    request id."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await client.send(REQUEST, envelope, exchange_pb2.MaterialResponse)
        except Refused as refused:
            if refused.code != grpc.StatusCode.UNAVAILABLE:
                raise
            if time.monotonic() > deadline:
                envelope = client.envelope(copy(body))
            await asyncio.sleep(0.2)
