"""Load and abuse benchmark: does one department's misbehaviour reach another's latency?

A well-behaved department (a consumer with a grant) calls Check and Request from a few workers
and its p50/p99 are measured:

- alone, just before each abuse (each ratio is to the quiet figures measured just before it,
  since a machine shared with other work drifts);
- while another department floods: ``--flood`` (2,000) calls kept in flight at all times,
  spread over ``--flood-channels`` connections, each refused or answered call sent again at
  once (RetryInfo ignored), every envelope freshly signed;
- while an auditor department opens ``--followers`` (2,000) following StreamEntries from the
  log's end (each refused one is counted and not retried; the open ones read every new entry);
- while ``--idle`` (1,000) idle connections are held: half of them mTLS connections that
  completed their handshake and make no call, half TCP connections that never start one (each
  reopened as soon as the hub closes it).

The abusers run in a process of their own, niced (``os.nice(10)``) so that on one small machine
generating the abuse does not take the CPU from the hub and the measured department as it would
not if it came from another machine; the hub's own work for the abuse is not niced. The hub
runs as ``exchange serve`` does (its own process, SQLite, default limits unless given), beside
the echo Provider of bench/routing.py.

Prints each phase's p50/p99 per method and its ratio to the alone figures (target: p99 ratio
<= 2 in every phase), and what became of the flooding calls and streams: answered, refused
with a reason and a ledger entry (checked in the hub's database after the run), refused
without one, CANCELLED (target: every refused call has its reason and entry; zero CANCELLED).

Run: python bench/abuse.py [--seconds 10] [--workers 4] [--flood 2000] [--followers 2000]
     [--idle 1000] [--streams-per-department N]
The process raises its own soft file-descriptor limit to the hard one and says what it used.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from adapters.auditor import stream_entries
from adapters.client import HubClient, Identity, Refused
from exchange.config import Config, LimitsConfig
from exchange.crypto.keystore import Keystore
from exchange.ledger import storage
from exchange.store.engines import open_engine
from exchange.v1 import audit_pb2, common_pb2, envelope_pb2, exchange_pb2, registry_pb2

sys.path.insert(0, str(Path(__file__).parent))
from routing import (
    CONSUMER,
    HUB_ID,
    MATERIAL,
    OWNER,
    PURPOSE,
    SUBJECT,
    run_echo,
    run_hub,
    setup_hub,
)

FLOODER = "js.flood"
AUDITOR = "js.audit.flood"
CHECK = "/exchange.v1.Exchange/Check"


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to the hard one; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard


def identity(store: Keystore, department: str) -> Identity:
    if department == HUB_ID:
        return Identity(HUB_ID, store.operator_signing_key(), store.operator_tls())
    return Identity(
        department, store.department_signing_key(department), store.department_tls(department)
    )


def client(target: str, store: Keystore, department: str, **options: Any) -> HubClient:
    return HubClient(target, identity(store, department), server_name="localhost", **options)


# ----------------------------------------------------------------------------- the abusers


@dataclasses.dataclass
class Tally:
    """What became of the abusers' calls or streams."""

    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    refused_sequences: list[int] = dataclasses.field(default_factory=list)
    opened: int = 0


def outcome_of(error: Refused, tally: Tally, stopping: bool = False) -> None:
    if error.code == grpc.StatusCode.CANCELLED and stopping:
        # The abuser cancels what it still has in flight when told to stop.
        tally.outcomes["cancelled by the abuser when stopping"] += 1
    elif error.code == grpc.StatusCode.CANCELLED:
        tally.outcomes["CANCELLED (silent)"] += 1
    elif not error.reason:
        tally.outcomes[f"{error.code.name} without a reason"] += 1
    elif error.ledger_sequence is None:
        tally.outcomes[f"{error.code.name} {error.reason} without an entry"] += 1
    else:
        tally.outcomes[f"{error.code.name} {error.reason} with its entry"] += 1
        tally.refused_sequences.append(error.ledger_sequence)


async def flood(
    target: str,
    store: Keystore,
    calls: int,
    channels: int,
    loaded: asyncio.Event,
    stop: asyncio.Event,
) -> Tally:
    """Keep ``calls`` Checks in flight over ``channels`` connections until ``stop``."""
    tally = Tally()
    clients = [client(target, store, FLOODER, retries=0) for _ in range(channels)]
    for each in clients:
        await each.channel.channel_ready()
    asyncio.get_running_loop().call_later(3.0, loaded.set)  # in flight and cycling by then

    async def worker(each: HubClient) -> None:
        call = each.channel.unary_unary(
            CHECK,
            request_serializer=envelope_pb2.Envelope.SerializeToString,
            response_deserializer=exchange_pb2.CheckResponse.FromString,
        )
        while not stop.is_set():
            envelope = each.envelope(
                exchange_pb2.CheckRequest(material_type=MATERIAL, subject_id=SUBJECT)
            )
            try:
                await call(envelope, timeout=60)
                tally.outcomes["answered"] += 1
            except grpc.aio.AioRpcError as error:
                outcome_of(Refused.from_rpc_error(error), tally, stop.is_set())

    await asyncio.gather(*(worker(clients[i % channels]) for i in range(calls)))
    for each in clients:
        await each.close()
    return tally


async def follow(
    target: str,
    store: Keystore,
    streams: int,
    channels: int,
    loaded: asyncio.Event,
    stop: asyncio.Event,
) -> Tally:
    """Open ``streams`` following StreamEntries over ``channels`` connections; hold the ones
    the hub takes, reading every entry, until ``stop``."""
    tally = Tally()
    clients = [client(target, store, AUDITOR, retries=0) for _ in range(channels)]
    # From the log's end: following costs the hub what the log grows by, not an export of it.
    latest = await clients[0].call(
        "/exchange.v1.Audit/GetCheckpoint",
        audit_pb2.GetCheckpointRequest(),
        audit_pb2.CheckpointResponse,
    )

    settled = 0
    if streams == 0:
        loaded.set()

    def answered() -> None:
        nonlocal settled
        settled += 1
        if settled == streams:
            loaded.set()

    async def one(each: HubClient) -> None:
        first = True
        try:
            async for _ in stream_entries(each, latest.size, follow=True):
                if first:
                    tally.opened += 1
                    first = False
                    answered()
        except Refused as error:
            outcome_of(error, tally, stop.is_set())
            if first:
                answered()

    tasks = [asyncio.create_task(one(clients[i % channels])) for i in range(streams)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for each in clients:
        await each.close()
    return tally


async def idle(
    target: str, store: Keystore, connections: int, loaded: asyncio.Event, stop: asyncio.Event
) -> Tally:
    """Hold ``connections`` idle connections: half mTLS (handshake done, no call), half TCP
    that never starts a handshake, reopened whenever the hub closes one."""
    tally = Tally()
    tls = store.department_tls(FLOODER)
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate)
    channels = [
        grpc.aio.secure_channel(
            target,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),  # a connection of its own each
            ],
        )
        for _ in range(connections // 2)
    ]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    tally.opened = len(channels)
    host, port = target.rsplit(":", 1)
    asyncio.get_running_loop().call_later(1.0, loaded.set)  # the TCP ones open by then

    async def half_open() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                tally.outcomes["TCP connection refused"] += 1
                await asyncio.sleep(0.1)
                continue
            tally.outcomes["TCP connections opened"] += 1
            waiting = asyncio.ensure_future(reader.read(1))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopped.cancel()
            writer.close()

    await asyncio.gather(*(half_open() for _ in range(connections - connections // 2)))
    tally.outcomes["mTLS connections still open at the end"] = sum(
        channel.get_state() == grpc.ChannelConnectivity.READY for channel in channels
    )
    for channel in channels:
        await channel.close()
    return tally


def run_abuser(kind: str, target: str, keys_dir: str, amount: int, extra: int, pipe: Any) -> None:
    """An abuser process: starts ``kind`` at once, says "ready" once its load is built up (the
    burst of opening it is over), stops when told, and sends back its Tally."""
    os.nice(10)
    raise_descriptor_limit()
    store = Keystore(Path(keys_dir))

    async def main() -> Tally:
        stop, loaded = asyncio.Event(), asyncio.Event()
        if kind == "flood":
            work = asyncio.create_task(flood(target, store, amount, extra, loaded, stop))
        elif kind == "follow":
            work = asyncio.create_task(follow(target, store, amount, extra, loaded, stop))
        else:
            work = asyncio.create_task(idle(target, store, amount, loaded, stop))
        # The load is built up (every stream open or refused, every connection made); what the
        # hub then does is the steady cost of the abuse, measured from a second later.
        await asyncio.wait_for(loaded.wait(), 120)
        await asyncio.sleep(1.0)
        pipe.send("ready")
        await asyncio.to_thread(pipe.recv)
        stop.set()
        return await work

    tally = asyncio.run(main())
    pipe.send(tally)


# ----------------------------------------------------------------------------- measurement


@dataclasses.dataclass
class Phase:
    name: str
    latencies: dict[str, list[float]]
    abuse: Tally | None = None

    def percentile(self, method: str, p: float) -> float:
        ordered = sorted(self.latencies[method])
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def measure(name: str, member: HubClient, seconds: float, workers: int) -> Phase:
    """Check and Request in turn from ``workers`` workers for ``seconds``; time every call."""
    latencies: dict[str, list[float]] = {"Check": [], "Request": []}
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "Check": lambda: member.check(MATERIAL, SUBJECT),
        "Request": lambda: member.request(MATERIAL, SUBJECT, purpose=PURPOSE),
    }
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            for method, call in calls.items():
                started = time.perf_counter()
                await call()
                latencies[method].append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return Phase(name, latencies)


async def register(target: str, store: Keystore) -> None:
    async with client(target, store, HUB_ID) as operator:
        for department, role in ((FLOODER, common_pb2.CONSUMER), (AUDITOR, common_pb2.AUDITOR)):
            await operator.register_department(
                department=registry_pb2.Department(
                    id=department,
                    name=department,
                    roles=[role],
                    keys=[
                        registry_pb2.DepartmentKey(
                            public_key=store.department_signing_key(department).public_bytes
                        )
                    ],
                )
            )


async def run(store: Keystore, target: str, args: Any, context: Any) -> list[Phase]:
    await setup_hub(target, store)
    await register(target, store)
    phases: list[Phase] = []
    async with client(target, store, CONSUMER, retries=0) as member:
        for _ in range(50):  # warm up: connection, caches
            await member.check(MATERIAL, SUBJECT)
            await member.request(MATERIAL, SUBJECT, purpose=PURPOSE)
        for kind, amount, extra, label in (
            ("flood", args.flood, args.flood_channels, f"flood of {args.flood} calls"),
            ("follow", args.followers, args.follow_channels, f"{args.followers} followers"),
            ("idle", args.idle, 0, f"{args.idle} idle connections"),
        ):
            # Alone again just before each abuse: the ratio is to the quiet figures of the same
            # minute, as a machine shared with other work drifts.
            phases.append(await measure("alone", member, args.seconds, args.workers))
            ours, theirs = context.Pipe()
            process = context.Process(
                target=run_abuser,
                args=(kind, target, str(store.root), amount, extra, theirs),
                daemon=True,
            )
            process.start()
            if not await asyncio.to_thread(ours.poll, 180):
                raise RuntimeError(f"the {kind} abuser did not build up its load")
            ready = ours.recv()
            assert ready == "ready"
            phase = await measure(label, member, args.seconds, args.workers)
            ours.send("stop")
            phase.abuse = await asyncio.to_thread(ours.recv)
            process.join(30)
            phases.append(phase)
            await asyncio.sleep(2.0)  # let the hub settle (streams and connections closed)
    return phases


def entries_recorded(database: str, sequences: list[int]) -> tuple[int, collections.Counter[str]]:
    """How many of ``sequences`` are refusal entries in the hub's ledger, by reason."""
    engine = open_engine(database)
    wanted = set(sequences)
    found: collections.Counter[str] = collections.Counter()
    with engine.connect() as conn:
        position = 0
        while True:
            page = storage.read_entries(conn, position, 5000)
            for stored in page:
                if stored.sequence in wanted:
                    entry = stored.decode()
                    found[common_pb2.Reason.Name(entry.reason)] += 1
            if len(page) < 5000:
                break
            position = page[-1].sequence + 1
    engine.dispose()
    return sum(found.values()), found


def report(phases: list[Phase], database: str, args: Any, limits: LimitsConfig) -> None:
    print(
        f"machine: {os.cpu_count()} cores; measured department: {args.workers} workers calling "
        f"Check then Request, {args.seconds:.0f} s per phase; hub on SQLite; limits: "
        f"{limits.calls_per_department} calls / {limits.streams_per_department} streams per "
        f"department, {limits.calls_per_certificate} / {limits.streams_per_certificate} per "
        f"certificate, {limits.calls} / {limits.streams} per hub"
    )
    worst = 0.0
    for index, phase in enumerate(phases):
        alone = phases[index - index % 2]  # the quiet phase measured just before
        parts = []
        for method in ("Check", "Request"):
            p50, p99 = phase.percentile(method, 0.5), phase.percentile(method, 0.99)
            ratio = p99 / alone.percentile(method, 0.99)
            worst = max(worst, ratio)
            parts.append(
                f"{method} p50 {p50:6.2f} ms p99 {p99:7.2f} ms (p99 x{ratio:.2f}, "
                f"{len(phase.latencies[method])} calls)"
            )
        print(f"  {phase.name:28}  " + "   ".join(parts))
    print(f"  worst p99 ratio under abuse: {worst:.2f} (target <= 2)")
    for phase in phases[1::2]:
        tally = phase.abuse
        if tally is None:
            continue
        print(f"  {phase.name}:")
        if tally.opened:
            print(f"    held open by the hub: {tally.opened}")
        for outcome, count in sorted(tally.outcomes.items()):
            print(f"    {outcome}: {count}")
        if tally.refused_sequences:
            found, reasons = entries_recorded(database, tally.refused_sequences)
            listed = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
            print(
                f"    refusal entries found in the hub's ledger: {found} of "
                f"{len(tally.refused_sequences)} ({listed})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--flood-channels", type=int, default=16)
    parser.add_argument("--followers", type=int, default=2000)
    parser.add_argument("--follow-channels", type=int, default=16)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument(
        "--streams-per-department",
        type=int,
        default=None,
        help="raise the hub's stream limits (per department, per certificate and per hub) to "
        "hold every follower open, to measure the fan-out itself",
    )
    args = parser.parse_args()
    soft, hard = raise_descriptor_limit()
    print(f"file descriptors: soft limit {soft} (hard {hard}) in this process and its children")
    limits = LimitsConfig()
    if args.streams_per_department:
        n = args.streams_per_department
        limits = dataclasses.replace(
            limits, streams_per_department=n, streams_per_certificate=n, streams=max(n, 256)
        )
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{tmp}/exchange.db"
        store = Keystore(Path(tmp) / "keys")
        store.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
        store.add_department(OWNER, server_names=("localhost", "127.0.0.1"))
        for department in (CONSUMER, FLOODER, AUDITOR):
            store.add_department(department)
        ports = context.Queue()
        processes = []
        hub_log = Path(tmp) / "hub.log"
        try:
            provider = context.Process(target=run_echo, args=(str(store.root), ports), daemon=True)
            provider.start()
            processes.append(provider)
            os.environ["BENCH_PROVIDER"] = f"127.0.0.1:{ports.get(timeout=60)}"
            config = Config(
                hub_id=HUB_ID,
                listen="127.0.0.1:0",
                database_url=database,
                keys_dir=store.root,
                limits=limits,
            )
            hub = context.Process(
                target=run_hub,
                args=(config, str(hub_log), str(Path(tmp) / "lock.stats"), ports),
                daemon=True,
            )
            hub.start()
            processes.append(hub)
            target = f"127.0.0.1:{ports.get(timeout=60)}"
            phases = asyncio.run(run(store, target, args, context))
        except BaseException:
            if hub_log.exists():
                print("hub log (last lines):", *hub_log.read_text().splitlines()[-20:], sep="\n")
            raise
        finally:
            for process in processes:
                process.terminate()
                process.join(5)
        report(phases, database, args, limits)
        if os.environ.get("BENCH_KEEP_LOG"):
            Path(os.environ["BENCH_KEEP_LOG"]).write_text(hub_log.read_text())
        failed = hub_log.read_text().count('"call_failed"')
        print(f"  hub log: {failed} call_failed (INTERNAL) events")


if __name__ == "__main__":
    main()
