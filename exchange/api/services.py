"""The table of RPCs: each method's body type, response type, ledger kind and service function.

Handlers are built from this table, so every method goes through the same Pipeline. Methods of
the contract that are not in the table answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf.message import Message

from exchange.api.drain import Drain, shutting_down
from exchange.api.pipeline import Method, Pipeline, StreamMethod
from exchange.api.supervision_methods import SUPERVISION, SUPERVISION_METHODS
from exchange.flows import audit, history, objections, registry
from exchange.flows import catalog as catalog_flows
from exchange.flows import check as check_flow
from exchange.flows import grants as grant_flows
from exchange.flows import holdings as holdings_flow
from exchange.flows import person as person_flows
from exchange.flows import prefill as prefill_flow
from exchange.flows import request as request_flow
from exchange.flows import submit as submit_flow
from exchange.observability import tracing
from exchange.routing.deadline import set_call_deadline
from exchange.rpc.status import abort, to_status
from exchange.v1 import (
    audit_pb2,
    catalog_pb2,
    exchange_pb2,
    grants_pb2,
    ledger_pb2,
    person_pb2,
    registry_pb2,
)

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
    Method(
        f"/{REGISTRY}/UpdateDepartment",
        registry_pb2.UpdateDepartmentRequest,
        registry_pb2.DepartmentResponse,
        ledger_pb2.DEPARTMENT_REGISTRATION,
        registry.update_department,
    ),
)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def handlers(
    service: str,
    methods: Iterable[Method[Any, Any] | StreamMethod[Any, Any]],
    pipeline: Pipeline,
    drain: Drain,
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A generic handler serving ``methods`` of ``service`` through ``pipeline``.

    Requests arrive as raw bytes (no deserializer) so that bytes that are not an Envelope get the
    pipeline's precise MALFORMED_ENVELOPE refusal instead of grpc's generic deserialization error.
    Each call passes ``drain`` (exchange.api.drain) first: once the hub shuts down, a call that
    has not started, or that its grace cut, is answered UNAVAILABLE ``SHUTTING_DOWN``.
    """
    table: dict[str, grpc.RpcMethodHandler] = {}  # type: ignore[type-arg]
    for method in methods:
        name = method.name.rsplit("/", 1)[1]
        if tracing.enabled() and isinstance(method, Method):
            method = dataclasses.replace(method, run=tracing.traced("exchange.flow", method.run))
        if isinstance(method, StreamMethod):
            # grpc.aio recognises streaming handlers by being async generator functions.
            async def streamer(
                request: bytes,
                context: grpc.aio.ServicerContext[Any, Any],
                method: StreamMethod[Any, Any] = method,
            ) -> AsyncIterator[Any]:
                if not drain.admit(stream=True):
                    await abort(context, to_status(shutting_down()))
                try:
                    async for item in pipeline.stream(method, request, context):
                        yield item
                except asyncio.CancelledError:
                    if not drain.answer_cancelled():
                        raise
                    await abort(context, to_status(shutting_down()))
                finally:
                    drain.leave()

            table[name] = grpc.unary_stream_rpc_method_handler(
                streamer, request_deserializer=None, response_serializer=_serialize
            )
            continue

        async def handler(
            request: bytes,
            context: grpc.aio.ServicerContext[Any, Any],
            method: Method[Any, Any] = method,
        ) -> Any:
            if not drain.admit():
                await abort(context, to_status(shutting_down()))
            try:
                # The flows see the caller's deadline as a plain float
                # (exchange.routing.deadline), so a provider call can end in time for its
                # failure to be recorded.
                set_call_deadline(context.time_remaining())
                if not tracing.enabled():
                    return await pipeline(method, request, context)
                metadata = context.invocation_metadata() or ()
                with tracing.span("exchange.call", metadata, {"rpc.method": method.name}):
                    return await pipeline(method, request, context)
            except asyncio.CancelledError:
                if not drain.answer_cancelled():
                    raise
                await abort(context, to_status(shutting_down()))
            finally:
                drain.leave()

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

CATALOG = "exchange.v1.Catalog"

CATALOG_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{CATALOG}/PublishMaterialType",
        catalog_pb2.PublishMaterialTypeRequest,
        catalog_pb2.MaterialTypeResponse,
        ledger_pb2.MATERIAL_TYPE_PUBLICATION,
        catalog_flows.publish_material_type,
    ),
    Method(
        f"/{CATALOG}/GetMaterialType",
        catalog_pb2.GetMaterialTypeRequest,
        catalog_pb2.MaterialTypeResponse,
        ledger_pb2.READ,
        catalog_flows.get_material_type,
    ),
    Method(
        f"/{CATALOG}/ListCatalog",
        catalog_pb2.ListCatalogRequest,
        catalog_pb2.ListCatalogResponse,
        ledger_pb2.READ,
        catalog_flows.list_catalog,
    ),
    Method(
        f"/{CATALOG}/DefinePurpose",
        catalog_pb2.DefinePurposeRequest,
        catalog_pb2.PurposeResponse,
        ledger_pb2.PURPOSE_DEFINITION,
        catalog_flows.define_purpose,
    ),
    Method(
        f"/{CATALOG}/RegisterForm",
        catalog_pb2.RegisterFormRequest,
        catalog_pb2.FormResponse,
        ledger_pb2.FORM_REGISTRATION,
        catalog_flows.register_form,
    ),
    Method(
        f"/{CATALOG}/GetForm",
        catalog_pb2.GetFormRequest,
        catalog_pb2.FormResponse,
        ledger_pb2.READ,
        catalog_flows.get_form,
    ),
)

GRANTS = "exchange.v1.Grants"

GRANTS_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{GRANTS}/IssueGrant",
        grants_pb2.IssueGrantRequest,
        grants_pb2.GrantResponse,
        ledger_pb2.GRANT_ISSUANCE,
        grant_flows.issue_grant,
    ),
    Method(
        f"/{GRANTS}/RevokeGrant",
        grants_pb2.RevokeGrantRequest,
        grants_pb2.GrantResponse,
        ledger_pb2.GRANT_REVOCATION,
        grant_flows.revoke_grant,
    ),
    Method(
        f"/{GRANTS}/ListGrants",
        grants_pb2.ListGrantsRequest,
        grants_pb2.ListGrantsResponse,
        ledger_pb2.READ,
        grant_flows.list_grants,
    ),
)

EXCHANGE = "exchange.v1.Exchange"

EXCHANGE_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{EXCHANGE}/Check",
        exchange_pb2.CheckRequest,
        exchange_pb2.CheckResponse,
        ledger_pb2.CHECK,
        check_flow.check,
    ),
    Method(
        f"/{EXCHANGE}/Submit",
        exchange_pb2.SubmitRequest,
        exchange_pb2.SubmitResponse,
        ledger_pb2.SUBMIT,
        submit_flow.submit,
    ),
    Method(
        f"/{EXCHANGE}/Request",
        exchange_pb2.MaterialRequest,
        exchange_pb2.MaterialResponse,
        ledger_pb2.REQUEST,
        request_flow.request,
    ),
    Method(
        f"/{EXCHANGE}/Prefill",
        exchange_pb2.PrefillRequest,
        exchange_pb2.PrefillResponse,
        ledger_pb2.PREFILL,
        prefill_flow.prefill,
    ),
    Method(
        f"/{EXCHANGE}/PublishHoldings",
        exchange_pb2.PublishHoldingsRequest,
        exchange_pb2.PublishHoldingsResponse,
        ledger_pb2.SUBMIT,
        holdings_flow.publish_holdings,
    ),
    Method(
        f"/{EXCHANGE}/AccessHistory",
        exchange_pb2.AccessHistoryRequest,
        exchange_pb2.AccessHistoryResponse,
        ledger_pb2.ACCESS_HISTORY,
        history.access_history,
    ),
    Method(
        f"/{EXCHANGE}/FileObjection",
        exchange_pb2.FileObjectionRequest,
        exchange_pb2.ObjectionResponse,
        ledger_pb2.OBJECTION_FILING,
        objections.file_objection,
    ),
    Method(
        f"/{EXCHANGE}/ListObjections",
        exchange_pb2.ListObjectionsRequest,
        exchange_pb2.ListObjectionsResponse,
        ledger_pb2.READ,
        objections.list_objections,
    ),
    Method(
        f"/{EXCHANGE}/ResolveObjection",
        exchange_pb2.ResolveObjectionRequest,
        exchange_pb2.ObjectionResponse,
        ledger_pb2.OBJECTION_RESOLUTION,
        objections.resolve_objection,
    ),
)

PERSON = "exchange.v1.Person"

PERSON_METHODS: tuple[Method[Any, Any], ...] = (
    Method(
        f"/{PERSON}/GiveConsent",
        person_pb2.GiveConsentRequest,
        person_pb2.ConsentResponse,
        ledger_pb2.CONSENT_GIVEN,
        person_flows.give_consent,
    ),
    Method(
        f"/{PERSON}/RevokeConsent",
        person_pb2.RevokeConsentRequest,
        person_pb2.ConsentResponse,
        ledger_pb2.CONSENT_REVOCATION,
        person_flows.revoke_consent,
    ),
    Method(
        f"/{PERSON}/ListConsents",
        person_pb2.ListConsentsRequest,
        person_pb2.ListConsentsResponse,
        ledger_pb2.CONSENT_LISTING,
        person_flows.list_consents,
    ),
    Method(
        f"/{PERSON}/ConfirmForm",
        person_pb2.ConfirmFormRequest,
        person_pb2.ConfirmFormResponse,
        ledger_pb2.FORM_CONFIRMATION,
        person_flows.confirm_form,
    ),
)

# (service full name, methods) for every service the hub serves.
SERVICES: tuple[tuple[str, tuple[Method[Any, Any] | StreamMethod[Any, Any], ...]], ...] = (
    (REGISTRY, REGISTRY_METHODS),
    (AUDIT, AUDIT_METHODS),
    (CATALOG, CATALOG_METHODS),
    (GRANTS, GRANTS_METHODS),
    (EXCHANGE, EXCHANGE_METHODS),
    (SUPERVISION, SUPERVISION_METHODS),
    (PERSON, PERSON_METHODS),
)
