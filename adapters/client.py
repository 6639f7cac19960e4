"""Client SDK: signed, idempotent calls to the hub.

Every call wraps its body in an envelope signed by the department's key, with a request id and
an issue time in the header. Transient failures (UNAVAILABLE) are retried with the same request
id and the same bytes, so a retry never has a second effect. Refusals raise ``Refused`` with the
contract's reason.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from exchange.api.status import error_info
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import TlsIdentity
from exchange.v1 import envelope_pb2

Response = TypeVar("Response", bound=Message)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class Refused(Exception):
    """The hub (or a provider through it) refused or failed a call.

    ``code`` is the gRPC status, ``reason`` the contract's reason name (e.g. "NO_GRANT"),
    ``message`` the hub's human message, ``ledger_sequence`` the refusal's ledger entry if any.
    """

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, ledger_sequence: int | None
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.ledger_sequence = ledger_sequence

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> Refused:
        """Decode a failed call's status and ErrorInfo."""
        info = error_info(error.trailing_metadata())
        sequence = info.metadata.get("ledger_sequence") if info is not None else None
        return cls(
            error.code(),
            info.reason if info is not None else "",
            error.details() or "",
            int(sequence) if sequence else None,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the client is: department id, signing key and TLS client identity."""

    department_id: str
    signing_key: SigningKey
    tls: TlsIdentity | None


def channel(
    target: str, tls: TlsIdentity | None, server_name: str | None = None
) -> grpc.aio.Channel:
    """An aio channel to ``target``: mTLS with ``tls``, or plaintext if ``tls`` is None."""
    if tls is None:
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.private_key, certificate_chain=tls.certificate
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(target, credentials, options=options)


class HubClient:
    """Calls hub methods as one department. Use as an async context manager or ``close()``."""

    def __init__(
        self,
        target: str,
        identity: Identity,
        *,
        server_name: str | None = None,
        retries: int = 3,
        backoff_seconds: float = 0.2,
    ) -> None:
        self.identity = identity
        self.channel = channel(target, identity.tls, server_name)
        self.retries = retries
        self.backoff_seconds = backoff_seconds

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)

    def envelope(self, body: Message, request_id: str | None = None) -> envelope_pb2.Envelope:
        """Fill ``body``'s header (request id, issue time, department) and sign it."""
        header: Any = body.header  # type: ignore[attr-defined]
        header.request_id = request_id or uuid.uuid4().hex
        header.issued_at.CopyFrom(to_timestamp(now_us()))
        header.department_id = self.identity.department_id
        return sign(
            body.SerializeToString(deterministic=True),
            body.DESCRIPTOR.full_name,
            self.identity.signing_key,
        )

    async def send(
        self,
        method: str,
        envelope: envelope_pb2.Envelope,
        response_type: type[Response],
        *,
        timeout: float = 30.0,
    ) -> Response:
        """Send a prepared envelope to ``method`` ("/exchange.v1.Registry/ListDepartments").

        Retries UNAVAILABLE with the same bytes. Raises Refused.
        """
        call = self.channel.unary_unary(
            method,
            request_serializer=envelope_pb2.Envelope.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        attempt = 0
        while True:
            try:
                response: Response = await call(envelope, timeout=timeout)
                return response
            except grpc.aio.AioRpcError as error:
                if error.code() in RETRYABLE and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))
                    continue
                raise Refused.from_rpc_error(error) from None

    async def call(
        self,
        method: str,
        body: Message,
        response_type: type[Response],
        *,
        request_id: str | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """Sign ``body`` and call ``method``; return the response. Raises Refused."""
        return await self.send(
            method, self.envelope(body, request_id), response_type, timeout=timeout
        )
