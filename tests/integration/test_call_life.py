"""A request id's life against real hub processes (issue 13): SIGKILL under load, a commit
slowed past the caller's deadline, a database that refuses connections or whose disk is full.

The world (tests.flows.world) is built through an in-process hub on the database; the load goes
to an `exchange serve` process on the same database, which the test kills and restarts on the
same port. Afterwards: every acknowledged call's same-bytes retry returns its first answer, a
cut call's retry gets its committed answer or runs once, no request id has two OK entries, and
the log verifies with the operator's first keys pinned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import create_engine, text

from adapters.client import HubClient, Identity
from exchange.crypto.keystore import Keystore
from exchange.policy.identity import claim_of
from exchange.rpc.status import error_info
from exchange.v1 import envelope_pb2, exchange_pb2, ledger_pb2
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CIVIL,
    FORM,
    FORM_TOOL,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
    build,
)
from tests.integration.revocation import issue_grant, verify
from tests.integration.test_hub_process import free_port, wait_serving

EXCHANGE = [sys.executable, "-m", "exchange.cli"]
CHECK = "/exchange.v1.Exchange/Check"
REQUEST = "/exchange.v1.Exchange/Request"
SUBMIT = "/exchange.v1.Exchange/Submit"
PREFILL = "/exchange.v1.Exchange/Prefill"
# Refusals for a passing condition (docs/api.md, "Request ids and retries"): not answers.
TRANSIENT = {
    "LEDGER_UNAVAILABLE",
    "DATABASE_UNAVAILABLE",
    "PROVIDER_UNAVAILABLE",
    "PROVIDER_TIMEOUT",
    "RATE_LIMITED",
    "TOO_MANY_CALLS",
    "HUB_BUSY",
    "REQUEST_IN_PROGRESS",
}


class HubProcess:
    """An `exchange serve` process on a fixed loopback port, killed and restarted at will."""

    def __init__(self, keys: Path, url: str, directory: Path) -> None:
        self.keys, self.url, self.directory = keys, url, directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
        self.starts += 1
        log = (self.directory / f"hub-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                *EXCHANGE,
                "serve",
                "--listen",
                self.target,
                "--keys-dir",
                str(self.keys),
                "--database-url",
                self.url,
            ],
            env=env,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, store: Keystore, department: str) -> HubClient:
        identity = Identity(
            department, store.department_signing_key(department), store.department_tls(department)
        )
        return HubClient(self.target, identity, server_name="localhost", retries=0)


@dataclass
class Sent:
    """One call: what was sent (the bytes a retry sends again) and what came back."""

    method: str
    client: HubClient
    envelope: envelope_pb2.Envelope
    response_type: type[Message]
    answer: Message | None = None
    refusal: tuple[grpc.StatusCode, str] | None = None  # (code, reason)


@dataclass
class Calls:
    acknowledged: list[Sent] = field(default_factory=list)  # an answer, not a passing refusal
    cut: list[Sent] = field(default_factory=list)  # no answer (killed, deadline, passing)


async def send(sent: Sent, timeout: float = 10.0) -> Sent:
    """Send ``sent``'s envelope once; return what came back (as a new Sent)."""
    call = sent.client.channel.unary_unary(
        sent.method,
        request_serializer=envelope_pb2.Envelope.SerializeToString,
        response_deserializer=sent.response_type.FromString,
    )
    result = Sent(sent.method, sent.client, sent.envelope, sent.response_type)
    try:
        result.answer = await call(sent.envelope, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        info = error_info(error.trailing_metadata())
        result.refusal = (error.code(), info.reason if info else "")
    return result


def passing(result: Sent) -> bool:
    """Whether ``result`` is no answer: a refusal for a passing condition, or none at all."""
    if result.answer is not None:
        return False
    assert result.refusal is not None
    code, reason = result.refusal
    assert code != grpc.StatusCode.INTERNAL, result.refusal
    return reason in TRANSIENT or not reason


async def settled(sent: Sent, until: float) -> Sent:
    """Send ``sent`` again until it gets an answer or a refusal that is not passing."""
    while True:
        result = await send(sent)
        if not passing(result) or time.monotonic() > until:
            return result
        await asyncio.sleep(0.3)


class Load:
    """Mixed calls (Check, Request, Submit, Prefill) from several members, in loops."""

    def __init__(self, world: World, hub: HubProcess) -> None:
        store = world.hub.keystore
        self.world = world
        self.clients = {d: hub.client(store, d) for d in (SOCIAL, TOWNSHIP, FORM_TOOL)}
        self.calls = Calls()
        self.stopping = False
        self.counter = 0

    def prepare(self) -> Sent:
        self.counter += 1
        kind = self.counter % 4
        if kind == 0:
            client = self.clients[SOCIAL]
            body: Message = exchange_pb2.CheckRequest(material_type=MARRIAGE, subject_id=ANNA)
            return Sent(CHECK, client, client.envelope(body), exchange_pb2.CheckResponse)
        if kind == 1:
            client = self.clients[SOCIAL]
            body = exchange_pb2.MaterialRequest(
                material_type=MARRIAGE,
                subject_id=ANNA,
                purpose=ASSISTANCE,
                fields=["marital_status"],
            )
            return Sent(REQUEST, client, client.envelope(body), exchange_pb2.MaterialResponse)
        if kind == 2:
            client = self.clients[TOWNSHIP]
            body = exchange_pb2.SubmitRequest(
                material_type=MARRIAGE,
                subject_id=BEN,
                fields={"marital_status": "married", "spouse_name": f"S{self.counter % 3}"},
            )
            return Sent(SUBMIT, client, client.envelope(body), exchange_pb2.SubmitResponse)
        client = self.clients[FORM_TOOL]
        body = exchange_pb2.PrefillRequest(
            form_id=FORM, subject_id=ANNA, assertion=self.world.assertion(ANNA)
        )
        return Sent(PREFILL, client, client.envelope(body), exchange_pb2.PrefillResponse)

    async def loop(self) -> None:
        while not self.stopping:
            sent = self.prepare()
            result = await send(sent, timeout=5.0)
            if passing(result):
                self.calls.cut.append(sent)
                await asyncio.sleep(0.05)
            else:
                self.calls.acknowledged.append(result)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def ok_entries(world: World) -> dict[tuple[str, str], int]:
    """How many OK entries each (member, request id) has."""
    counts: dict[tuple[str, str], int] = {}
    for entry in world.ledger_entries():
        if entry.outcome == ledger_pb2.OK and entry.request_id:
            key = (entry.actor, entry.request_id)
            counts[key] = counts.get(key, 0) + 1
    return counts


def request_id(sent: Sent) -> tuple[str, str]:
    """The (member, request id) of ``sent``."""
    return sent.client.identity.department_id, claim_of(sent.envelope, None).request_id


@contextlib.asynccontextmanager
async def world_on(
    start_hub: StartHub, url: str, tmp_path: Path
) -> AsyncIterator[tuple[World, HubProcess]]:
    """The world built through an in-process hub on ``url``, and a hub process on it."""
    hub = await start_hub(url, provider_timeout_ms=3000)
    world = await build(hub, tmp_path)
    await issue_grant(world.clients[CIVIL])  # SOCIAL may request marriage records
    await issue_grant(world.clients[CIVIL], TOWNSHIP)  # the form tool's owner may prefill
    process = HubProcess(hub.keystore.root, url, tmp_path)
    process.spawn()
    try:
        await wait_serving(process.target, hub.keystore, deadline=60)
        yield world, process
    finally:
        process.stop()
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def kill_under_load(world: World, hub: HubProcess, kills: int) -> None:
    load = Load(world, hub)
    loops = [asyncio.create_task(load.loop()) for _ in range(6)]
    rng = random.Random()
    try:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.4, 1.5))
            hub.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            hub.spawn()
            await wait_serving(hub.target, world.hub.keystore, deadline=60)
        await asyncio.sleep(0.5)
    finally:
        load.stopping = True
        await asyncio.gather(*loops)
    calls = load.calls
    assert len(calls.acknowledged) > 20, len(calls.acknowledged)
    assert calls.cut, "no call was cut by the kills"
    try:
        # Every acknowledged call's same-bytes retry returns its first answer.
        until = time.monotonic() + 60
        for first in calls.acknowledged:
            again = await settled(first, until)  # the channel may still be reconnecting
            assert again.answer == first.answer, (first.method, again.refusal)
            assert again.refusal == first.refusal
        # A cut call's retry gets its committed answer, or runs now (once); a call whose
        # entry committed without its answer says so, and is never run again.
        outcomes: dict[str, int] = {}
        for cut in calls.cut:
            again = await settled(cut, until)
            assert not passing(again), (cut.method, again.refusal)
            if again.refusal is not None:
                assert again.refusal[1] != "REQUEST_ID_REUSED", cut.method
            replay = await send(cut)
            assert replay.answer == again.answer and replay.refusal == again.refusal
            outcomes[again.refusal[1] if again.refusal else "OK"] = (
                outcomes.get(again.refusal[1] if again.refusal else "OK", 0) + 1
            )
        print(f"acknowledged={len(calls.acknowledged)} cut={len(calls.cut)} retried={outcomes}")
    finally:
        await load.close()
    counts = ok_entries(world)
    doubled = {key: n for key, n in counts.items() if n > 1}
    assert not doubled, doubled
    for sent in calls.acknowledged:
        if sent.answer is not None:
            assert counts.get(request_id(sent)) == 1, sent.method
    server = world.hub.server.hub
    await verify(server.engine, server.ledger, server.key_history())


@pytest.mark.slow
async def test_sigkill_under_load_on_sqlite(start_hub: StartHub, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    async with world_on(start_hub, url, tmp_path) as (world, hub):
        await kill_under_load(world, hub, kills=5)


@pytest.mark.slow
async def test_sigkill_under_load_on_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    async with world_on(start_hub, postgres_url, tmp_path) as (world, hub):
        await kill_under_load(world, hub, kills=5)


# ------------------------------------------------------------------ a crash leaving a claim


async def claim_left_pending(world: World, hub: HubProcess) -> None:
    """A Request killed while its holder answers: the retry after the restart runs it once."""
    store = world.hub.keystore
    spy = world.spies[CIVIL]
    client = hub.client(store, SOCIAL)
    try:
        body = exchange_pb2.MaterialRequest(
            material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
        )
        sent = Sent(REQUEST, client, client.envelope(body), exchange_pb2.MaterialResponse)
        spy.delay = 1.0
        asked = len(spy.fetches)
        first = asyncio.create_task(send(sent))
        while len(spy.fetches) == asked:
            await asyncio.sleep(0.01)
        hub.kill()  # the claim is PENDING: nothing of the call was committed
        assert passing(await first)
        spy.delay = 0.0
        hub.spawn()
        await wait_serving(hub.target, store, deadline=60)
        again = await settled(sent, time.monotonic() + 30)
        assert again.answer is not None, again.refusal
        assert ok_entries(world)[request_id(sent)] == 1
        replay = await send(sent)
        assert replay.answer == again.answer
    finally:
        spy.delay = 0.0
        await client.close()


async def test_a_claim_left_by_a_crash_runs_once_after_restart_on_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    async with world_on(start_hub, url, tmp_path) as (world, hub):
        await claim_left_pending(world, hub)


async def test_a_claim_left_by_a_crash_runs_once_after_restart_on_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    async with world_on(start_hub, postgres_url, tmp_path) as (world, hub):
        await claim_left_pending(world, hub)


# ------------------------------------------------------------- a commit past the deadline


@contextlib.contextmanager
def head_locked(url: str) -> Iterator[None]:
    """Hold the ledger's write lock from outside the hub (its commits wait meanwhile)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")
                conn.execute(text("SELECT * FROM ledger_head FOR UPDATE"))
            try:
                yield
            finally:
                conn.exec_driver_sql("ROLLBACK")
    finally:
        engine.dispose()


async def commit_past_deadline(world: World, hub: HubProcess, url: str) -> None:
    store = world.hub.keystore
    spy = world.spies[CIVIL]
    client = hub.client(store, SOCIAL)
    try:
        body = exchange_pb2.MaterialRequest(
            material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
        )
        sent = Sent(REQUEST, client, client.envelope(body), exchange_pb2.MaterialResponse)
        spy.delay = 0.3
        asked = len(spy.fetches)
        first = asyncio.create_task(send(sent, timeout=0.8))
        while len(spy.fetches) == asked:
            await asyncio.sleep(0.01)
        # The holder answers at 0.3 s; the entry's commit waits for the lock past the
        # caller's deadline (0.8 s) but within the writer's lock timeout.
        with head_locked(url):
            result = await first
            await asyncio.sleep(0.4)
        spy.delay = 0.0
        assert result.refusal is not None and result.refusal[0] in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE,
        ), result.refusal
        again = await settled(sent, time.monotonic() + 30)
        assert again.answer is not None, again.refusal
        assert len(spy.fetches) == asked + 1  # one effect at the holder
        assert ok_entries(world)[request_id(sent)] == 1  # and in the ledger
    finally:
        spy.delay = 0.0
        await client.close()


async def test_a_commit_past_the_deadline_then_a_retry_has_one_effect_on_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    async with world_on(start_hub, url, tmp_path) as (world, hub):
        await commit_past_deadline(world, hub, url)


async def test_a_commit_past_the_deadline_then_a_retry_has_one_effect_on_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    async with world_on(start_hub, postgres_url, tmp_path) as (world, hub):
        await commit_past_deadline(world, hub, postgres_url)


# ------------------------------------------------------------------ a database that fails


async def unavailable_then_served(world: World, hub: HubProcess, fault: object) -> None:
    """While ``fault`` (a context manager) holds, calls are UNAVAILABLE within their deadline
    and no holder is asked; after it, the same bytes are served."""
    store = world.hub.keystore
    spy = world.spies[CIVIL]
    client = hub.client(store, SOCIAL)
    try:
        check = client.envelope(exchange_pb2.CheckRequest(material_type=MARRIAGE, subject_id=ANNA))
        request = client.envelope(
            exchange_pb2.MaterialRequest(
                material_type=MARRIAGE,
                subject_id=ANNA,
                purpose=ASSISTANCE,
                fields=["marital_status"],
            )
        )
        calls = [
            Sent(CHECK, client, check, exchange_pb2.CheckResponse),
            Sent(REQUEST, client, request, exchange_pb2.MaterialResponse),
        ]
        asked = len(spy.fetches)
        with fault:  # type: ignore[attr-defined]
            for sent in calls:
                result = await send(sent, timeout=8.0)
                assert result.refusal is not None, sent.method
                code, reason = result.refusal
                assert code == grpc.StatusCode.UNAVAILABLE, (sent.method, result.refusal)
                assert reason in ("DATABASE_UNAVAILABLE", "LEDGER_UNAVAILABLE"), reason
            assert len(spy.fetches) == asked  # no holder was asked
        for sent in calls:
            again = await settled(sent, time.monotonic() + 30)
            assert again.answer is not None, (sent.method, again.refusal)
    finally:
        await client.close()


@contextlib.contextmanager
def refusing_connections(url: str) -> Iterator[None]:
    """PostgreSQL refuses new connections to the database of ``url`` and ends its sessions."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
        try:
            yield
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        admin.dispose()


async def test_postgres_refusing_connections_is_unavailable(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    async with world_on(start_hub, postgres_url, tmp_path) as (world, hub):
        await unavailable_then_served(world, hub, refusing_connections(postgres_url))


@contextlib.contextmanager
def disk_full(directory: Path) -> Iterator[None]:
    """Fill the file system of ``directory`` (a small tmpfs) until it has no byte left."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    assert os.statvfs(directory).f_bavail == 0
    try:
        yield
    finally:
        filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for the test (root only), unmounted after."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_sqlite_with_a_full_disk_is_unavailable(
    start_hub: StartHub, small_disk: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{small_disk / 'exchange.db'}"
    async with world_on(start_hub, url, tmp_path) as (world, hub):
        await unavailable_then_served(world, hub, disk_full(small_disk))


# ------------------------------------------------------ another hub takes an expired claim


async def taken_over(world: World, hub: HubProcess) -> None:
    """A hub killed holding a claim: the same bytes sent to another hub of the database are
    refused as in progress while the claim's lease runs, then run there once."""
    store = world.hub.keystore
    spy = world.spies[CIVIL]
    client = hub.client(store, SOCIAL)
    other = world.hub.client(SOCIAL)  # the in-process hub: another instance
    try:
        body = exchange_pb2.MaterialRequest(
            material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
        )
        sent = Sent(REQUEST, client, client.envelope(body), exchange_pb2.MaterialResponse)
        spy.delay = 1.0
        asked = len(spy.fetches)
        # A short deadline: the claim's lease is that plus five seconds.
        first = asyncio.create_task(send(sent, timeout=1.5))
        while len(spy.fetches) == asked:
            await asyncio.sleep(0.01)
        hub.kill()
        assert passing(await first)
        spy.delay = 0.0
        elsewhere = Sent(REQUEST, other, sent.envelope, exchange_pb2.MaterialResponse)
        refused = await send(elsewhere)
        assert refused.refusal is not None
        assert refused.refusal == (grpc.StatusCode.UNAVAILABLE, "REQUEST_IN_PROGRESS")
        again = await settled(elsewhere, time.monotonic() + 30)
        assert again.answer is not None, again.refusal
        assert len(spy.fetches) == asked + 2  # the killed hub's fetch, and this one
        assert ok_entries(world)[request_id(sent)] == 1
    finally:
        spy.delay = 0.0
        await client.close()


async def test_another_hub_takes_over_an_expired_claim_on_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    async with world_on(start_hub, url, tmp_path) as (world, hub):
        await taken_over(world, hub)


async def test_another_hub_takes_over_an_expired_claim_on_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    async with world_on(start_hub, postgres_url, tmp_path) as (world, hub):
        await taken_over(world, hub)


# ------------------------------------------------------------ which refusals are answers


async def test_a_passing_refusal_frees_the_id_and_a_policy_refusal_is_the_answer(
    world: World,
) -> None:
    hub = world.hub
    spy = world.spies[CIVIL]
    await issue_grant(world.clients[CIVIL])
    client = hub.client(SOCIAL)
    body = exchange_pb2.MaterialRequest(
        material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
    )
    sent = Sent(REQUEST, client, client.envelope(body), exchange_pb2.MaterialResponse)
    spy.delay = 2.0  # past the hub's provider timeout (1.5 s)
    try:
        slow = await send(sent)
    finally:
        spy.delay = 0.0
    assert slow.refusal == (grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT")
    # The same bytes run again (the timeout was not the id's answer), and are served once.
    again = await send(sent)
    assert again.answer is not None, again.refusal
    assert (await send(sent)).answer == again.answer
    assert ok_entries(world)[request_id(sent)] == 1

    # A policy refusal is the id's answer: the retry gets it, and appends no entry.
    denied = exchange_pb2.MaterialRequest(
        material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["spouse_name"]
    )
    refused = Sent(REQUEST, client, client.envelope(denied), exchange_pb2.MaterialResponse)
    first = await send(refused)
    assert first.refusal is not None and first.refusal[1] == "FIELD_NOT_GRANTED"
    size = hub.server.hub.ledger.size()
    assert (await send(refused)).refusal == first.refusal
    assert hub.server.hub.ledger.size() == size
