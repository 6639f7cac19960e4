"""Routing benchmark: Request through the hub vs. a bare gRPC relay doing the same two hops.

Both paths end at the same echo Provider (in its own process, mTLS, answering every Fetch with a
MaterialRecord of the same fields, signed with the department's key, bound to the request id):

- hub:   consumer -> hub (mTLS, envelope signature, key validity, replay window, request-id
         claim, catalog + grant + purpose + rate checks, index lookup, hub-signed FetchRequest,
         provider signature and field-hash checks, one ledger entry, receipt) -> echo provider;
- relay: consumer -> relay (mTLS, forwards the envelope bytes unchanged, returns the answer
         bytes) -> echo provider.

Same payload size, same concurrency, each server in its own process; the consumer signs a fresh
envelope per call on both paths. Prints throughput and p50/p99 latency of each and the ratios.

Run: python bench/routing.py [--seconds 10] [--concurrency 32] [--database-url URL]
Targets: hub throughput >= 0.6 x relay; hub p99 <= 2 x relay p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from adapters.client import HubClient, Identity
from exchange.api.server import HubServer
from exchange.clock import now_us, to_timestamp
from exchange.config import Config
from exchange.crypto.envelope import sign
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

HUB_ID = "hub"
OWNER = "js.nj.civil-affairs"
CONSUMER = "js.nj.social-security"
MATERIAL = "marriage-record"
PURPOSE = "social-assistance"
SUBJECT = "990101199001010011"
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


def run_relay(keys_dir: str, provider_port: int, ports: Any) -> None:
    """The bare relay: forwards envelope bytes to the echo provider and answers its bytes."""
    store = Keystore(Path(keys_dir))
    tls = store.operator_tls()

    async def start() -> tuple[int, Any]:
        upstream = grpc.aio.secure_channel(
            f"127.0.0.1:{provider_port}",
            grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate),
        )
        forward = upstream.unary_unary("/exchange.v1.Provider/Fetch")

        async def relay(request: bytes, context: Any) -> bytes:
            answer: bytes = await forward(request, timeout=context.time_remaining())
            return answer

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(relay)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("exchange.v1.Exchange", {"Request": handler})]
        )
        port = server.add_secure_port("127.0.0.1:0", _tls_server(store, None))
        await server.start()
        return port, server.stop

    _serve_forever(start, ports)


def run_hub(config: Config, ports: Any) -> None:
    """The hub, as `exchange serve` runs it (structured logs off: they would dominate)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def start() -> tuple[int, Any]:
        server = HubServer(config)
        port = await server.start()
        return port, server.stop

    _serve_forever(start, ports)


# ----------------------------------------------------------------------------- load


@dataclasses.dataclass
class Result:
    name: str
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def load(name: str, client: HubClient, seconds: float, concurrency: int) -> Result:
    """Call Exchange/Request from ``concurrency`` workers for ``seconds``; time every call."""
    method = "/exchange.v1.Exchange/Request"

    async def one() -> float:
        body = exchange_pb2.MaterialRequest(
            material_type=MATERIAL, subject_id=SUBJECT, purpose=PURPOSE, fields=list(FIELDS)
        )
        if name == "relay":
            # Same envelope size as the hub path: a signed FetchRequest naming the same fields.
            body = provider_pb2.FetchRequest(  # type: ignore[assignment]
                material_type=MATERIAL, subject_id=SUBJECT, purpose=PURPOSE, fields=list(FIELDS)
            )
        started = time.perf_counter()
        await client.call(method, body, provider_pb2.FetchResponse, timeout=10)  # type: ignore[arg-type]
        return time.perf_counter() - started

    for _ in range(100):  # warm up: connections, caches
        await one()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, len(latencies), time.perf_counter() - started, latencies)


async def setup_hub(target: str, store: Keystore) -> None:
    """Register the owner and the consumer, catalogue the type, publish the holding, grant."""
    operator = HubClient(
        target,
        Identity(HUB_ID, store.hub_signing_key(), store.operator_tls()),
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
            await operator.call(
                "/exchange.v1.Registry/RegisterDepartment",
                registry_pb2.RegisterDepartmentRequest(
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
                ),
                registry_pb2.DepartmentResponse,
            )
        await operator.call(
            "/exchange.v1.Catalog/DefinePurpose",
            catalog_pb2.DefinePurposeRequest(
                purpose=catalog_pb2.Purpose(id=PURPOSE, name="assistance", legal_basis="bench")
            ),
            catalog_pb2.PurposeResponse,
        )
        await owner.call(
            "/exchange.v1.Catalog/PublishMaterialType",
            catalog_pb2.PublishMaterialTypeRequest(
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
            ),
            catalog_pb2.MaterialTypeResponse,
        )
        await owner.call(
            "/exchange.v1.Exchange/PublishHoldings",
            exchange_pb2.PublishHoldingsRequest(
                material_type=MATERIAL,
                holdings=[exchange_pb2.Holding(subject_id=SUBJECT, fields=FIELDS)],
            ),
            exchange_pb2.PublishHoldingsResponse,
        )
        await owner.call(
            "/exchange.v1.Grants/IssueGrant",
            grants_pb2.IssueGrantRequest(
                grant=grants_pb2.Grant(
                    consumer=CONSUMER,
                    material_type=MATERIAL,
                    fields=list(FIELDS),
                    purposes=[PURPOSE],
                )
            ),
            grants_pb2.GrantResponse,
        )
    finally:
        await operator.close()
        await owner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="hub database (default: SQLite)")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = Keystore(Path(tmp) / "keys")
        store.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
        store.add_department(OWNER, server_names=("localhost", "127.0.0.1"))
        store.add_department(CONSUMER)
        ports = context.Queue()
        processes = []

        def spawn(target: Any, *extra: Any) -> int:
            process = context.Process(target=target, args=(*extra, ports), daemon=True)
            process.start()
            processes.append(process)
            return int(ports.get(timeout=60))

        try:
            provider_port = spawn(run_echo, str(store.root))
            relay_port = spawn(run_relay, str(store.root), provider_port)
            os.environ["BENCH_PROVIDER"] = f"127.0.0.1:{provider_port}"
            config = Config(
                hub_id=HUB_ID,
                listen="127.0.0.1:0",
                database_url=args.database_url or f"sqlite:///{tmp}/exchange.db",
                keys_dir=store.root,
            )
            hub_port = spawn(run_hub, config)
            results = asyncio.run(run(store, hub_port, relay_port, args))
        finally:
            for process in processes:
                process.terminate()
                process.join(5)
    relay, hub = results
    print(
        f"machine: {os.cpu_count()} cores; {args.concurrency} concurrent callers, "
        f"{args.seconds:.0f} s per path; hub database "
        f"{'SQLite' if not args.database_url else args.database_url.split('://')[0]}"
    )
    for result in (relay, hub):
        print(
            f"  {result.name:5}: {result.throughput:8,.0f} req/s   "
            f"p50 {result.percentile(0.5):6.2f} ms"
            f"   p99 {result.percentile(0.99):6.2f} ms   ({result.calls} calls)"
        )
    print(f"  ratio throughput hub/relay: {hub.throughput / relay.throughput:.2f} (target >= 0.6)")
    print(
        f"  ratio p99 hub/relay: {hub.percentile(0.99) / relay.percentile(0.99):.2f} "
        "(target <= 2.0)"
    )


async def run(store: Keystore, hub_port: int, relay_port: int, args: Any) -> tuple[Result, Result]:
    await setup_hub(f"127.0.0.1:{hub_port}", store)
    identity = Identity(
        CONSUMER, store.department_signing_key(CONSUMER), store.department_tls(CONSUMER)
    )
    async with HubClient(
        f"127.0.0.1:{relay_port}", identity, server_name="localhost", retries=0
    ) as relay_client:
        relay = await load("relay", relay_client, args.seconds, args.concurrency)
    async with HubClient(
        f"127.0.0.1:{hub_port}", identity, server_name="localhost", retries=0
    ) as hub_client:
        hub = await load("hub", hub_client, args.seconds, args.concurrency)
    return relay, hub


if __name__ == "__main__":
    main()
