"""The monitors' listener: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

Plain HTTP on its own address (``metrics_listen``; off by default, loopback in the examples), so
that Prometheus and a load balancer's or orchestrator's probes need no client certificate. It
serves these three paths and nothing else: no hub data, no configuration, no version.

- ``/healthz`` (liveness): 200 ``ok`` while the process's event loop answers.
- ``/readyz`` (readiness): 200 ``ready`` when the hub serves calls and its database answers
  now; 503 ``not ready`` while starting, shutting down, or with the database down.
- ``/metrics``: the event metrics and this hub's gauges (exchange.observability.metrics).

A minimal HTTP/1.1 server on asyncio streams rather than a framework: three fixed GET routes,
one request per connection, no body to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from exchange.config import ConfigError

log = structlog.get_logger("exchange.observability")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0


def split_address(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as (host, port). Raises ConfigError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"metrics_listen {listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class MonitorServer:
    """Serves /metrics, /healthz and /readyz on ``listen`` until stopped."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        ready: Callable[[], Awaitable[bool]],
    ) -> None:
        self.host, self.port = split_address(listen)
        self.registry = registry
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Bind and serve; return the bound port. Raises OSError (address in use)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("monitor_listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, content_type, body = await self._answer(method, path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                "Cache-Control: no-store\r\n\r\n".encode("latin-1")
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no complete request gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            try:
                ready = await self.ready()
            except Exception:  # a failing check means not ready, never a crash
                ready = False
            if ready:
                return "200 OK", text, b"ready\n"
            return "503 Service Unavailable", text, b"not ready\n"
        if path == "/metrics":
            # Collectors read the hub's state (no database reads); rendering is CPU work of a
            # few milliseconds, kept off the loop anyway since scrapes can be frequent.
            body = await asyncio.to_thread(generate_latest, self.registry)
            return "200 OK", CONTENT_TYPE_LATEST, body
        return "404 Not Found", text, b"not found\n"
