"""Running the web app: uvicorn on a socket this module binds, in the caller's event loop.

Binding the socket here (rather than letting uvicorn do it) lets ``port=0`` pick a free port
that the caller can read back at once (the demo prints it, tests connect to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn

from adapters.client import HubClient
from adapters.web.app import create_app
from adapters.web.identity import PersonAuthenticator
from adapters.web.pages import Pages, WebSettings


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process that embeds it (the demo, the CLI)
    owns Ctrl-C, and stops the server as part of stopping everything else. (uvicorn's handlers
    would take the signal, stop only the web server, and leave the rest running.)"""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebServer:
    """The web app served by uvicorn on ``host:port`` until ``stop()``."""

    def __init__(
        self,
        settings: WebSettings,
        client: HubClient,
        identity_provider: PersonAuthenticator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: bool = False,
    ) -> None:
        self.pages = Pages(settings, client, identity_provider)
        self.app = create_app(self.pages)
        self.host = host
        self.port = port
        self.access_log = access_log
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL to open in a browser."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving. Raises OSError if the address cannot be bound."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named, not left 0: connections accepted from this socket inherit it, and
        # asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say they are
        # TCP. With Nagle on, a response's body waits for the client's delayed ACK of its
        # headers (uvicorn writes them apart): some 40 ms on every page.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=self.access_log,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError("the web server stopped while starting")
            await asyncio.sleep(0.02)

    async def serve_forever(self) -> None:
        """Wait until the server stops."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Stop serving; open connections get two seconds to finish."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None
