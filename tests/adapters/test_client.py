"""The client SDK against a real hub and a real adapter: retries, receipts, end-to-end checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from adapters.client import HubClient, Identity, Material, Refused, VerificationError
from adapters.holdings import publish_holdings
from adapters.provider import ProviderServer
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import Keystore
from exchange.ledger import NoteVerifier, verifier_key
from exchange.v1 import catalog_pb2, common_pb2, exchange_pb2, registry_pb2
from tests.adapters.conftest import (
    DEPARTMENT,
    MARRIAGE,
    SUBJECT,
    StartAdapter,
    civil_database,
    sql_settings,
)
from tests.conftest import RunningHub

CONSUMER = "js.nj.social-security"
PURPOSE = "pension-eligibility"
REGISTER = "/exchange.v1.Registry/RegisterDepartment"


class LoseFirstAnswer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Lets the first call reach the hub, then drops its answer as a network failure would."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.sent.append(request.SerializeToString())
        call = await continuation(details, request)
        response = await call
        if len(self.sent) == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset after the hub answered",
                debug_error_string="",
            )
        return response


async def test_retry_after_a_lost_answer_gets_the_original_answer_once(hub: RunningHub) -> None:
    key = hub.keystore.add_department(DEPARTMENT)
    lossy = LoseFirstAnswer()
    client = HubClient(
        hub.target,
        Identity(
            hub.config.hub_id, hub.keystore.operator_signing_key(), hub.keystore.operator_tls()
        ),
        server_name="localhost",
        retries=2,
        backoff_seconds=0.01,
        interceptors=[cast(Any, lossy)],
    )
    hub.clients.append(client)
    size = hub.server.hub.ledger.size()
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id=DEPARTMENT,
            name="Civil affairs",
            roles=[common_pb2.COLLECTOR],
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
    )
    answer = await client.call(REGISTER, body, registry_pb2.DepartmentResponse)
    # Registering twice would be DEPARTMENT_EXISTS: the retry was answered, not re-executed.
    assert answer.department.id == DEPARTMENT
    assert len(lossy.sent) == 2 and lossy.sent[0] == lossy.sent[1]  # same request id, same bytes
    assert hub.server.hub.ledger.size() == size + 1  # one registration, one entry
    assert answer.receipt.sequence == size


async def test_receipts_verify_against_the_hub_key_and_a_foreign_key_is_refused(
    hub: RunningHub,
) -> None:
    await hub.register(CONSUMER)
    identity = Identity(
        CONSUMER,
        hub.keystore.department_signing_key(CONSUMER),
        hub.keystore.department_tls(CONSUMER),
    )
    good = HubClient(
        hub.target,
        identity,
        server_name="localhost",
        hub_verifier=hub.server.hub.ledger.verifier_key,
    )
    hub.clients.append(good)
    department = await good.department(CONSUMER)
    assert department.id == CONSUMER

    answer = await good.list_departments()
    forged = common_pb2.Receipt()
    forged.CopyFrom(answer.receipt)
    forged.leaf_hash = bytes(32)
    with pytest.raises(VerificationError, match="not in its checkpoint"):
        good.verify_receipt(forged)

    impostor = verifier_key(hub.config.origin, SigningKey.generate().public_bytes)
    suspicious = HubClient(hub.target, identity, server_name="localhost", hub_verifier=impostor)
    hub.clients.append(suspicious)
    with pytest.raises(VerificationError, match="does not verify"):
        await suspicious.department(CONSUMER)


@dataclass
class Exchange:
    """A hub, the civil-affairs adapter with its holdings published, and a consumer client."""

    hub: RunningHub
    adapter: ProviderServer
    consumer: HubClient
    provider: HubClient


async def _register(hub: RunningHub, department_id: str, roles: list[Any], endpoint: str) -> None:
    key = hub.keystore.department_signing_key(department_id)
    await hub.operator.register_department(
        department=registry_pb2.Department(
            id=department_id,
            name=department_id,
            roles=roles,
            provider_endpoint=endpoint,
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
    )


@pytest.fixture
async def exchange(hub: RunningHub, tmp_path: Path, start_adapter: StartAdapter) -> Exchange:
    keystore: Keystore = hub.keystore
    keystore.add_department(DEPARTMENT, server_names=("localhost", "127.0.0.1"))
    url = civil_database(f"sqlite:///{tmp_path / 'civil.db'}")
    adapter = await start_adapter(sql_settings(url, keystore.root, tmp_path))
    await _register(hub, DEPARTMENT, [common_pb2.PROVIDER], f"127.0.0.1:{adapter.port}")
    provider = hub.client(DEPARTMENT)
    await provider.publish_material_type(
        material_type=catalog_pb2.MaterialType(
            id=MARRIAGE,
            owner=DEPARTMENT,
            name="Marriage record",
            sharing_class=catalog_pb2.UNCONDITIONAL,
            fields=[
                catalog_pb2.FieldSpec(
                    name="marital_status", type=catalog_pb2.STRING, required=True
                ),
                catalog_pb2.FieldSpec(name="spouse_name", type=catalog_pb2.STRING),
                catalog_pb2.FieldSpec(name="registered_on", type=catalog_pb2.DATE),
            ],
        )
    )
    await hub.operator.define_purpose(
        purpose=catalog_pb2.Purpose(
            id=PURPOSE, name="Pension eligibility", legal_basis="Social Insurance Law art. 16"
        )
    )
    summary = await publish_holdings(provider, adapter.backend, MARRIAGE)
    assert summary.outcomes == {"STORED": 2}
    keystore.add_department(CONSUMER)
    await _register(hub, CONSUMER, [common_pb2.CONSUMER], "")
    consumer = HubClient(
        hub.target,
        Identity(
            CONSUMER,
            keystore.department_signing_key(CONSUMER),
            keystore.department_tls(CONSUMER),
        ),
        server_name="localhost",
        hub_verifier=hub.server.hub.ledger.verifier_key,
    )
    hub.clients.append(consumer)
    return Exchange(hub, adapter, consumer, provider)


async def test_publishing_again_changes_nothing(exchange: Exchange) -> None:
    summary = await publish_holdings(exchange.provider, exchange.adapter.backend, MARRIAGE)
    assert summary.outcomes == {"ALREADY_ON_FILE": 2}


async def test_check_and_request_are_typed_and_verified_end_to_end(exchange: Exchange) -> None:
    check = await exchange.consumer.check(MARRIAGE, SUBJECT)
    assert check.on_file and check.holder == DEPARTMENT and check.version == 1
    material = await exchange.consumer.request(
        MARRIAGE, SUBJECT, purpose=PURPOSE, fields=["marital_status"]
    )
    assert isinstance(material, Material)
    assert material.fields == {"marital_status": "married"}  # only what was asked
    assert (material.holder, material.reference, material.version) == (
        DEPARTMENT,
        check.reference,
        1,
    )
    assert material.receipt is not None and material.receipt.sequence > check.receipt.sequence


async def test_tampered_provider_answer_is_rejected_by_the_client(exchange: Exchange) -> None:
    material = await exchange.consumer.request(
        MARRIAGE, SUBJECT, purpose=PURPOSE, fields=["marital_status"], request_id="req-42"
    )
    verify = exchange.consumer.verify_material
    genuine = material.envelope

    def altered(**changes: Any) -> Any:
        record = exchange_pb2.MaterialRecord.FromString(genuine.payload)
        for name, value in changes.items():
            if name == "fields":
                record.fields.clear()
                record.fields.update(value)
            else:
                setattr(record, name, value)
        envelope = type(genuine)()
        envelope.CopyFrom(genuine)
        envelope.payload = record.SerializeToString()
        return envelope

    # The genuine answer verifies on its own, again.
    again = await verify(
        genuine,
        material_type=MARRIAGE,
        subject_id=SUBJECT,
        request_id="req-42",
        fields=["marital_status"],
    )
    assert again.fields == {"marital_status": "married"}

    # A value changed in flight: the holder's signature no longer covers the bytes.
    with pytest.raises(VerificationError, match="not signed by its holder"):
        await verify(
            altered(fields={"marital_status": "single"}),
            material_type=MARRIAGE,
            subject_id=SUBJECT,
        )
    # Re-signed by someone else's key.
    record = exchange_pb2.MaterialRecord.FromString(genuine.payload)
    record.fields["marital_status"] = "single"
    forged = sign(record.SerializeToString(), genuine.payload_type, SigningKey.generate())
    with pytest.raises(VerificationError, match="not signed by its holder"):
        await verify(forged, material_type=MARRIAGE, subject_id=SUBJECT)
    # A genuine record replayed as the answer to another request, subject or type.
    with pytest.raises(VerificationError, match="another request"):
        await verify(genuine, material_type=MARRIAGE, subject_id=SUBJECT, request_id="req-43")
    with pytest.raises(VerificationError, match="another subject"):
        await verify(genuine, material_type=MARRIAGE, subject_id="990101199202020029")
    with pytest.raises(VerificationError, match="fields not asked for"):
        await verify(genuine, material_type=MARRIAGE, subject_id=SUBJECT, fields=["registered_on"])


async def test_refusal_carries_the_reason(exchange: Exchange) -> None:
    with pytest.raises(Refused) as caught:
        await exchange.consumer.request(
            MARRIAGE, SUBJECT, purpose="marketing", fields=["marital_status"]
        )
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "UNKNOWN_PURPOSE"
    assert caught.value.ledger_sequence is not None


async def test_submit_stores_at_the_adapter_once_then_already_on_file(
    exchange: Exchange, tmp_path: Path
) -> None:
    hub = exchange.hub
    hub.keystore.add_department("demo.township-office")
    await _register(hub, "demo.township-office", [common_pb2.COLLECTOR], "")
    collector = hub.client("demo.township-office")
    collector.hub_verifier = NoteVerifier.parse(hub.server.hub.ledger.verifier_key)
    newcomer = "990101198803030033"
    fields = {"marital_status": "married", "registered_on": "2024-02-14"}
    first = await collector.submit(MARRIAGE, newcomer, fields)
    assert first.outcome == "STORED" and first.version == 1
    held = exchange.adapter.backend.fetch(MARRIAGE, newcomer, ["marital_status", "registered_on"])
    assert held is not None and dict(held.fields) == fields  # written at the holder's database
    again = await collector.submit(MARRIAGE, newcomer, fields)
    assert (again.outcome, again.reference) == ("ALREADY_ON_FILE", first.reference)
