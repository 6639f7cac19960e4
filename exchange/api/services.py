"""The table of RPCs: each method's body type, response type, ledger kind and service function.

Servicers are built from this table, so every method goes through the same Pipeline. Methods of
the contract that are not in the table answer UNIMPLEMENTED (the generated base class does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from exchange.api.pipeline import Method, Pipeline
from exchange.flows import registry
from exchange.v1 import ledger_pb2, registry_pb2, registry_pb2_grpc

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


def bind(base: type, methods: Iterable[Method[Any, Any]], pipeline: Pipeline) -> Any:
    """An instance of the generated servicer ``base`` whose listed methods run ``pipeline``."""
    handlers: dict[str, Callable[..., Any]] = {}
    for method in methods:

        async def handler(
            self: Any,
            request: Any,
            context: grpc.aio.ServicerContext[Any, Any],
            method: Method[Any, Any] = method,
        ) -> Any:
            return await pipeline(method, request, context)

        handlers[method.name.rsplit("/", 1)[1]] = handler
    return type(base.__name__, (base,), handlers)()


# (service full name, generated servicer base, add-to-server function, methods)
SERVICES: tuple[tuple[str, type, Callable[[Any, Any], None], tuple[Method[Any, Any], ...]], ...] = (
    (
        REGISTRY,
        registry_pb2_grpc.RegistryServicer,
        registry_pb2_grpc.add_RegistryServicer_to_server,
        REGISTRY_METHODS,
    ),
)
