"""The web app's tests: a real hub, the demo's three provider adapters, and ``exchange web``
served by uvicorn on loopback, all running in a background thread's event loop so that
synchronous clients (Selenium, httpx) can drive it from the test.

Browser tests need Debian's ``chromium`` and ``chromium-driver``. Without them they skip with
the reason; under ``CI=true`` (set by .ci/run, which installs both) a missing browser fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from adapters.client import HubClient
from exchange.cli import demo as demo_module
from exchange.cli.demo import HUB_ID, IDENTITY, Story
from exchange.cli.demo_web import DemoWeb, start_web

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class WebStack:
    """The running hub, adapters and web app, and a way to run hub-side calls beside them."""

    story: Story
    web: DemoWeb
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return self.web.server.url

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coroutine`` in the stack's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def client(self, department_id: str) -> HubClient:
        """A hub client for a demo department (made in the stack's loop)."""

        async def make() -> HubClient:
            return self.story.client(department_id)

        return self.run(make())


@contextlib.contextmanager
def web_stack(root: Path) -> Iterator[WebStack]:
    """Start the demo's hub and adapters (set up as ``exchange demo`` does, without its story)
    and the web app, in a thread of their own; stop all of it on exit."""
    ready: Future[WebStack] = Future()
    stopping = threading.Event()

    async def main() -> None:
        story = Story(root, 0)
        web = None
        try:
            await story.setup()
            web = await start_web(
                story.client(HUB_ID),
                story.keystore,
                f"127.0.0.1:{story.hub.port}",
                story.hub.hub.ledger.verifier_key,
                root,
                0,
                IDENTITY,
            )
            ready.set_result(WebStack(story, web, asyncio.get_running_loop()))
            while not stopping.is_set():
                await asyncio.sleep(0.05)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            if web is not None:
                await web.stop()
            await story.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    stack = ready.result(timeout=180)
    try:
        yield stack
    finally:
        stopping.set()
        thread.join(timeout=30)
        demo_module.STEP = 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    """One stack for a test module (setting it up registers a whole exchange)."""
    with web_stack(tmp_path_factory.mktemp("web")) as running:
        yield running


def require_chromium() -> None:
    """Skip (fail under CI) unless Debian's chromium and chromium-driver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = (
            f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
            "not found; apt-get install -y chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI requires them")
        pytest.skip(message)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $EXCHANGE_SCREENSHOTS if set, else a temporary directory; the
    path is printed so a failed or a passing run can be looked at."""
    chosen = os.environ.get("EXCHANGE_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {directory}")
    return directory
