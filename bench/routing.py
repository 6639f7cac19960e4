"""Routing benchmark: Request through the hub vs. a bare gRPC relay doing the same two hops.

All paths end at the same echo Provider (in its own process, mTLS, answering every Fetch with a
MaterialRecord of the same fields, signed with the department's key, bound to the request id):

- hub:   consumer -> hub (mTLS, envelope signature, key validity, replay window, request-id
         claim, catalog + grant + purpose + rate checks, index lookup, hub-signed FetchRequest,
         provider signature and field-hash checks, one ledger entry, receipt, one JSON log line)
         -> echo provider, configured as `exchange serve` runs it;
- relay: consumer -> relay (mTLS, forwards the envelope bytes unchanged, returns the answer
         bytes) -> echo provider;
- floor: consumer -> a relay that does only the signature work the contract asks of any hub on
         this path (checks the caller's envelope signature, signs the forwarded FetchRequest
         with the hub key, checks the holder's signature on the answer) -> echo provider. No
         policy, no index, no ledger: what is left of the relay's throughput once the
         signatures alone are paid, an upper bound for any hub that honours the contract.

Nearly the same payload sizes (a signed request naming the same three fields on every path;
the hub's is about 75 bytes larger with its disclosure, its forwarded request about 50 bytes
larger, and its answer carries a receipt), the same concurrency, each server in its own
process; the consumer signs a fresh envelope per call on every path. The order of the three
paths turns from round to round, so that a machine drifting within a round favours none.
Prints throughput and p50/p99 latency of each and the ratios to the relay, then the CPU time
each process spends per call (Linux), which shows where the gap is.

With ``--hubs N`` (N >= 2, PostgreSQL only) N hub processes serve one database and a fourth
path, ``hubs``, spreads the same callers over all of them, interleaved with the others; the
``hub`` path uses the first alone. For each hub path the benchmark also prints the ledger's
head lock: how long it was held per batch (every hub process together) and the entries per
second the chain could take with the lock held back to back at that cost (docs/operations.md,
"Several hubs").

Run: python bench/routing.py [--seconds 10] [--concurrency 32] [--repeat 3] [--database-url URL]
     [--hubs N]
Targets: hub throughput >= 0.6 x relay; hub p99 <= 2 x relay p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from adapters.client import HubClient, Identity
from exchange import logs
from exchange.api.server import HubServer, freeze_startup_heap
from exchange.clock import now_us, to_timestamp
from exchange.config import Config
from exchange.crypto.envelope import sign, verify
from exchange.crypto.keystore import Keystore
from exchange.v1 import (
    catalog_pb2,
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    grants_pb2,
    provider_pb2,
    registry_pb2,
)
from tests.postgres import scratch_postgres

HUB_ID = "hub"
OWNER = "js.nj.civil-affairs"
CONSUMER = "js.nj.social-security"
MATERIAL = "marriage-record"
PURPOSE = "social-assistance"
SUBJECT = "990101199001010019"
FIELDS = {
    "marital_status": "married",
    "spouse_name": "李四 (demo)",
    "registered_on": "2018-05-20",
}
MATERIAL_RECORD = exchange_pb2.MaterialRecord.DESCRIPTOR.full_name


# ----------------------------------------------------------------------------- servers


def _serve_forever(start: Any, ports: Any) -> None:
    async def main() -> None:
        port, stop = await start()
        ports.put(port)
        await asyncio.Event().wait()
        await stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _tls_server(store: Keystore, department: str | None) -> grpc.ServerCredentials:
    tls = store.department_tls(department) if department else store.hub_server_tls()
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
    )


def run_echo(keys_dir: str, ports: Any) -> None:
    """The echo Provider: answers Fetch with the named fields, signed by the owner."""
    store = Keystore(Path(keys_dir))
    key = store.department_signing_key(OWNER)

    async def fetch(request: bytes, context: Any) -> bytes:
        envelope = envelope_pb2.Envelope.FromString(request)
        body = provider_pb2.FetchRequest.FromString(envelope.payload)
        record = exchange_pb2.MaterialRecord(
            material_type=body.material_type,
            subject_id=body.subject_id,
            reference=body.reference,
            version=body.version,
            fields={name: FIELDS[name] for name in body.fields if name in FIELDS},
            request_id=body.header.request_id,
            holder=OWNER,
            issued_at=to_timestamp(now_us()),
        )
        signed = sign(record.SerializeToString(deterministic=True), MATERIAL_RECORD, key)
        return provider_pb2.FetchResponse(found=True, material=signed).SerializeToString()

    async def start() -> tuple[int, Any]:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(fetch)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("exchange.v1.Provider", {"Fetch": handler})]
        )
        port = server.add_secure_port("127.0.0.1:0", _tls_server(store, OWNER))
        await server.start()
        return port, server.stop

    _serve_forever(start, ports)


Forward = Any  # an upstream multi-callable: (request bytes, timeout=) -> awaitable answer bytes


def _serve_relay(
    keys_dir: str,
    provider_port: int,
    ports: Any,
    handle: Callable[[Forward], Callable[[bytes, Any], Awaitable[bytes]]],
) -> None:
    """Serve Exchange/Request over mTLS with ``handle(forward)``, where ``forward`` calls the
    echo provider's Fetch with the operator's client certificate."""
    store = Keystore(Path(keys_dir))
    tls = store.operator_tls()

    async def start() -> tuple[int, Any]:
        upstream = grpc.aio.secure_channel(
            f"127.0.0.1:{provider_port}",
            grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate),
        )
        forward = upstream.unary_unary("/exchange.v1.Provider/Fetch")  # type: ignore[call-arg]
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(handle(forward))
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("exchange.v1.Exchange", {"Request": handler})]
        )
        port = server.add_secure_port("127.0.0.1:0", _tls_server(store, None))
        await server.start()
        return port, server.stop

    _serve_forever(start, ports)


def run_relay(keys_dir: str, provider_port: int, ports: Any) -> None:
    """The bare relay: forwards envelope bytes to the echo provider and answers its bytes."""

    def handle(forward: Forward) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def relay(request: bytes, context: Any) -> bytes:
            answer: bytes = await forward(request, timeout=context.time_remaining())
            return answer

        return relay

    _serve_relay(keys_dir, provider_port, ports, handle)


def run_floor(keys_dir: str, provider_port: int, ports: Any) -> None:
    """The floor: a relay that checks the caller's signature, signs the forwarded request with
    the hub key and checks the holder's signature on the answer, and does nothing else."""
    store = Keystore(Path(keys_dir))
    hub_key = store.hub_signing_key()
    known = {
        key.keyid: key.public_bytes
        for key in (store.department_signing_key(CONSUMER), store.department_signing_key(OWNER))
    }

    def handle(forward: Forward) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def relay(request: bytes, context: Any) -> bytes:
            envelope = envelope_pb2.Envelope.FromString(request)
            verify(envelope, known.get)
            body = provider_pb2.FetchRequest.FromString(envelope.payload)
            body.header.department_id = HUB_ID
            payload = body.SerializeToString(deterministic=True)
            signed = sign(payload, envelope.payload_type, hub_key)
            answer: bytes = await forward(
                signed.SerializeToString(), timeout=context.time_remaining()
            )
            verify(provider_pb2.FetchResponse.FromString(answer).material, known.get)
            return answer

        return relay

    _serve_relay(keys_dir, provider_port, ports, handle)


def run_hub(config: Config, log_file: str, stats_file: str, ports: Any) -> None:
    """The hub, as `exchange serve` runs it: its log (one JSON line per call) goes to
    ``log_file``; its ledger's head-lock figures are written to ``stats_file`` every 0.2 s."""
    sys.stderr = open(log_file, "w")  # noqa: SIM115 (the process's stderr until it exits)
    logs.configure(config.log_level, config.log_format)

    async def start() -> tuple[int, Any]:
        server = HubServer(config)
        port = await server.start()
        freeze_startup_heap()
        asyncio.get_running_loop().create_task(_write_lock_stats(server, Path(stats_file)))
        return port, server.stop

    _serve_forever(start, ports)


async def _write_lock_stats(server: HubServer, path: Path) -> None:
    while True:
        stats = server.hub.ledger.lock_stats
        written = path.with_suffix(".tmp")  # replaced whole: the reader never sees it half done
        written.write_text(f"{stats.batches} {stats.entries} {stats.seconds!r} {stats.guards!r}")
        written.replace(path)
        await asyncio.sleep(0.2)


Held = tuple[int, int, float, float]  # batches, entries, seconds held, of which in guards


def read_lock_stats(paths: list[Path]) -> Held:
    """The head lock's figures, summed over the hub processes."""
    batches = entries = 0
    seconds = guards = 0.0
    for path in paths:
        b, e, s, g = path.read_text().split()
        batches, entries = batches + int(b), entries + int(e)
        seconds, guards = seconds + float(s), guards + float(g)
    return batches, entries, seconds, guards


# ----------------------------------------------------------------------------- load


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Result:
    name: str
    calls: int
    seconds: float
    latencies: list[float]
    cpu_ms_per_call: dict[str, float] = dataclasses.field(default_factory=dict)
    # The head lock during the load (hub paths only).
    lock: Held | None = None

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def load(
    name: str,
    clients: list[HubClient],
    seconds: float,
    concurrency: int,
    pids: dict[str, int],
    lock_files: list[Path] = [],  # noqa: B006 (never mutated)
) -> Result:
    """Call Exchange/Request from ``concurrency`` workers for ``seconds`` (worker i through
    ``clients[i % len(clients)]``); time every call, and measure the CPU time each process in
    ``pids`` spends per call and the head lock's hold time in the hubs of ``lock_files``."""
    method = "/exchange.v1.Exchange/Request"

    async def one(client: HubClient) -> float:
        body = exchange_pb2.MaterialRequest(
            material_type=MATERIAL, subject_id=SUBJECT, purpose=PURPOSE, fields=list(FIELDS)
        )
        if name not in ("hub", "hubs"):
            # A signed FetchRequest naming the same fields: close to the hub path's envelope.
            body = provider_pb2.FetchRequest(  # type: ignore[assignment]
                material_type=MATERIAL, subject_id=SUBJECT, purpose=PURPOSE, fields=list(FIELDS)
            )
        started = time.perf_counter()
        await client.call(method, body, provider_pb2.FetchResponse, timeout=10)
        return time.perf_counter() - started

    for index in range(100):  # warm up: connections, caches
        await one(clients[index % len(clients)])
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: HubClient) -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one(client))

    await asyncio.sleep(0.3)  # the stats files are fresh
    locked = read_lock_stats(lock_files) if lock_files else None
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    result = Result(name, len(latencies), time.perf_counter() - started, latencies)
    if locked is not None:
        await asyncio.sleep(0.3)
        after = read_lock_stats(lock_files)
        result.lock = (
            after[0] - locked[0],
            after[1] - locked[1],
            after[2] - locked[2],
            after[3] - locked[3],
        )
    for role, pid in pids.items():
        after, earlier = cpu_seconds(pid), before[role]
        if after is not None and earlier is not None and result.calls:
            result.cpu_ms_per_call[role] = (after - earlier) / result.calls * 1000
    return result


async def setup_hub(target: str, store: Keystore) -> None:
    """Register the owner and the consumer, catalogue the type, publish the holding, grant."""
    operator = HubClient(
        target,
        Identity(HUB_ID, store.operator_signing_key(), store.operator_tls()),
        server_name="localhost",
    )
    owner = HubClient(
        target,
        Identity(OWNER, store.department_signing_key(OWNER), store.department_tls(OWNER)),
        server_name="localhost",
    )
    try:
        for department, roles, endpoint in (
            (OWNER, [common_pb2.PROVIDER], os.environ["BENCH_PROVIDER"]),
            (CONSUMER, [common_pb2.CONSUMER], ""),
        ):
            await operator.register_department(
                department=registry_pb2.Department(
                    id=department,
                    name=department,
                    roles=roles,
                    provider_endpoint=endpoint,
                    keys=[
                        registry_pb2.DepartmentKey(
                            public_key=store.department_signing_key(department).public_bytes
                        )
                    ],
                )
            )
        await operator.define_purpose(
            purpose=catalog_pb2.Purpose(id=PURPOSE, name="assistance", legal_basis="bench")
        )
        await owner.publish_material_type(
            material_type=catalog_pb2.MaterialType(
                id=MATERIAL,
                name="Marriage record",
                sharing_class=catalog_pb2.CONDITIONAL,
                fields=[
                    catalog_pb2.FieldSpec(name="marital_status", type=catalog_pb2.STRING),
                    catalog_pb2.FieldSpec(name="spouse_name", type=catalog_pb2.STRING),
                    catalog_pb2.FieldSpec(name="registered_on", type=catalog_pb2.DATE),
                ],
            )
        )
        await owner.call(
            "/exchange.v1.Exchange/PublishHoldings",
            exchange_pb2.PublishHoldingsRequest(
                material_type=MATERIAL,
                holdings=[exchange_pb2.Holding(subject_id=SUBJECT, fields=FIELDS)],
            ),
            exchange_pb2.PublishHoldingsResponse,
        )
        await owner.issue_grant(
            grant=grants_pb2.Grant(
                consumer=CONSUMER,
                material_type=MATERIAL,
                fields=list(FIELDS),
                purposes=[PURPOSE],
            )
        )
    finally:
        await operator.close()
        await owner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved (relay, floor, hub) rounds"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server for the hub (a database is created there for the run and "
        "dropped after; the URL's role must be allowed to create databases); default: SQLite",
    )
    parser.add_argument(
        "--hubs",
        type=int,
        default=1,
        help="hub processes on the one database (PostgreSQL): adds the path 'hubs', the same "
        "callers spread over all of them",
    )
    args = parser.parse_args()
    if args.hubs > 1 and not args.database_url:
        parser.error("--hubs needs --database-url (several hubs share a PostgreSQL database)")
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as scope:
        tmp = scope.enter_context(tempfile.TemporaryDirectory())
        database_url = f"sqlite:///{tmp}/exchange.db"
        if args.database_url:
            database_url = scope.enter_context(scratch_postgres(args.database_url, "bench_routing"))
        store = Keystore(Path(tmp) / "keys")
        store.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
        store.add_department(OWNER, server_names=("localhost", "127.0.0.1"))
        store.add_department(CONSUMER)
        ports = context.Queue()
        processes = []

        pids: dict[str, int] = {"client": os.getpid()}

        def spawn(role: str, target: Any, *extra: Any) -> int:
            process = context.Process(target=target, args=(*extra, ports), daemon=True)
            process.start()
            processes.append(process)
            pids[role] = process.pid or 0
            return int(ports.get(timeout=60))

        try:
            provider_port = spawn("provider", run_echo, str(store.root))
            targets = {
                "relay": spawn("relay", run_relay, str(store.root), provider_port),
                "floor": spawn("floor", run_floor, str(store.root), provider_port),
            }
            os.environ["BENCH_PROVIDER"] = f"127.0.0.1:{provider_port}"
            config = Config(
                hub_id=HUB_ID,
                listen="127.0.0.1:0",
                database_url=database_url,
                keys_dir=store.root,
            )
            hub_log = Path(tmp) / "hub.log"
            lock_files = [Path(tmp) / f"lock{i}.txt" for i in range(args.hubs)]
            try:
                targets["hub"] = spawn("hub", run_hub, config, str(hub_log), str(lock_files[0]))
                for number in range(1, args.hubs):
                    log_file = str(Path(tmp) / f"hub{number}.log")
                    targets[f"hub{number}"] = spawn(
                        f"hub{number}", run_hub, config, log_file, str(lock_files[number])
                    )
                rounds = asyncio.run(run(store, targets, args, pids, lock_files))
            except BaseException:
                # The hub's log (a startup failure, an incident's traceback) goes with tmp.
                if hub_log.exists():
                    print(
                        "hub log (last lines):", *hub_log.read_text().splitlines()[-20:], sep="\n"
                    )
                raise
        finally:
            for process in processes:
                process.terminate()
                process.join(5)
    report(rounds, args)


def report(rounds: list[dict[str, Result]], args: Any) -> None:
    """Print every path of every round, the ratios to the relay (median of rounds) and the CPU
    each process spends per call in the middle round."""
    print(
        f"machine: {os.cpu_count()} cores; {args.concurrency} concurrent callers, "
        f"{args.seconds:.0f} s per path, {len(rounds)} interleaved rounds; hub database "
        f"{'SQLite' if not args.database_url else args.database_url.split('://')[0]}"
    )
    for results in rounds:
        for result in results.values():
            print(
                f"  {result.name:5}: {result.throughput:8,.0f} req/s   "
                f"p50 {result.percentile(0.5):6.2f} ms"
                f"   p99 {result.percentile(0.99):6.2f} ms   ({result.calls} calls)"
            )

    def ratios(path: str) -> tuple[list[float], list[float]]:
        throughput = [r[path].throughput / r["relay"].throughput for r in rounds]
        p99 = [r[path].percentile(0.99) / r["relay"].percentile(0.99) for r in rounds]
        return throughput, p99

    def line(what: str, values: list[float], target: str) -> None:
        listed = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {what} (median of rounds): {statistics.median(values):.2f} [{listed}]{target}")

    throughput, p99 = ratios("hub")
    line("ratio throughput hub/relay", throughput, " (target >= 0.6)")
    if "hubs" in rounds[0]:
        scaling = [r["hubs"].throughput / r["hub"].throughput for r in rounds]
        line(f"ratio throughput {args.hubs} hubs/1 hub", scaling, "")
    for path in ("hub", "hubs"):
        held = [r[path].lock for r in rounds if path in r and r[path].lock]
        batches = sum(h[0] for h in held)
        entries = sum(h[1] for h in held)
        seconds = sum(h[2] for h in held)
        guards = sum(h[3] for h in held)
        if batches and seconds:
            print(
                f"  head lock ({path}): {batches} batches of {entries / batches:.1f} entries, "
                f"held {seconds / batches * 1000:.3f} ms per batch, of which guards "
                f"{guards / batches * 1000:.3f} ms ({seconds / entries * 1e6:.1f} us per "
                f"entry): a ceiling of {entries / seconds:,.0f} entries/s at this batch size"
            )
    line("ratio p99 hub/relay", p99, " (target <= 2.0)")
    throughput, p99 = ratios("floor")
    line("ratio throughput floor/relay", throughput, " (signatures only: the ceiling)")
    line("ratio p99 floor/relay", p99, "")
    middle = rounds[len(rounds) // 2]
    if all(result.cpu_ms_per_call for result in middle.values()):
        # Where the time goes: the processes share the machine's cores, so CPU per call bounds
        # throughput once they are busy; it is also steadier than req/s on a noisy VM.
        print("CPU per call (user + system, ms; middle round):")
        for result in middle.values():
            parts = "   ".join(f"{role} {ms:.2f}" for role, ms in result.cpu_ms_per_call.items())
            total = sum(result.cpu_ms_per_call.values())
            print(f"  {result.name:5}: {parts}   all {total:.2f}")
        relay_ms = max(middle["relay"].cpu_ms_per_call["relay"], 1e-9)
        for path in ("floor", "hub"):
            ms = middle[path].cpu_ms_per_call.get(path, 0.0)
            print(f"  {path} process / relay process: {ms / relay_ms:.1f}x")


async def run(
    store: Keystore,
    targets: dict[str, int],
    args: Any,
    pids: dict[str, int],
    lock_files: list[Path],
) -> list[dict[str, Result]]:
    """Load the relay, the floor and the hub in turn, each round starting with the next one,
    ``args.repeat`` times (interleaved, so a machine that speeds up or slows down during the run
    affects every path alike)."""
    await setup_hub(f"127.0.0.1:{targets['hub']}", store)
    identity = Identity(
        CONSUMER, store.department_signing_key(CONSUMER), store.department_tls(CONSUMER)
    )
    rounds: list[dict[str, Result]] = []
    async with contextlib.AsyncExitStack() as scope:
        clients = {
            path: await scope.enter_async_context(
                HubClient(f"127.0.0.1:{port}", identity, server_name="localhost", retries=0)
            )
            for path, port in targets.items()
        }
        hubs = ["hub", *(f"hub{number}" for number in range(1, args.hubs))]
        routes = {"relay": ["relay"], "floor": ["floor"], "hub": ["hub"], "hubs": hubs}
        paths = ["relay", "floor", "hub", *(["hubs"] if args.hubs > 1 else [])]
        for round_number in range(args.repeat):
            results: dict[str, Result] = {}
            turn = round_number % len(paths)
            for path in paths[turn:] + paths[:turn]:
                results[path] = await load(
                    path,
                    [clients[target] for target in routes[path]],
                    args.seconds,
                    args.concurrency,
                    {role: pids[role] for role in ("client", *routes[path], "provider")},
                    lock_files if path in ("hub", "hubs") else [],
                )
            rounds.append({path: results[path] for path in paths})
    return rounds


if __name__ == "__main__":
    main()
