"""What every call goes through: authenticate, claim the request id, run, record, map errors.

One log line per call (method, department, status, reason, latency); never personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from google.rpc import status_pb2

from exchange import errors
from exchange.api.claims import CallClaim
from exchange.api.limits import Kind, Limits, Slot
from exchange.clock import now_us
from exchange.crypto.certificates import CertificateError, peer_identity
from exchange.crypto.sealing import SealError, unseal
from exchange.flows.record import record
from exchange.hub import Hub
from exchange.observability import metrics
from exchange.policy import envelope_checks
from exchange.policy.disclosure import open_disclosure
from exchange.policy.identity import Caller, Claim, claim_of
from exchange.rpc.status import abort, peer_certificate, to_status
from exchange.store.cache import MISSING
from exchange.store.failures import database_failure
from exchange.store.requests import (
    IN_PROGRESS_RETRY_SECONDS,
    PENDING,
    REFUSED,
    RequestRecord,
)
from exchange.v1 import common_pb2, envelope_pb2, ledger_pb2

log = structlog.get_logger("exchange.call")

Body = TypeVar("Body", bound=Message)
Response = TypeVar("Response", bound=Message)


@dataclass(frozen=True, slots=True)
class Method(Generic[Body, Response]):
    """One RPC: its name, body and response types, ledger kind and service function."""

    name: str
    body_type: type[Body]
    response_type: type[Response]
    kind: ledger_pb2.EntryKind.ValueType
    run: Callable[[Hub, Caller, Body], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class StreamMethod(Generic[Body, Response]):
    """A server-streaming RPC: like Method, but ``run`` yields responses."""

    name: str
    body_type: type[Body]
    response_type: type[Response]
    kind: ledger_pb2.EntryKind.ValueType
    run: Callable[[Hub, Caller, Body], AsyncIterator[Response]]


def peer_department(certificate: bytes | None) -> str | None:
    """The department a client certificate names, or None if there is none or it is unreadable
    (the authenticator then refuses with the precise reason)."""
    if not certificate:
        return None
    try:
        return peer_identity(certificate).department_id
    except CertificateError:
        return None


def _orphan_done(claim: CallClaim, method: str, task: asyncio.Future[Any]) -> None:
    """The flow of a call whose caller went away ended: free its id if it failed before
    committing anything (its answer, if it succeeded, is stored already)."""
    if task.cancelled() or task.exception() is not None:
        if not task.cancelled():
            failure = type(task.exception()).__name__
            log.warning("orphaned_call_failed", method=method, error=failure)
        claim.release_soon()


def _log_call(method: str, caller: Caller | None, outcome: str, started: float) -> None:
    """The one log line of a call, and its metrics: never a subject id, a value or a payload."""
    seconds = time.perf_counter() - started
    metrics.observe_call(method, outcome, seconds)
    log.info(
        "call",
        method=method,
        department=caller.department_id if caller else None,
        outcome=outcome,
        latency_ms=round(seconds * 1000, 3),
    )


class Pipeline:
    """Runs Methods for servicers."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.limits = Limits(hub.config.limits)

    async def __call__(
        self,
        method: Method[Body, Response],
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Response:
        started = time.perf_counter()
        certificate = peer_certificate(context)
        caller: Caller | None = None
        slot: Slot | None = None
        claim: CallClaim | None = None
        holder: str | None = None  # set once the request id's claim is asked for
        outcome = "OK"
        envelope = envelope_pb2.Envelope()
        try:
            try:
                authenticated, signed, disclosure = await self._authenticate(
                    envelope, request, certificate, method.body_type
                )
                caller = authenticated
                # Its turn (exchange.api.limits), before the request id is claimed: a call
                # refused for its share is not answered, so its retry runs.
                slot = await self.limits.call(
                    authenticated.department_id, certificate, context.time_remaining()
                )
                body = self._disclose(signed, disclosure)
                holder = self.hub.requests.holder.call()
                opened = await CallClaim.open(
                    self.hub.requests,
                    authenticated.department_id,
                    authenticated.request_id,
                    authenticated.envelope_sha256,
                    method.name,
                    now_us(),
                    context.time_remaining(),
                    disclosure or self.hub.at_rest.secret,
                    holder,
                )
                if isinstance(opened, RequestRecord):
                    return await self._replay(method, authenticated, opened, context, disclosure)
                claim = opened
                with claim:
                    return await self._run(method, authenticated, body, claim)
            except Exception as exc:
                if isinstance(exc, errors.ExchangeError | grpc.aio.AbortError):
                    raise
                if not database_failure(exc):
                    raise
                # The database failed (claim, index, registry, entry): a passing condition.
                log.warning("call_database_failed", method=method.name, error=type(exc).__name__)
                raise errors.DatabaseUnavailable() from exc
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            # The caller went away. A claim still running its flow is settled by that flow
            # (``_run``); one that may have been committed while it was asked for is freed (a
            # claim of this call's holder only, and only while PENDING), so its retry runs.
            outcome = "CANCELLED"
            if claim is None and holder is not None and caller is not None:
                self.hub.requests.release_soon(caller.department_id, caller.request_id, holder)
            raise
        except errors.ExchangeError as error:
            outcome = error.reason_name
            status = await self._refuse(method, error, caller, certificate, envelope, claim)
            if claim is not None:
                await claim.refused(error, status)
            await abort(context, status)
            raise AssertionError("unreachable") from None  # abort raises
        except Exception:
            incident = uuid.uuid4().hex[:12]
            outcome = "INTERNAL_ERROR"
            log.exception("call_failed", method=method.name, incident=incident)
            if claim is not None:
                await claim.release()
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the hub log"
            )
            raise AssertionError("unreachable") from None
        finally:
            if slot is not None:
                slot.release()
            _log_call(method.name, caller, outcome, started)

    async def _run(
        self, method: Method[Body, Response], caller: Caller, body: Body, claim: CallClaim
    ) -> Response:
        """Run the flow and store its answer (unless its entry's transaction did) before the
        response is returned. The flow runs in a task of its own that the caller's going away
        does not cancel: once it may have committed, it finishes and stores its answer, which
        a retry then gets; if it fails meanwhile, the id is freed (unless an entry was
        committed with it) and the failure logged."""

        async def serve() -> Response:
            response = await method.run(self.hub, caller, body)
            await claim.answered(response)
            return response

        task = asyncio.ensure_future(serve())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(functools.partial(_orphan_done, claim, method.name))
            raise

    async def stream(
        self,
        method: StreamMethod[Body, Response],
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Response]:
        """Serve a server-streaming method: authenticate, then relay what ``method.run`` yields.

        Streams are reads: they are not claimed by request id, so a retry (or a resumption from
        a later position) simply streams again. ``method.run`` records the call's entry before
        its first item.
        """
        started = time.perf_counter()
        certificate = peer_certificate(context)
        caller: Caller | None = None
        slot: Slot | None = None
        outcome = "OK"
        envelope = envelope_pb2.Envelope()
        try:
            caller, signed, disclosure = await self._authenticate(
                envelope, request, certificate, method.body_type
            )
            slot = self.limits.take(Kind.STREAM, caller.department_id, certificate)
            body = self._disclose(signed, disclosure)
            async for item in method.run(self.hub, caller, body):
                yield item
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except errors.ExchangeError as error:
            outcome = error.reason_name
            await abort(context, await self._refuse(method, error, caller, certificate, envelope))
        except Exception as exc:
            if database_failure(exc):
                failed = errors.DatabaseUnavailable()
                outcome = failed.reason_name
                log.warning("call_database_failed", method=method.name, error=type(exc).__name__)
                await abort(
                    context, await self._refuse(method, failed, caller, certificate, envelope)
                )
            incident = uuid.uuid4().hex[:12]
            outcome = "INTERNAL_ERROR"
            log.exception("call_failed", method=method.name, incident=incident)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the hub log"
            )
        finally:
            if slot is not None:
                slot.release()
            _log_call(method.name, caller, outcome, started)

    async def _authenticate(
        self,
        envelope: envelope_pb2.Envelope,
        request: bytes,
        certificate: bytes | None,
        body_type: type[Body],
    ) -> tuple[Caller, Body, bytes]:
        """Decode ``request`` into ``envelope`` and authenticate it; return the caller, the
        signed body and the disclosure. Raises ExchangeError.

        The disclosure (personal data) is taken out of ``envelope`` first, so the envelope the
        caller's entry stores, and whose hash identifies the request, never holds it.
        """
        envelope_checks.parse_envelope(request, into=envelope)
        disclosure = envelope.disclosure
        envelope.ClearField("disclosure")
        authenticate = self.hub.authenticator.authenticate
        # A call that authenticates names the certificate's department, so its registry record
        # is the one the cache must hold.
        peer = peer_department(certificate)
        if peer is not None and self.hub.departments.peek(peer) is not MISSING:
            # Cached department: one signature check (~0.1 ms) costs less on the loop than
            # handing it to a worker thread and back.
            caller, body = authenticate(certificate, envelope, body_type)
        else:
            # A registry read blocks: keep it off the event loop.
            caller, body = await asyncio.to_thread(authenticate, certificate, envelope, body_type)
        return caller, body, disclosure

    @staticmethod
    def _disclose(body: Body, disclosure: bytes) -> Body:
        """The body with its disclosed personal fields. A refusal here must not store the
        envelope: with DISCLOSURE_REQUIRED it holds the personal data."""
        try:
            return open_disclosure(body, disclosure)
        except errors.ExchangeError as error:
            error.store_envelope = False
            raise

    async def _replay(
        self,
        method: Method[Body, Response],
        caller: Caller,
        earlier: RequestRecord,
        context: grpc.aio.ServicerContext[Any, Any],
        disclosure: bytes,
    ) -> Response:
        """Answer a retry: the first answer again, or a refusal if the bytes differ.

        Stored answers are sealed to the request's disclosure (exchange.crypto.sealing): the
        retry carries it, the database does not. An answer to a call without a disclosure (a
        ListObjections answer holds proposed values) is sealed under the hub's at-rest key.
        """
        if earlier.envelope_sha256 != caller.envelope_sha256 or earlier.method != method.name:
            raise errors.FailedPrecondition(
                common_pb2.REQUEST_ID_REUSED,
                f"request id {caller.request_id!r} was already used for a different request",
            )
        live = (earlier.lease_until_us or 0) >= now_us()
        if earlier.state == PENDING or (earlier.response is None and live):
            raise errors.Unavailable(
                common_pb2.REQUEST_IN_PROGRESS,
                f"request {caller.request_id!r} is still being processed; retry shortly",
                retry_after=IN_PROGRESS_RETRY_SECONDS,
            )
        if earlier.response is None:
            raise errors.FailedPrecondition(
                common_pb2.REQUEST_ANSWER_LOST,
                f"request {caller.request_id!r} was recorded at ledger sequence "
                f"{earlier.ledger_sequence} but the hub stopped before storing its answer",
            )
        try:
            answer = unseal(earlier.response, disclosure or self.hub.at_rest.secret)
        except SealError as exc:
            raise errors.FailedPrecondition(
                common_pb2.REQUEST_ID_REUSED,
                f"request id {caller.request_id!r} was already used for a different request",
            ) from exc
        if earlier.state == REFUSED:
            await abort(context, status_pb2.Status.FromString(answer))
        return method.response_type.FromString(answer)

    async def _refuse(
        self,
        method: Method[Any, Any] | StreamMethod[Any, Any],
        error: errors.ExchangeError,
        caller: Caller | None,
        certificate: bytes | None,
        envelope: envelope_pb2.Envelope,
        claim: CallClaim | None = None,
    ) -> status_pb2.Status:
        """Record the refusal in the ledger (unless its flow did) and build its status; with
        ``claim``, the refusal (unless for a passing condition) is its request id's answer,
        committed with the entry."""
        if error.ledger_sequence is not None:
            return to_status(error, error.ledger_sequence)
        who: Caller | Claim
        facts = error.facts.copy(method=method.name)
        attributes = facts.attributes
        if caller is not None and error.store_envelope:
            who, kind = caller, method.kind
        elif caller is not None:
            who, kind = Claim(caller.department_id, caller.request_id, b""), method.kind
            attributes["envelope_sha256"] = caller.envelope_sha256.hex()
        else:
            peer = peer_department(certificate)
            # Unauthenticated bytes are not kept (anyone holding a certificate could fill the
            # ledger with them): only their hash and size.
            named = claim_of(envelope, peer)
            who, kind = Claim(named.department_id, named.request_id, b""), ledger_pb2.CALL_REFUSAL
            attributes["envelope_sha256"] = hashlib.sha256(named.envelope_bytes).hexdigest()
            attributes["envelope_bytes"] = str(len(named.envelope_bytes))
        outcome = (
            ledger_pb2.FAILED
            if error.code in (errors.Code.UNAVAILABLE, errors.Code.DEADLINE_EXCEEDED)
            else ledger_pb2.REFUSED
        )
        try:
            with claim if claim is not None else contextlib.nullcontext():
                receipt = await record(
                    self.hub.ledger,
                    who,
                    kind,
                    outcome=outcome,
                    reason=error.reason,
                    answer=lambda receipt: to_status(error, receipt.sequence),
                    facts=facts,
                )
        except errors.Unavailable as ledger_down:
            return to_status(ledger_down)
        return to_status(error, receipt.sequence)
