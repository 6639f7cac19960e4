"""What every call goes through: authenticate, claim the request id, run, record, map errors.

One log line per call (method, department, status, reason, latency); never personal data.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from exchange import errors
from exchange.api.status import abort, to_status
from exchange.clock import now_us
from exchange.flows.record import record
from exchange.hub import Hub
from exchange.policy.identity import Caller, Claim, claim_of
from exchange.store.requests import ANSWERED, PENDING, REFUSED, RequestRecord
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
    kind: int
    run: Callable[[Hub, Caller, Body], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class StreamMethod(Generic[Body, Response]):
    """A server-streaming RPC: like Method, but ``run`` yields responses."""

    name: str
    body_type: type[Body]
    response_type: type[Response]
    kind: int
    run: Callable[[Hub, Caller, Body], AsyncIterator[Response]]


def peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    """The PEM client certificate of the TLS peer, or None (no TLS, or none presented)."""
    values = list(context.auth_context().get("x509_pem_cert", ()))
    return bytes(values[0]) if values else None


class Pipeline:
    """Runs Methods for servicers."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(
        self,
        method: Method[Body, Response],
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Response:
        started = time.perf_counter()
        certificate = peer_certificate(context)
        caller: Caller | None = None
        claimed = False
        outcome = "OK"
        envelope = envelope_pb2.Envelope()
        try:
            authenticated, body = await self._authenticate(
                envelope, request, certificate, method.body_type
            )
            caller = authenticated
            earlier = await self.hub.requests.claim(
                authenticated.department_id,
                authenticated.request_id,
                authenticated.envelope_sha256,
                method.name,
                now_us(),
            )
            if earlier is not None:
                return await self._replay(method, authenticated, earlier, context)
            claimed = True
            response = await method.run(self.hub, authenticated, body)
            self.hub.requests.complete_soon(
                authenticated.department_id,
                authenticated.request_id,
                authenticated.envelope_sha256,
                method.name,
                ANSWERED,
                response.SerializeToString(),
            )
            return response
        except grpc.aio.AbortError:
            raise
        except errors.ExchangeError as error:
            outcome = error.reason_name
            status = await self._refuse(method, error, caller, certificate, envelope)
            if claimed and caller is not None:
                self.hub.requests.complete_soon(
                    caller.department_id,
                    caller.request_id,
                    caller.envelope_sha256,
                    method.name,
                    REFUSED,
                    status.SerializeToString(),
                )
            await abort(context, status)
            raise AssertionError("unreachable") from None  # abort raises
        except Exception:
            incident = uuid.uuid4().hex[:12]
            outcome = "INTERNAL_ERROR"
            log.exception("call_failed", method=method.name, incident=incident)
            if claimed and caller is not None:
                await self.hub.requests.release(caller.department_id, caller.request_id)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the hub log"
            )
            raise AssertionError("unreachable") from None
        finally:
            log.info(
                "call",
                method=method.name,
                department=caller.department_id if caller else None,
                outcome=outcome,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
            )

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
        outcome = "OK"
        envelope = envelope_pb2.Envelope()
        try:
            caller, body = await self._authenticate(
                envelope, request, certificate, method.body_type
            )
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
        except Exception:
            incident = uuid.uuid4().hex[:12]
            outcome = "INTERNAL_ERROR"
            log.exception("call_failed", method=method.name, incident=incident)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the hub log"
            )
        finally:
            log.info(
                "call",
                method=method.name,
                department=caller.department_id if caller else None,
                outcome=outcome,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    async def _authenticate(
        self,
        envelope: envelope_pb2.Envelope,
        request: bytes,
        certificate: bytes | None,
        body_type: type[Body],
    ) -> tuple[Caller, Body]:
        """Decode ``request`` into ``envelope`` and authenticate it. Raises ExchangeError."""
        try:
            envelope.ParseFromString(request)
        except DecodeError as exc:
            raise errors.InvalidArgument(
                common_pb2.MALFORMED_ENVELOPE, "the request is not an exchange.v1.Envelope"
            ) from exc
        # Registry reads and signature checks block; keep them off the event loop.
        return await asyncio.to_thread(
            self.hub.authenticator.authenticate, certificate, envelope, body_type
        )

    async def _replay(
        self,
        method: Method[Body, Response],
        caller: Caller,
        earlier: RequestRecord,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Response:
        """Answer a retry: the first answer again, or a refusal if the bytes differ."""
        if earlier.envelope_sha256 != caller.envelope_sha256 or earlier.method != method.name:
            raise errors.FailedPrecondition(
                common_pb2.REQUEST_ID_REUSED,
                f"request id {caller.request_id!r} was already used for a different request",
            )
        if earlier.state == PENDING or earlier.response is None:
            raise errors.Unavailable(
                common_pb2.REQUEST_ID_REUSED,
                f"request {caller.request_id!r} is still being processed; retry shortly",
            )
        if earlier.state == REFUSED:
            status = status_pb2.Status.FromString(earlier.response)
            await abort(context, status)
        return method.response_type.FromString(earlier.response)

    async def _refuse(
        self,
        method: Method[Any, Any] | StreamMethod[Any, Any],
        error: errors.ExchangeError,
        caller: Caller | None,
        certificate: bytes | None,
        envelope: envelope_pb2.Envelope,
    ) -> status_pb2.Status:
        """Record the refusal in the ledger (unless its flow did) and build its status."""
        if error.recorded:
            return to_status(error, getattr(error, "ledger_sequence", None))
        who: Caller | Claim
        if caller is not None:
            who, kind = caller, method.kind
        else:
            peer = None
            if certificate:
                from exchange.crypto.certificates import CertificateError, peer_identity

                try:
                    peer = peer_identity(certificate).department_id
                except CertificateError:
                    peer = None
            who, kind = claim_of(envelope, peer), ledger_pb2.CALL_REFUSAL
        outcome = (
            ledger_pb2.FAILED
            if error.code in (errors.Code.UNAVAILABLE, errors.Code.DEADLINE_EXCEEDED)
            else ledger_pb2.REFUSED
        )
        fields = dict(error.entry_fields)
        attributes = dict(fields.pop("attributes", {}) or {})  # type: ignore[call-overload]
        attributes["method"] = method.name
        try:
            receipt = await record(
                self.hub.ledger,
                who,
                kind,
                outcome=outcome,
                reason=error.reason,
                attributes=attributes,
                **fields,
            )
        except errors.Unavailable as ledger_down:
            return to_status(ledger_down)
        return to_status(error, receipt.sequence)
