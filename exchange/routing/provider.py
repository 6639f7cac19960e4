"""The hub's client to provider adapters: hub-signed Fetch and Store over mTLS.

One cached grpc.aio channel per endpoint. The hub presents its own client certificate
(CN = hub id) and signs every forwarded request with the hub key; ``header.request_id`` is a
fresh id per forwarded call (``forwarded_id``) that binds the caller's whole request id. Each
call waits at most ``min(provider timeout, what is left of the caller's deadline minus a
margin)``, so a slow provider yields DEADLINE_EXCEEDED to the caller in time for the failure to
be recorded."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto import forwarding
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import TlsIdentity
from exchange.observability import metrics, tracing
from exchange.routing.deadline import call_deadline
from exchange.rpc.status import DOMAIN, error_info
from exchange.v1 import common_pb2, envelope_pb2, provider_pb2

REASONS = {v.name: v.number for v in common_pb2.Reason.DESCRIPTOR.values}
# The largest answer taken from a holder: the hub's own message limit (docs/api.md), so that
# whatever a holder may answer, the hub can pass it on.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_ANSWER_BYTES),)

FETCH = "/exchange.v1.Provider/Fetch"
STORE = "/exchange.v1.Provider/Store"
SETTLE = "/exchange.v1.Provider/Settle"
INVENTORY = "/exchange.v1.Provider/Inventory"

ForwardedBody = (
    provider_pb2.FetchRequest
    | provider_pb2.StoreRequest
    | provider_pb2.SettleRequest
    | provider_pb2.InventoryRequest
)

# Time kept back from the caller's deadline to record the failure and answer.
MARGIN_SECONDS = 0.25

# Forwarded ids are unique, not secret: a random prefix per process and a counter. (Reading the
# system's randomness on every call would release the GIL, and on a busy hub getting it back
# costs more than the id.)
_FORWARDED_PREFIX = secrets.token_hex(4)
_forwarded_numbers = itertools.count(1)


def forwarded_id(caller_request_id: str, kind: str) -> str:
    """A fresh request id for a call the hub forwards for a caller:
    ``<SHA-256 binding of the caller's whole id>/<kind>-<16 hex>`` (exchange.crypto.forwarding),
    the suffix a random 8-hex prefix per hub process and a 32-bit counter in 8 hex."""
    suffix = f"{_FORWARDED_PREFIX}{next(_forwarded_numbers) % 2**32:08x}"
    return forwarding.forwarded_id(caller_request_id, kind, suffix)


class ProviderRouter:
    """Calls provider adapters on behalf of the hub."""

    def __init__(
        self,
        hub_id: str,
        hub_key: SigningKey,
        tls: TlsIdentity | None,
        timeout_seconds: float,
    ) -> None:
        self.hub_id = hub_id
        self.hub_key = hub_key
        self.tls = tls
        self.timeout_seconds = timeout_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Multi-callables per (endpoint, method), built once per channel.
        self._callables: dict[tuple[str, str], Any] = {}
        self._credentials = (
            None
            if tls is None
            else grpc.ssl_channel_credentials(
                root_certificates=tls.ca,
                private_key=tls.private_key,
                certificate_chain=tls.certificate,
            )
        )

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    endpoint, self._credentials, options=_CHANNEL_OPTIONS
                )
            self._channels[endpoint] = channel
        return channel

    async def forget(self, endpoint: str) -> None:
        """Close and drop the cached channel of ``endpoint`` (e.g. after the registry changed)."""
        channel = self._channels.pop(endpoint, None)
        self._callables = {k: v for k, v in self._callables.items() if k[0] != endpoint}
        if channel is not None:
            await channel.close(None)

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = list(self._channels.values()), {}
        self._callables = {}
        for channel in channels:
            await channel.close(None)

    def _timeout(self) -> float:
        remaining = call_deadline()
        if remaining is None:
            return self.timeout_seconds
        budget = remaining - min(MARGIN_SECONDS, remaining / 2)
        if budget <= 0.001:
            raise errors.DeadlineExceeded(
                common_pb2.PROVIDER_TIMEOUT,
                "no time left in the caller's deadline to ask the holder",
            )
        return min(self.timeout_seconds, budget)

    def _envelope(self, body: ForwardedBody, request_id: str) -> envelope_pb2.Envelope:
        body.header.request_id = request_id
        body.header.department_id = self.hub_id
        body.header.issued_at.CopyFrom(to_timestamp(now_us()))
        return sign(
            body.SerializeToString(deterministic=True), body.DESCRIPTOR.full_name, self.hub_key
        )

    async def fetch(
        self,
        endpoint: str,
        *,
        request_id: str,
        material_type: str,
        subject_id: str,
        fields: Sequence[str],
        consumer: str,
        purpose: str,
        reference: str = "",
        version: int = 0,
    ) -> provider_pb2.FetchResponse:
        """Ask the holder for exactly ``fields`` of a material.

        Raises Unavailable (PROVIDER_UNAVAILABLE) or DeadlineExceeded (PROVIDER_TIMEOUT).
        """
        body = provider_pb2.FetchRequest(
            material_type=material_type,
            subject_id=subject_id,
            fields=list(fields),
            consumer=consumer,
            purpose=purpose,
            reference=reference,
            version=version,
        )
        answer: provider_pb2.FetchResponse = await self._call(
            endpoint, FETCH, self._envelope(body, request_id), provider_pb2.FetchResponse
        )
        return answer

    async def store(
        self,
        endpoint: str,
        *,
        request_id: str,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        reference: str,
        version: int,
        submitted_by: str,
    ) -> provider_pb2.StoreResponse:
        """Ask the holder to hold a material pending (new subject or new version), invisible to
        Fetch until ``settle``. The answer's ``pending`` is false from an adapter of contract
        1, which stored at once.

        Raises Unavailable (PROVIDER_UNAVAILABLE) or DeadlineExceeded (PROVIDER_TIMEOUT).
        """
        body = provider_pb2.StoreRequest(
            material_type=material_type,
            subject_id=subject_id,
            fields=dict(fields),
            reference=reference,
            version=version,
            submitted_by=submitted_by,
            pending=True,
        )
        stored: provider_pb2.StoreResponse = await self._call(
            endpoint, STORE, self._envelope(body, request_id), provider_pb2.StoreResponse
        )
        return stored

    async def settle(
        self, endpoint: str, *, request_id: str, store_request_id: str, commit: bool
    ) -> bool:
        """Commit or abort the pending Store ``store_request_id``; whether the holder had it.

        Raises Unavailable (PROVIDER_UNAVAILABLE), DeadlineExceeded (PROVIDER_TIMEOUT), or the
        holder's refusal (e.g. FailedPrecondition when it was settled the other way).
        """
        body = provider_pb2.SettleRequest(store_request_id=store_request_id, commit=commit)
        answer: provider_pb2.SettleResponse = await self._call(
            endpoint, SETTLE, self._envelope(body, request_id), provider_pb2.SettleResponse
        )
        return answer.found

    async def inventory(
        self, endpoint: str, *, request_id: str, material_type: str
    ) -> provider_pb2.InventoryResponse:
        """What the holder holds of ``material_type``, and its pending Stores.

        Raises Unavailable (PROVIDER_UNAVAILABLE; also from an adapter of contract 1, which
        has no Inventory) or DeadlineExceeded (PROVIDER_TIMEOUT).
        """
        body = provider_pb2.InventoryRequest(material_type=material_type)
        answer: provider_pb2.InventoryResponse = await self._call(
            endpoint, INVENTORY, self._envelope(body, request_id), provider_pb2.InventoryResponse
        )
        return answer

    async def _call(
        self,
        endpoint: str,
        method: str,
        envelope: envelope_pb2.Envelope,
        response_type: type[Message],
    ) -> Any:
        if not endpoint:
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE, "the holder has no provider endpoint registered"
            )
        timeout = self._timeout()
        call = self._callables.get((endpoint, method))
        if call is None:
            # The answer is taken as bytes and decoded here: bytes that do not decode are the
            # holder's fault (CONTENT_MISMATCH), not a failure inside gRPC.
            call = self._callables[endpoint, method] = self._channel(endpoint).unary_unary(
                method,
                request_serializer=envelope_pb2.Envelope.SerializeToString,
                response_deserializer=None,
            )
        started = time.perf_counter()
        name = method.rsplit("/", 1)[-1]
        try:
            attributes = {"exchange.holder": endpoint, "rpc.method": name}
            with tracing.span("exchange.holder", attributes=attributes):
                metadata = tracing.outgoing_metadata()
                answer: bytes = await call(envelope, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            refusal = holder_refusal(error)
            outcome = "refused" if refusal is not None else "unavailable"
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome = "timeout"
            metrics.observe_holder(endpoint, name, outcome, time.perf_counter() - started)
            if refusal is not None:
                raise refusal from None
            code = error.code()
            reason = _holder_reason(error)
            if reason == common_pb2.SUBJECT_ID_NOT_NORMALISED:
                raise errors.FailedPrecondition(
                    common_pb2.SUBJECT_ID_NOT_NORMALISED,
                    "the holder keeps this subject under an id not in normal form; it must "
                    "correct its records before the material can be served or stored",
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.DeadlineExceeded(
                    common_pb2.PROVIDER_TIMEOUT,
                    f"the holder did not answer within {timeout:.3f} s",
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise errors.Unavailable(
                    common_pb2.PROVIDER_UNAVAILABLE, "the holder's adapter cannot be reached"
                ) from None
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE,
                f"the holder's adapter failed the call ({code.name})",
            ) from None
        metrics.observe_holder(endpoint, name, "ok", time.perf_counter() - started)
        decoded = response_type()
        try:
            decoded.ParseFromString(answer)
        except DecodeError:
            raise errors.FailedPrecondition(
                common_pb2.CONTENT_MISMATCH,
                f"the holder's answer is not a valid {response_type.DESCRIPTOR.full_name}",
            ) from None
        return decoded


def _holder_reason(error: grpc.aio.AioRpcError) -> int:
    """The contract reason in a holder's refusal (its google.rpc.ErrorInfo), or 0."""
    try:
        info = error_info(error.trailing_metadata())
    except DecodeError:
        return 0
    if info is None or info.domain != DOMAIN:
        return 0
    return REASONS.get(info.reason, 0)


# A holder that answers with one of these has decided: the request was wrong for its data (a
# value its column cannot hold, a constraint), not that it could not be reached.
HOLDER_DECISIONS = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
}


def holder_refusal(error: grpc.aio.AioRpcError) -> errors.ExchangeError | None:
    """The caller's refusal for a holder's INVALID_ARGUMENT or FAILED_PRECONDITION answer: the
    same status, the holder's reason (SCHEMA_VIOLATION when it names none the contract knows)
    and its message; None for any other status (the holder could not do the call)."""
    kind = HOLDER_DECISIONS.get(error.code())
    if kind is None:
        return None
    reason = common_pb2.SCHEMA_VIOLATION
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason in common_pb2.Reason.DESCRIPTOR.values_by_name:
            reason = common_pb2.Reason.Value(info.reason)
    # The adapter's message names columns and constraints, never values (adapters/backends).
    return kind(reason, f"the holder refused: {(error.details() or '')[:300]}")
