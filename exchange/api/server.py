"""The hub process: a grpc.aio server with mTLS, health checking and reflection.

Shutdown (SIGTERM/SIGINT), in this order: health (gRPC health and /readyz) turns NOT_SERVING;
calls that have not started are answered UNAVAILABLE ``SHUTTING_DOWN`` with a RetryInfo; calls in
flight get ``shutdown_grace_seconds`` to finish, and one still running after it is answered
UNAVAILABLE ``SHUTTING_DOWN`` too (exchange.api.drain); no caller gets CANCELLED from the hub.
Then gRPC stops, the request log and the ledger are flushed and closed (final checkpoint), exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from exchange.api.connections import (
    connection_cap,
    raise_descriptor_limit,
    reserved_descriptors,
    server_options,
)
from exchange.api.drain import Drain
from exchange.api.pipeline import Pipeline
from exchange.api.services import SERVICES, handlers
from exchange.config import Config
from exchange.crypto.keystore import Keystore
from exchange.hub import Hub
from exchange.observability import runtime as observability
from exchange.observability import tracing
from exchange.rpc.ports import SERVER_OPTIONS, bind
from exchange.store.engines import HELD_SQLITE_CONNECTIONS

log = structlog.get_logger("exchange.server")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
WORKER_THREADS = 32
# Shutdown: the longest wait for callers to stop sending once the grace is spent, and what gRPC
# gets to end what is left (nothing runs by then: exchange.api.drain answered every call).
QUIET_LIMIT = 1.0
STOP_SECONDS = 1.0


def server_credentials(config: Config) -> grpc.ServerCredentials:
    """mTLS credentials from the keystore: a client certificate from the trusted CA is required.

    gRPC-Python can only require a client certificate or not ask for one at all (there is no
    "request but do not require"), so a caller without a certificate is refused during the TLS
    handshake: it sees UNAVAILABLE with the handshake failure, and no call reaches the hub.
    The pipeline still checks the certificate on every call (NO_CLIENT_CERTIFICATE,
    CERTIFICATE_MISMATCH). Raises KeyFileError for missing or unsafe files.
    """
    identity = Keystore(config.keys_dir).hub_server_tls()
    return grpc.ssl_server_credentials(
        [(identity.private_key, identity.certificate)],
        root_certificates=identity.ca,
        require_client_auth=True,
    )


def connection_limit(config: Config, hub: Hub) -> int:
    """Raise the process's descriptor limit as far as allowed and return how many connections
    the hub may accept within it (exchange.api.connections)."""
    sqlite = hub.engine.dialect.name == "sqlite"
    pools = 2 * HELD_SQLITE_CONNECTIONS  # the hub's engine and its write-behind engine
    reserved = reserved_descriptors(pools + WORKER_THREADS, sqlite)
    return connection_cap(config.limits, raise_descriptor_limit(), reserved)


class HubServer:
    """A running hub: start, wait, stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        tracing.configure(config.otlp_endpoint)  # before the handlers: they trace if it is on
        self.hub = Hub.open(config)
        self.max_connections = connection_limit(config, self.hub)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                *SERVER_OPTIONS,  # a port in use is refused, never shared
                *server_options(config.limits, self.max_connections),
            ]
        )
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.serving = False
        self.observability = observability.Observability()
        self.pipeline = pipeline = Pipeline(self.hub)
        self.drain = Drain()
        tracing.instrument(self.hub, pipeline)
        self.service_names = [name for name, _ in SERVICES]
        self.server.add_generic_rpc_handlers(
            [handlers(name, methods, pipeline, self.drain) for name, methods in SERVICES]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            [*self.service_names, health_name, reflection.SERVICE_NAME], self.server
        )

    async def start(self) -> int:
        """Open the ledger, bind and start serving; return the bound port.

        Raises exchange.rpc.ports.AddressInUse if the address is taken (before anything started).
        """
        # Blocking work (SQL, signature checks) runs in worker threads; the default pool of
        # cores + 4 threads would cap concurrent calls at the number of threads waiting on I/O.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="hub-worker")
        )
        # Bound before anything starts: a second process on a taken address stops here.
        if self.config.insecure:
            log.warning(
                "insecure_mode",
                message="serving WITHOUT TLS: callers are unauthenticated; never in production",
            )
            self.port = bind(self.server, self.config.listen, None)
        else:
            self.port = bind(self.server, self.config.listen, server_credentials(self.config))
        await self.hub.start()
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        self.observability = await observability.start(self.config, self.hub, self.is_serving)
        log.info(
            "serving",
            listen=self.config.listen,
            port=self.port,
            tls=not self.config.insecure,
            max_connections=self.max_connections,
        )
        # Auditors pin this key (docs/ledger.md); `exchange keys verifier` prints it too.
        log.info(
            "hub_verifier_key",
            verifier_key=self.hub.ledger.verifier_key,
            operator_keys=[k.public_key.hex() for k in self.hub.operator_keys.all()],
        )
        return self.port

    def is_serving(self) -> bool:
        """Whether calls are served (readiness): started and not shutting down."""
        return self.serving

    async def stop(self, grace: float | None = None) -> None:
        """Turn new calls away (UNAVAILABLE SHUTTING_DOWN), let in-flight ones finish within
        ``grace`` seconds (default ``shutdown_grace_seconds``), answer those still running
        UNAVAILABLE SHUTTING_DOWN, stop gRPC, flush and close the request log and the ledger.
        A second call returns at once."""
        if self.drain.closed:
            return  # stopped already (or stopping)
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        started = time.monotonic()
        self.serving = False  # /readyz answers 503 from now on
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        self.drain.close()
        running = len(self.drain.running)
        if not await self.drain.drained(grace):
            cut = await self.drain.expire()
            log.warning("shutdown_grace_over", calls_cut=cut, grace_seconds=grace)
        # gRPC's stop ends calls it holds but has not handed over, with no reason that says
        # to retry: stop it once callers turned away are waiting out their RetryInfo.
        await self.drain.quiet(limit=max(grace - (time.monotonic() - started), QUIET_LIMIT))
        await self.server.stop(STOP_SECONDS)
        await self.observability.stop()
        await self.hub.close()
        log.info("stopped", calls_at_signal=running)


def freeze_startup_heap() -> int:
    """Leave what the process holds once it serves out of every later garbage collection;
    return how many objects that is.

    A serving hub holds about 90,000 long-lived objects the collector tracks (grpc, protobuf,
    SQLAlchemy, its caches). A full collection walks all of them: under bench/routing.py's load
    that paused the event loop for 50–75 ms a few times in 10 s, and set the hub's p99. Frozen
    (after collecting what is already garbage), a full collection walks only what was made
    since: at most 1.5 ms in the same run. Objects freed by reference counting are still freed;
    a reference cycle that includes a frozen object is never collected, with what it holds (at
    most what the process held at start).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(config: Config) -> None:
    """Run the hub until SIGTERM or SIGINT, then shut down gracefully."""
    hub_server = HubServer(config)
    await hub_server.start()
    log.info("heap_frozen", objects=freeze_startup_heap())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down", grace_seconds=config.shutdown_grace_seconds)
    await hub_server.stop()
