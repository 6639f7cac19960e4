"""A C2SP tlog-witness: ``POST <prefix>/add-checkpoint`` with the answers the spec gives.

Another department or province runs one (``exchange witness serve``) with its own key and its
own durable state: for each log it knows (by origin, with the log's verifier keys) the latest
checkpoint it cosigned. It cosigns a new checkpoint only if the log signed it and a consistency
proof links it to that state; the check and the update are one SQLite ``BEGIN IMMEDIATE``
transaction (synchronous FULL), so two concurrent submissions cannot roll the state back, and a
restart keeps it: the witness never cosigns two inconsistent checkpoints of one log.

Answers (c2sp.org/tlog-witness): 200 with the cosignature line; 400 for a malformed body or an
old size beyond the checkpoint; 403 if no trusted log key signed; 404 for an unknown origin;
409 with ``text/x.tlog.size`` (the size it holds) when the old size is not the one it holds, or
a checkpoint of the held size has another root; 422 when the consistency proof does not verify.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import structlog

from exchange.crypto.keys import SigningKey
from exchange.ledger import merkle
from exchange.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    verify_checkpoint,
)
from exchange.witness.cosignature import cosign

log = structlog.get_logger(__name__)

MAX_PROOF_LINES = 63
MAX_BODY = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, body and content type."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


def _refuse(status: HTTPStatus, message: str) -> Answer:
    return Answer(int(status), message + "\n")


class Witness:
    """The witness's logic and state; thread-safe (one SQLite connection per call)."""

    def __init__(
        self, key: SigningKey, name: str, logs: Sequence[NoteVerifier | str], state: Path
    ) -> None:
        """``logs`` are the verifier keys of the logs it witnesses; a log's origin is its key
        name. ``state`` is the SQLite file of what it cosigned (made if missing)."""
        self.key = key
        self.name = name
        self.logs: dict[str, list[NoteVerifier]] = {}
        for text in logs:
            verifier = NoteVerifier.parse(text) if isinstance(text, str) else text
            self.logs.setdefault(verifier.name, []).append(verifier)
        self.state = state
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS cosigned (origin TEXT PRIMARY KEY, size INTEGER NOT "
                "NULL, root_hash BLOB NOT NULL, note TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.state, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        """The size and root of the latest checkpoint cosigned for ``origin``, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT size, root_hash FROM cosigned WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def add_checkpoint(self, request: bytes) -> Answer:
        """Answer one add-checkpoint request body."""
        try:
            old, proof, note = _parse(request)
            checkpoint = Checkpoint.parse(note)
        except (ValueError, CheckpointError) as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, f"malformed request: {exc}")
        keys = self.logs.get(checkpoint.origin)
        if keys is None:
            return _refuse(HTTPStatus.NOT_FOUND, f"unknown log {checkpoint.origin!r}")
        try:
            verify_checkpoint(note, keys)
        except CheckpointError as exc:
            return _refuse(HTTPStatus.FORBIDDEN, str(exc))
        if old > checkpoint.size:
            return _refuse(HTTPStatus.BAD_REQUEST, "old size is beyond the checkpoint's size")
        if old == 0 and proof:
            return _refuse(HTTPStatus.UNPROCESSABLE_ENTITY, "a proof from size 0 is empty")
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT size, root_hash FROM cosigned WHERE origin = ?", (checkpoint.origin,)
            ).fetchone()
            held_size, held_root = (0, b"") if row is None else (int(row[0]), bytes(row[1]))
            if old != held_size:
                conn.execute("ROLLBACK")
                return Answer(HTTPStatus.CONFLICT, f"{held_size}\n", SIZE_CONTENT_TYPE)
            if old == checkpoint.size and row is not None:
                if checkpoint.root_hash != held_root:
                    conn.execute("ROLLBACK")
                    log.warning("witness_fork_refused", origin=checkpoint.origin, size=old)
                    return _refuse(
                        HTTPStatus.CONFLICT,
                        f"a checkpoint of size {old} with another root was cosigned: a fork",
                    )
            elif old and not merkle.verify_consistency(
                old, checkpoint.size, held_root, checkpoint.root_hash, proof
            ):
                conn.execute("ROLLBACK")
                log.warning(
                    "witness_inconsistent_refused",
                    origin=checkpoint.origin,
                    old=old,
                    size=checkpoint.size,
                )
                return _refuse(
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    f"the consistency proof from size {old} to {checkpoint.size} does not verify",
                )
            conn.execute(
                "INSERT INTO cosigned (origin, size, root_hash, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, "
                "root_hash = excluded.root_hash, note = excluded.note",
                (checkpoint.origin, checkpoint.size, checkpoint.root_hash, note),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return Answer(HTTPStatus.OK, cosign(checkpoint, self.key, self.name))


def _parse(request: bytes) -> tuple[int, list[bytes], str]:
    """Split an add-checkpoint body into old size, proof hashes and the checkpoint note."""
    if len(request) > MAX_BODY:
        raise ValueError("request too large")
    text = request.decode("utf-8")
    head, separator, note = text.partition("\n\n")
    if not separator:
        raise ValueError("no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        raise ValueError("the first line is not 'old <size>'")
    size_text = first[4:]
    if (
        not size_text.isascii()
        or not size_text.isdigit()
        or (len(size_text) > 1 and size_text[0] == "0")
    ):
        raise ValueError("the old size is not a decimal without leading zeroes")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            node = base64.b64decode(line, validate=True)
        except binascii.Error as exc:
            raise ValueError("a proof line is not base64") from exc
        if len(node) != 32:
            raise ValueError("a proof line is not a 32-byte hash")
        proof.append(node)
    return int(size_text), proof, note


class _Handler(BaseHTTPRequestHandler):
    witness: Witness
    prefix: str = ""

    def do_POST(self) -> None:
        if self.path != f"{self.prefix}/add-checkpoint":
            self._send(_refuse(HTTPStatus.NOT_FOUND, "no such endpoint"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(_refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large"))
            return
        self._send(self.witness.add_checkpoint(self.rfile.read(length)))

    def _send(self, answer: Answer) -> None:
        data = answer.body.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        # Refusals are logged where they are decided; the access line adds nothing.
        return


class WitnessServer:
    """The witness over HTTP on ``host:port`` (port 0: a free one), in a thread."""

    def __init__(self, witness: Witness, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"witness": witness})
        self.http = ThreadingHTTPServer((host, port), handler)
        self.port = int(self.http.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The submission prefix."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.http.shutdown()
        self.http.server_close()
        if self._thread is not None:
            self._thread.join()
