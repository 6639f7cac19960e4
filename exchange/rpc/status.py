"""The one mapping from exchange errors to gRPC status with ErrorInfo; the TLS peer."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from exchange.errors import ExchangeError

DOMAIN = "exchange.v1"
DETAILS_KEY = "grpc-status-details-bin"

_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def to_status(error: ExchangeError, ledger_sequence: int | None = None) -> status_pb2.Status:
    """Build the google.rpc.Status of a refusal: code, message, ErrorInfo (and RetryInfo)."""
    info = error_details_pb2.ErrorInfo(reason=error.reason_name, domain=DOMAIN)
    if ledger_sequence is not None:
        info.metadata["ledger_sequence"] = str(ledger_sequence)
    details = [_pack(info)]
    if error.retry_after is not None:
        seconds = max(error.retry_after, 0.0)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        )
        details.append(_pack(retry))
    return status_pb2.Status(
        code=getattr(code_pb2, error.code.value), message=error.message, details=details
    )


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort(
    context: grpc.aio.ServicerContext[object, object], status: status_pb2.Status
) -> NoReturn:
    """End the call with ``status``; never returns (raises grpc's abort exception)."""
    await context.abort(
        _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN),
        status.message,
        trailing_metadata=((DETAILS_KEY, status.SerializeToString()),),
    )
    raise AssertionError("grpc's abort returned")  # it raises; this line keeps NoReturn honest


def error_info(metadata: object) -> error_details_pb2.ErrorInfo | None:
    """Extract ErrorInfo from a call's trailing metadata (client side), or None."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


def peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    """The PEM client certificate of the TLS peer, or None (no TLS, or none presented)."""
    values = list(context.auth_context().get("x509_pem_cert", ()))
    return bytes(values[0]) if values else None
