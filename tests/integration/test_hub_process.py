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
from exchange.store.database import open_engine
from exchange.v1 import common_pb2, ledger_pb2, registry_pb2

EXCHANGE = [sys.executable, "-m", "exchange.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
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
            f"sqlite:///{tmp_path / 'hub.db'}",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        # A file, not a pipe: one log line per call would fill a pipe nobody reads.
        stderr=(tmp_path / "hub.log").open("wb"),
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


@pytest.mark.slow
async def test_sigterm_under_load_finishes_in_flight_calls_and_exits_zero(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost", "127.0.0.1"))
    key = store.add_department("js.nj.civil-affairs")
    port = free_port()
    process = start(tmp_path, port)
    target = f"127.0.0.1:{port}"
    try:
        await wait_serving(target, store)
        operator = HubClient(
            target,
            Identity("hub", store.operator_signing_key(), store.operator_tls()),
            server_name="localhost",
        )
        await operator.call(
            "/exchange.v1.Registry/RegisterDepartment",
            registry_pb2.RegisterDepartmentRequest(
                department=registry_pb2.Department(
                    id="js.nj.civil-affairs",
                    name="Civil Affairs",
                    roles=[common_pb2.CONSUMER],
                    keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
                )
            ),
            registry_pb2.DepartmentResponse,
        )
        await operator.close()
        client = HubClient(
            target,
            Identity("js.nj.civil-affairs", key, store.department_tls("js.nj.civil-affairs")),
            server_name="localhost",
            retries=0,
        )
        done = 0
        terminated = asyncio.Event()

        async def one() -> registry_pb2.ListDepartmentsResponse | Refused:
            nonlocal done
            try:
                answer = await client.call(
                    "/exchange.v1.Registry/ListDepartments",
                    registry_pb2.ListDepartmentsRequest(),
                    registry_pb2.ListDepartmentsResponse,
                    timeout=20,
                )
            except Refused as refused:
                return refused
            done += 1
            if done == 40 and not terminated.is_set():
                terminated.set()
                process.send_signal(signal.SIGTERM)
            return answer

        results = await asyncio.gather(*(one() for _ in range(400)))
        await client.close()
        exit_code = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (tmp_path / "hub.log").read_text()
    assert terminated.is_set()
    assert exit_code == 0, stderr[-2000:]
    served = [r for r in results if isinstance(r, registry_pb2.ListDepartmentsResponse)]
    refused = [r for r in results if isinstance(r, Refused)]
    # Every call was either served completely or turned away before it started (UNAVAILABLE
    # for a connection refused, CANCELLED for a call received but not yet dispatched).
    not_started = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert all(r.code in not_started for r in refused), {r.code for r in refused}
    assert len(served) > 40, "no call in flight at SIGTERM was finished"
    assert '"event": "stopped"' in stderr
    # Long-lived objects are out of the collector's way (exchange.api.server).
    assert '"event": "heap_frozen"' in stderr
    # The verifier key auditors pin is in the log from the start (docs/ledger.md).
    vkey = verifier_key("exchange.local/hub", store.hub_signing_key().public_bytes)
    assert f'"verifier_key": "{vkey}"' in stderr
    # Every served call's receipt is durable in the ledger after shutdown.
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    ledger = Ledger(engine, store.hub_signing_key(), "exchange.local/hub")
    stored = {e.sequence: e.leaf_hash for e in ledger.entries(0, 10_000)}
    for answer in served:
        assert stored[answer.receipt.sequence] == answer.receipt.leaf_hash
    # ...and the calls turned away had no effect: one READ entry per served call, no more.
    reads = [
        e
        for e in ledger.entries(0, 10_000)
        if ledger_pb2.LedgerEntry.FromString(e.entry_bytes).kind == ledger_pb2.READ
    ]
    assert len(reads) == len(served)
    engine.dispose()
