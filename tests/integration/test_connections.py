"""Connection limits of a real hub: handshake and idle timeouts, keepalive enforcement, and a
connection cap within the file-descriptor limit that keeps connected callers served."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from adapters.client import HubClient, Identity
from exchange.config import LimitsConfig
from exchange.crypto.keystore import Keystore
from exchange.v1 import common_pb2, registry_pb2
from tests.conftest import StartHub
from tests.integration.test_hub_process import EXCHANGE, free_port, wait_serving


async def left_ready(channel: grpc.aio.Channel) -> grpc.ChannelConnectivity:
    """Wait (at most 30 s) until ``channel`` leaves READY; return the state it went to."""
    state = channel.get_state()
    assert state == grpc.ChannelConnectivity.READY
    await asyncio.wait_for(channel.wait_for_state_change(state), 30)
    return channel.get_state()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closes ``sock`` (within 30 s) without sending anything."""
    sock.settimeout(30)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_an_idle_connection_is_closed_after_the_idle_timeout(start_hub: StartHub) -> None:
    hub = await start_hub(limits=LimitsConfig(idle_timeout_ms=300))
    client = await hub.register("js.nj.civil-affairs")
    await client.list_departments()
    assert await left_ready(client.channel) == grpc.ChannelConnectivity.IDLE
    # The client reconnects on its next call.
    await client.list_departments()


async def test_a_connection_that_never_completes_its_handshake_is_closed(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(limits=LimitsConfig(handshake_timeout_ms=300))
    with socket.create_connection(("127.0.0.1", hub.server.port)) as silent:
        assert await asyncio.to_thread(closed_by_peer, silent)


async def test_a_client_pinging_too_often_is_disconnected(start_hub: StartHub) -> None:
    hub = await start_hub(limits=LimitsConfig(min_ping_interval_ms=60_000))
    client = await hub.register("js.nj.civil-affairs")
    tls = hub.keystore.department_tls("js.nj.civil-affairs")
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate)
    pinging = grpc.aio.secure_channel(
        hub.target,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.keepalive_time_ms", 50),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    try:
        await pinging.channel_ready()
        # The hub counts the pings as strikes and closes the connection (GOAWAY).
        assert await left_ready(pinging) != grpc.ChannelConnectivity.READY
    finally:
        await pinging.close()
    await client.list_departments()


def _small_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))


@pytest.mark.slow
async def test_connections_beyond_the_descriptor_limit_leave_connected_callers_served(
    tmp_path: Path,
) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost", "127.0.0.1"))
    key = store.add_department("js.nj.civil-affairs")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    # Half-open connections stay until the handshake timeout: longer than the test.
    env["EXCHANGE_LIMITS__HANDSHAKE_TIMEOUT_MS"] = "120000"
    process = subprocess.Popen(
        [
            *EXCHANGE,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--keys-dir",
            str(store.root),
            "--database-url",
            f"sqlite:///{tmp_path / 'hub.db'}",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "hub.log").open("wb"),
        preexec_fn=_small_descriptor_limit,  # before the child runs any thread
    )
    target = f"127.0.0.1:{port}"
    held: list[socket.socket] = []
    try:
        await wait_serving(target, store)
        operator = HubClient(
            target,
            Identity("hub", store.operator_signing_key(), store.operator_tls()),
            server_name="localhost",
        )
        await operator.register_department(
            department=registry_pb2.Department(
                id="js.nj.civil-affairs",
                name="Civil Affairs",
                roles=[common_pb2.CONSUMER],
                keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
            )
        )
        member = HubClient(
            target,
            Identity("js.nj.civil-affairs", key, store.department_tls("js.nj.civil-affairs")),
            server_name="localhost",
            retries=0,
        )
        await member.list_departments()
        # More connections than the hub has descriptors, none of them completing a handshake.
        for _ in range(800):
            held.append(socket.create_connection(("127.0.0.1", port)))
        await asyncio.sleep(1.0)  # let the hub accept (and close) what it can
        # The member connected before is served, calls needing the database included.
        answers = await asyncio.gather(
            *(
                member.list_departments()
                for _ in range(30)  # within the certificate's share of calls
            )
        )
        assert all(answer.departments for answer in answers)
        await member.close()
        await operator.close()
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        process.wait(30)
    log = (tmp_path / "hub.log").read_text()
    assert "INTERNAL" not in log and "call_failed" not in log
