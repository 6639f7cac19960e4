"""The hub as a process: `exchange serve` started, called under load, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.client import HubClient, Identity, Refused, channel
from exchange.crypto.keystore import Keystore
from exchange.ledger import Ledger, verifier_key
from exchange.store.engines import open_engine
from exchange.v1 import common_pb2, envelope_pb2, ledger_pb2, registry_pb2

EXCHANGE = [sys.executable, "-m", "exchange.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    tmp_path: Path, port: int, database_url: str | None = None, *flags: str
) -> subprocess.Popen[bytes]:
    """``exchange serve`` on ``port`` with the keystore in tmp_path, logging to hub.log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    return subprocess.Popen(
        [
            *EXCHANGE,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--keys-dir",
            str(tmp_path / "keys"),
            "--database-url",
            database_url or f"sqlite:///{tmp_path / 'hub.db'}",
            *flags,
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        # A file, not a pipe: one log line per call would fill a pipe nobody reads.
        stderr=(tmp_path / "hub.log").open("ab"),
    )


async def wait_serving(target: str, store: Keystore, deadline: float = 30.0) -> None:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            async with channel(target, store.operator_tls(), "localhost") as ch:
                answer = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the hub did not become SERVING")


LIST = "/exchange.v1.Registry/ListDepartments"
CIVIL = "js.nj.civil-affairs"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def hub_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file in tmp_path, or a scratch PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'hub.db'}"


async def register_civil(target: str, store: Keystore) -> None:
    key = store.add_department(CIVIL)
    async with HubClient(
        target,
        Identity("hub", store.operator_signing_key(), store.operator_tls()),
        server_name="localhost",
    ) as operator:
        await operator.register_department(
            department=registry_pb2.Department(
                id=CIVIL,
                name="Civil Affairs",
                roles=[common_pb2.CONSUMER],
                keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
            )
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM ``process`` and return its exit code (killed after 60 s)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def verify_log(tmp_path: Path, url: str) -> str:
    """Export the hub's ledger with the CLI and verify the export; return verify's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    out = tmp_path / "ledger.export"
    for command in (
        ["audit", "export", "--out", str(out), "--database-url", url],
        ["audit", "verify", str(out), "--workers", "0"],
    ):
        done = subprocess.run(
            [*EXCHANGE, *command], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
async def test_sigterm_under_load_answers_every_call_or_unavailable_and_retries_succeed(
    tmp_path: Path, hub_database: str
) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost", "127.0.0.1"))
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = start(tmp_path, port, hub_database, "--shutdown-grace-seconds", "5")
    try:
        await wait_serving(target, store)
        await register_civil(target, store)
        identity = Identity(CIVIL, store.department_signing_key(CIVIL), store.department_tls(CIVIL))
        # No retries: every caller sees what the hub answered at shutdown.
        client = HubClient(target, identity, server_name="localhost", retries=0)
        done = 0
        terminated = asyncio.Event()
        results: list[tuple[envelope_pb2.Envelope, object]] = []

        async def worker() -> None:
            # Calls one after another until the hub is gone: calls are in flight at SIGTERM,
            # and more keep coming while the hub shuts down.
            nonlocal done
            while True:
                envelope = client.envelope(registry_pb2.ListDepartmentsRequest())
                try:
                    answer = await client.send(
                        LIST, envelope, registry_pb2.ListDepartmentsResponse, timeout=20
                    )
                except Refused as refused:
                    results.append((envelope, refused))
                    if refused.reason != "SHUTTING_DOWN":
                        return  # the hub is gone
                    # As the SDK would: wait as RetryInfo says, then call again.
                    await asyncio.sleep(refused.retry_after or 0.0)
                    continue
                results.append((envelope, answer))
                done += 1
                if done == 100 and not terminated.is_set():
                    terminated.set()
                    process.send_signal(signal.SIGTERM)

        await asyncio.gather(*(worker() for _ in range(32)))
        await client.close()
        exit_code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (tmp_path / "hub.log").read_text()
    assert terminated.is_set()
    assert exit_code == 0, stderr[-2000:]
    served = [r for _, r in results if isinstance(r, registry_pb2.ListDepartmentsResponse)]
    turned_away = [(e, r) for e, r in results if isinstance(r, Refused)]
    # Every call was served or answered UNAVAILABLE (SHUTTING_DOWN by the hub, or a connection
    # refused once it stopped): never CANCELLED, which would not say whether to retry.
    assert {r.code for _, r in turned_away} <= {grpc.StatusCode.UNAVAILABLE}, {
        (r.code, r.reason, r.message) for _, r in turned_away
    }
    assert {r.reason for _, r in turned_away} <= {"SHUTTING_DOWN", ""}
    assert any(r.reason == "SHUTTING_DOWN" for _, r in turned_away)
    assert all(r.retry_after is not None for _, r in turned_away if r.reason == "SHUTTING_DOWN")
    assert len(served) > 100, "no call in flight at SIGTERM was finished"
    assert '"event": "stopped"' in stderr
    # Long-lived objects are out of the collector's way (exchange.api.server).
    assert '"event": "heap_frozen"' in stderr
    # The verifier key auditors pin is in the log from the start (docs/ledger.md).
    vkey = verifier_key("exchange.local/hub", store.hub_signing_key().public_bytes)
    assert f'"verifier_key": "{vkey}"' in stderr

    # Restarted, the hub runs each call it turned away when sent again with the same bytes.
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = start(tmp_path, port, hub_database)
    try:
        async with HubClient(target, identity, server_name="localhost") as retrying:
            await retrying.wait_until_ready(30)
            retried = [
                await retrying.send(LIST, envelope, registry_pb2.ListDepartmentsResponse)
                for envelope, _ in turned_away
            ]
        assert await asyncio.to_thread(stop, process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    engine = open_engine(hub_database)
    try:
        ledger = Ledger(engine, store.hub_signing_key(), "exchange.local/hub")
        entries = {e.sequence: e for e in ledger.entries(0, ledger.size())}
        # Every answer's receipt is durable, and each call has exactly one entry: the calls
        # turned away had no effect the first time.
        for answer in [*served, *retried]:
            assert entries[answer.receipt.sequence].leaf_hash == answer.receipt.leaf_hash
        reads = [
            e
            for e in entries.values()
            if ledger_pb2.LedgerEntry.FromString(e.entry_bytes).kind == ledger_pb2.READ
        ]
        assert len(reads) == len(served) + len(retried) == len(results)
    finally:
        engine.dispose()
    assert verify_log(tmp_path, hub_database).startswith("valid: ")
