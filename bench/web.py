"""Web benchmark: rendering a prefilled counter page vs. the bare Prefill call it is built on.

One exchange as the demo sets it up (a hub on SQLite, the three demo departments' provider
adapters), plus a form of 10 fields across the 3 holders (household registration: 5, marriage
record: 3, business licence: 2), all on file and granted, for 张三 (demo):

- prefill: the SDK's ``HubClient.prefill`` as the web counter member (``demo.township-web``),
  with the person's subject assertion and receipt verification: the call the page makes;
- page:    ``GET /counter/fill`` from ``exchange web serve`` (its own process, as deployed), 8
           signed-in counter sessions each serving the person: session lookup, the same Prefill
           through the SDK, the (cached) catalog and holder names, and the rendered HTML.

Both with 8 concurrent callers, 200 calls a round, after a warm-up; the order of the two turns
from round to round. Three processes, as deployed: the hub with its adapters, the web app, and
this one, which only generates load (SDK calls, or HTTP requests as browsers would). Prints
p50/p99 of each round and the median ratios.

Run: python bench/web.py [--pages 200] [--concurrency 8] [--repeat 3]
Target: page p50 and p99 <= 1.2 x the Prefill call's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

from adapters import demo_data as data
from adapters.identity import Assurance, DevelopmentIdentityProvider
from adapters.web.staff import add_account
from exchange import logs
from exchange.cli.demo import HUB_ID, IDENTITY, SUBSIDY, Story
from exchange.cli.demo_web import WEB_FORM_TOOL, register_web_form_tool, web_client
from exchange.crypto.keystore import Keystore
from exchange.v1 import catalog_pb2

FORM_ID = "bench-ten-fields"
FIELDS = (
    (data.HOUSEHOLD, ("name", "gender", "birth_date", "address", "household_head")),
    (data.MARRIAGE, ("marital_status", "spouse_name", "registered_on")),
    (data.LICENCE, ("enterprise_name", "credit_code")),
)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PASSWORD = "bench-password"


class Session:
    """One counter session over plain HTTP, its cookie sent by hand (the app's cookies are
    Secure, which httpx's jar withholds from http://127.0.0.1; browsers do not)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.cookie = ""

    async def request(self, method: str, path: str, **form: str) -> httpx.Response:
        headers = {"cookie": f"gx_counter={self.cookie}"} if self.cookie else {}
        response = await self.http.request(
            method, path, headers=headers, data=form or None, follow_redirects=False
        )
        found = re.search(r"gx_counter=([^;]*)", response.headers.get("set-cookie", ""))
        if found:
            self.cookie = found.group(1)
        return response

    async def post(self, path: str, page: str, **form: str) -> httpx.Response:
        token = CSRF.search((await self.request("GET", page)).text)
        assert token, f"no CSRF token on {page}"
        response = await self.request("POST", path, csrf=token.group(1), **form)
        assert response.status_code == 303, (path, response.status_code, response.text[:300])
        return response

    async def serve(self, subject_id: str) -> None:
        """Sign in, choose the bench form, have the person authenticate (a fresh assertion)."""
        if not self.cookie or (await self.request("GET", "/counter/person")).status_code != 200:
            await self.post("/counter/sign-in", "/counter", account="bench", password=PASSWORD)
            await self.post("/counter/form", "/counter", form_id=FORM_ID)
        await self.post("/counter/person", "/counter/person", subject_id=subject_id)


class Connection:
    """One keep-alive HTTP/1.1 connection, as a browser holds to the counter: the lightest
    possible client, so the load generator's own cost (here, on the server's machine; a real
    browser's is elsewhere) weighs as little as the SDK's does on the Prefill path."""

    def __init__(self, host: str, port: int, cookie: str) -> None:
        self.address = (host, port)
        self.request = (
            f"GET /counter/fill HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Cookie: gx_counter={cookie}\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> tuple[int, bytes]:
        """The page: status and body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(*self.address)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def measure(
    call: Callable[[int], Awaitable[None]], total: int, concurrency: int
) -> list[float]:
    """Latencies (ms) of ``total`` calls made by ``concurrency`` workers (worker index given)."""
    latencies: list[float] = []
    remaining = [total]

    async def worker(index: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            await call(index)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def start_web(
    port: int, keystore: Keystore, root: Path, verifier: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``exchange web serve`` as the web counter member, in its own process; its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.cli", "web", "serve",
        "--as", WEB_FORM_TOOL,
        "--listen", f"127.0.0.1:{port}",
        "--keys-dir", str(keystore.root),
        "--hub-verifier", verifier,
        "--web", "127.0.0.1:0",
        "--staff-file", str(root / "staff.toml"),
        "--development-identity-provider", IDENTITY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        if not line:
            raise RuntimeError("exchange web serve stopped before serving")
        if line.startswith("counter:"):
            return process, line.split()[1].removesuffix("/counter")


async def exchange(root: Path, ready: Queue, stop: Event) -> None:  # type: ignore[type-arg]
    """The demo's hub and adapters, the web counter member, the bench form and its grant;
    tells the parent (port, verifier key), then serves until ``stop``."""
    logs.configure("error", "console")
    story = Story(root, 0)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            await story.setup()
        await register_web_form_tool(story.client(HUB_ID), story.keystore)
        await story.client(data.TOWNSHIP).register_form(
            form=catalog_pb2.Form(
                id=FORM_ID,
                name="十项表单 Ten-field form (bench)",
                purpose=SUBSIDY,
                fields=[
                    catalog_pb2.FormField(
                        name=f"{t[:4]}_{f}", label=f, material_type=t, material_field=f
                    )
                    for t, names in FIELDS
                    for f in names
                ],
            )
        )
        await story._grant(
            data.CIVIL_AFFAIRS, data.TOWNSHIP, data.MARRIAGE, list(FIELDS[1][1]), [SUBSIDY]
        )
        ready.put((story.hub.port, story.hub.hub.ledger.verifier_key))
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            await story.stop()


def run_exchange(root: Path, ready: Queue, stop: Event) -> None:  # type: ignore[type-arg]
    asyncio.run(exchange(root, ready, stop))


async def main(pages: int, concurrency: int, repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    hub_process = context.Process(target=run_exchange, args=(root, ready, stop))
    hub_process.start()
    web: asyncio.subprocess.Process | None = None
    try:
        port, verifier = await asyncio.to_thread(ready.get, True, 180)
        keystore = Keystore(root / "keys")
        add_account(root / "staff.toml", "bench", "bench", PASSWORD)
        web, url = await start_web(port, keystore, root, verifier)
        client = web_client(keystore, f"127.0.0.1:{port}", verifier)
        platform = DevelopmentIdentityProvider(IDENTITY, keystore.department_signing_key(IDENTITY))
        limits = httpx.Limits(max_connections=concurrency * 2)
        async with client, httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            sessions = [Session(http) for _ in range(concurrency)]

            host, web_port = url.removeprefix("http://").rsplit(":", 1)
            connections: list[Connection] = []

            async def page(index: int) -> None:
                status, body = await connections[index].get()
                assert status == 200, body[:300]
                filled = body.count(b'class="field filled"')
                assert filled == 10, f"{filled} of 10 fields filled"

            async def prefill(_index: int) -> None:
                answer = await client.prefill(FORM_ID, data.ZHANG_SAN, assertion=assertion)
                assert len(answer.fields) == 10, answer

            rounds: list[dict[str, list[float]]] = []
            pids = {os.getpid(): "load", hub_process.pid or 0: "hub", web.pid: "web"}
            cpu: dict[tuple[str, int], list[float]] = {}
            for number in range(repeat + 1):  # round 0 warms up
                assertion = platform.issue(
                    data.ZHANG_SAN,
                    WEB_FORM_TOOL,
                    Assurance.ID_CARD_AT_COUNTER,
                    lifetime_seconds=600,
                ).envelope
                for connection in connections:
                    await connection.close()
                for session in sessions:
                    await session.serve(data.ZHANG_SAN)
                connections = [Connection(host, int(web_port), s.cookie) for s in sessions]
                order = [("prefill", prefill), ("page", page)]
                if number % 2:
                    order.reverse()
                result: dict[str, list[float]] = {}
                for name, call in order:
                    before = {p: cpu_seconds(p) for p in pids}
                    result[name] = await measure(call, pages if number else 20, concurrency)
                    for p in pids:
                        cpu.setdefault((name, p), []).append(
                            (cpu_seconds(p) - before[p]) * 1000 / (pages if number else 20)
                        )
                if number:
                    rounds.append(result)
                    print(
                        f"round {number}: "
                        + "   ".join(
                            f"{name:7} p50 {percentile(result[name], 0.5):6.2f} ms "
                            f"p99 {percentile(result[name], 0.99):6.2f} ms"
                            for name in ("prefill", "page")
                        ),
                        flush=True,
                    )
    finally:
        if web is not None:
            web.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(web.wait(), 15)
            except TimeoutError:  # started from a background job, it ignores SIGINT
                web.kill()
                await web.wait()
        stop.set()
        await asyncio.to_thread(hub_process.join, 30)
    print(
        f"\n{pages} pages a round, {concurrency} concurrent sessions, form of 10 fields across "
        "3 holders"
    )
    for label, p in (("p50", 0.5), ("p99", 0.99)):
        ratios = [percentile(r["page"], p) / percentile(r["prefill"], p) for r in rounds]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        prefill_ms = statistics.median(percentile(r["prefill"], p) for r in rounds)
        page_ms = statistics.median(percentile(r["page"], p) for r in rounds)
        print(
            f"  {label}: prefill {prefill_ms:6.2f} ms   page {page_ms:6.2f} ms   "
            f"ratio page/prefill (median of rounds) {statistics.median(ratios):.2f} "
            f"[{listed}] (target <= 1.2)"
        )
    print("  CPU per call (ms, median of rounds; Linux):")
    for name in ("prefill", "page"):
        spent = {label: statistics.median(cpu[(name, pid)][1:]) for pid, label in pids.items()}
        print(f"    {name:7} " + "  ".join(f"{k} {v:5.2f}" for k, v in spent.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.pages, args.concurrency, args.repeat))
