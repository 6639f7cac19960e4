"""The hub's side of witnessing: submit each new stored checkpoint to the configured witnesses
(C2SP tlog-witness add-checkpoint, with the consistency proof from the size each witness holds)
and store their cosignatures on the checkpoint's note, which GetCheckpoint and exports serve.

A witness that is down or refuses is logged, counted (exchange_witness_submissions_total) and
retried with the next checkpoint; the log never waits for witnesses. Each witness's state (the
size it last cosigned, when, failures since) is read by the metrics listener
(exchange.observability.metrics.HubCollector). The configuration (``Config.witnesses``) is a
comma-separated list of ``<submission URL> <witness key>`` pairs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Engine, update

from exchange.config import ConfigError
from exchange.ledger import Checkpoint, Ledger, storage
from exchange.ledger.checkpoint import CheckpointError
from exchange.observability import metrics
from exchange.witness.cosignature import WitnessKey, add_cosignatures, cosignature_time

log = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 5.0
ProofSource = Callable[[int, int], Sequence[bytes]]


class WitnessRefused(Exception):
    """A witness answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"witness answered {status}: {body.strip()[:200]}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A witness: its submission prefix and key."""

    url: str
    key: WitnessKey

    @classmethod
    def parse_list(cls, text: str) -> list[WitnessEndpoint]:
        """Parse the ``witnesses`` setting, ``<url> <witness key>, …``. Raises ConfigError
        naming the setting and the problem."""
        endpoints = []
        for item in text.split(","):
            if not item.strip():
                continue
            url, _, key = item.strip().partition(" ")
            if not url.startswith(("http://", "https://")) or not key.strip():
                raise ConfigError(
                    f"witnesses: each is '<http(s) URL> <witness key>', got {item.strip()!r}"
                )
            try:
                endpoints.append(cls(url.rstrip("/"), WitnessKey.parse(key)))
            except CheckpointError as exc:
                raise ConfigError(f"witnesses: {url}: {exc}") from exc
        return endpoints


def request_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """An add-checkpoint request body."""
    lines = [f"old {old_size}", *(base64.b64encode(node).decode() for node in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")


def post(url: str, body: bytes, timeout: float = TIMEOUT_SECONDS) -> tuple[int, str, str]:
    """POST ``body`` to ``url``; return (status, body, content type). Raises OSError if the
    witness cannot be reached."""
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode("utf-8"), answer.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8"), error.headers.get("Content-Type", "")


@dataclass(slots=True)
class WitnessClient:
    """Submits checkpoints of one log to one witness, remembering the size it holds and, for
    monitoring, what it last cosigned."""

    endpoint: WitnessEndpoint
    held: int = 0
    cosigned_size: int = 0  # the size of the latest checkpoint it cosigned (0: none yet)
    cosigned_at: float | None = None  # time.monotonic() when that cosignature arrived
    failures: int = 0  # submissions that failed since its latest cosignature

    @property
    def name(self) -> str:
        """The witness's name, as its key names it (e.g. "witness.example/w1")."""
        return self.endpoint.key.name

    def submit(self, checkpoint: Checkpoint, proof_for: ProofSource) -> str:
        """The witness's cosignature line on ``checkpoint``.

        A 409 naming another held size is retried once with a proof from that size. Raises
        WitnessRefused, OSError, or CheckpointError if the answer is not a valid cosignature.
        """
        for _ in range(2):
            proof = proof_for(self.held, checkpoint.size) if self.held else []
            status, body, content_type = post(
                f"{self.endpoint.url}/add-checkpoint",
                request_body(self.held, proof, checkpoint.note),
            )
            if status == 409 and content_type.startswith("text/x.tlog.size"):
                held = int(body.strip())
                if held != self.held and held <= checkpoint.size:
                    self.held = held
                    continue
            if status != 200:
                raise WitnessRefused(status, body)
            lines = [line + "\n" for line in body.split("\n") if line]
            cosigned = add_cosignatures(checkpoint.note, lines)
            if cosignature_time(cosigned, self.endpoint.key) is None:
                raise CheckpointError(f"{self.endpoint.key.name} answered no cosignature")
            self.held = checkpoint.size
            return next(line for line in lines if line.split(" ", 2)[1] == self.endpoint.key.name)
        raise WitnessRefused(409, f"the witness holds size {self.held}")


def store_cosignatures(engine: Engine, size: int, lines: Sequence[str]) -> Checkpoint | None:
    """Add cosignature ``lines`` to the stored checkpoint of ``size``; return it."""
    with engine.begin() as conn:
        stored = storage.checkpoint_at(conn, size)
        if stored is None:
            return None
        note = add_cosignatures(stored.note, lines)
        conn.execute(
            update(storage.ledger_checkpoints)
            .where(storage.ledger_checkpoints.c.size == size)
            .values(note=note)
        )
    return Checkpoint.parse(note)


@dataclass(slots=True)
class Witnessing:
    """Submits every new stored checkpoint to the witnesses, in the background."""

    ledger: Ledger
    engine: Engine
    endpoints: Sequence[WitnessEndpoint]
    interval_seconds: float = 1.0
    latest_cosigned: Checkpoint | None = None
    clients: list[WitnessClient] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task (nothing without witnesses)."""
        self.clients = [WitnessClient(endpoint) for endpoint in self.endpoints]
        if self.clients:
            self._task = asyncio.create_task(self._run(), name="witnessing")

    async def close(self) -> None:
        """Stop the background task, then submit the latest checkpoint once more (the final
        one a hub stores at shutdown)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self.witness_latest()
        except Exception:  # the hub stops anyway
            log.exception("witnessing_failed")

    async def _run(self) -> None:
        while True:
            try:
                await self.witness_latest()
            except Exception:  # a witness problem never stops the hub
                log.exception("witnessing_failed")
            await asyncio.sleep(self.interval_seconds)

    async def witness_latest(self) -> Checkpoint | None:
        """Submit the latest stored checkpoint if it is new; return it with the cosignatures
        gathered (None if there was nothing new)."""
        latest = await asyncio.to_thread(self.ledger.latest_checkpoint)
        done = self.latest_cosigned
        if latest is None or (done is not None and latest.size <= done.size):
            return None
        results = await asyncio.gather(*(self._submit(c, latest) for c in self.clients))
        lines: list[str] = []
        for client, result in zip(self.clients, results, strict=True):
            if isinstance(result, str):
                lines.append(result)
                client.cosigned_size, client.cosigned_at = latest.size, time.monotonic()
                client.failures = 0
                metrics.observe_witness(client.name, "cosigned")
                continue
            client.failures += 1
            metrics.observe_witness(client.name, _failure(result))
            log.warning(
                "witness_refused",
                witness=client.name,
                size=latest.size,
                error=str(result)[:300],
            )
        if not lines:
            return None
        stored = await asyncio.to_thread(store_cosignatures, self.engine, latest.size, lines)
        if stored is not None:
            self.latest_cosigned = stored
        return stored

    async def _submit(self, client: WitnessClient, checkpoint: Checkpoint) -> str | Exception:
        """The witness's cosignature line, or what went wrong (returned: one witness's problem
        must not hide the others' answers); the round trip is measured either way."""
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(client.submit, checkpoint, self.ledger.consistency_proof)
        except Exception as exc:  # any failure of this witness, counted by the caller
            return exc
        finally:
            metrics.observe_witness_seconds(client.name, time.perf_counter() - started)


def _failure(error: Exception) -> str:
    """The ``outcome`` label of a failed submission."""
    if isinstance(error, WitnessRefused):
        return "refused"
    if isinstance(error, OSError):
        return "unreachable"
    return "invalid"  # an answer that is not a valid cosignature
