"""The table of RPCs: each method's body type, response type, ledger kind and service function.

Handlers are built from this table, so every method goes through the same Pipeline. Methods of
the contract that are not in the table answer UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf.message import Message

from exchange.api.pipeline import Method, Pipeline, StreamMethod
from exchange.flows import audit, registry
from exchange.v1 import audit_pb2, ledger_pb2, registry_pb2

REGISTRY = "exchange.v1.Registry"

REGISTRY_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{REGISTRY}/RegisterDepartment",
        registry_pb2.RegisterDepartmentRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.DEPARTMENT_REGISTRATION,
        registry.register_department,
    ),
    Method(
        f"/{REGISTRY}/RotateKey",
        registry_pb2.RotateKeyRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.KEY_ROTATION,
        registry.rotate_key,
    ),
    Method(
        f"/{REGISTRY}/RevokeKey",
        registry_pb2.RevokeKeyRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.KEY_REVOCATION,
        registry.revoke_key,
    ),
    Method(
        f"/{REGISTRY}/GetDepartment",
        registry_pb2.GetDepartmentRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.READ,
        registry.get_department,
    ),
    Method(
        f"/{REGISTRY}/ListDepartments",
        registry_pb2.ListDepartmentsRequest,
        registry_pb2.ListDepartmentsResponse,
        ledger_pb2.READ,
        registry.list_departments,
    ),
    Method(
        f"/{REGISTRY}/SetState",
        registry_pb2.SetStateRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.STATE_CHANGE,
        registry.set_state,
    ),
)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def handlers(
    service: str,
    methods: Iterable[Method[Any, Any] | StreamMethod[Any, Any]],
    pipeline: Pipeline,
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler serving ``methods`` of ``service`` through ``pipeline``.

    Requests arrive as raw bytes (no deserializer) so that bytes that are not an Envelope get the
    pipeline's precise MALFORMED_ENVELOPE refusal instead of grpc's generic deserialization error.
    """
    table: dict[str, grpc.RpcMethodHandler] = {}  # type: ignore[type-arg]
    for method in methods:
        name = method.name.rsplit("/", 1)[1]
        if isinstance(method, StreamMethod):

            # grpc.aio recognises streaming handlers by being async generator functions.
            async def streamer(
                request: bytes,
                context: grpc.aio.ServicerContext[Any, Any],
                method: StreamMethod[Any, Any] = method,
            ) -> AsyncIterator[Any]:
                async for item in pipeline.stream(method, request, context):
                    yield item

            table[name] = grpc.unary_stream_rpc_method_handler(
                streamer, request_deserializer=None, response_serializer=_serialize
            )
            continue

        async def handler(
            request: bytes,
            context: grpc.aio.ServicerContext[Any, Any],
            method: Method[Any, Any] = method,
        ) -> Any:
            return await pipeline(method, request, context)

        table[name] = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=None, response_serializer=_serialize
        )
    return grpc.method_handlers_generic_handler(service, table)


AUDIT = "exchange.v1.Audit"

AUDIT_METHODS: tuple[Method[Any, Any] | StreamMethod[Any, Any], ...] = (
    Method(
        f"/{AUDIT}/GetCheckpoint",
        audit_pb2.GetCheckpointRequest,
        audit_pb2.CheckpointResponse,
        ledger_pb2.READ,
        audit.get_checkpoint,
    ),
    Method(
        f"/{AUDIT}/GetInclusionProof",
        audit_pb2.InclusionProofRequest,
        audit_pb2.InclusionProofResponse,
        ledger_pb2.READ,
        audit.get_inclusion_proof,
    ),
    Method(
        f"/{AUDIT}/GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest,
        audit_pb2.ConsistencyProofResponse,
        ledger_pb2.READ,
        audit.get_consistency_proof,
    ),
    StreamMethod(
        f"/{AUDIT}/StreamEntries",
        audit_pb2.StreamEntriesRequest,
        audit_pb2.EntryRecord,
        ledger_pb2.READ,
        audit.stream_entries,
    ),
)

# (service full name, methods) for every service the hub serves.
SERVICES: tuple[tuple[str, tuple[Method[Any, Any] | StreamMethod[Any, Any], ...]], ...] = (
    (REGISTRY, REGISTRY_METHODS),
    (AUDIT, AUDIT_METHODS),
)
