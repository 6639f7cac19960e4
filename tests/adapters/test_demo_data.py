"""The demo's synthetic departments: databases, mappings and adapters that really serve."""

from __future__ import annotations

from pathlib import Path

from adapters import demo_data
from adapters.holdings import publish_holdings
from adapters.settings import load
from exchange.crypto.keystore import Keystore
from exchange.v1 import common_pb2, exchange_pb2, provider_pb2, registry_pb2
from tests.adapters.conftest import HubCaller
from tests.conftest import RunningHub


async def test_demo_departments_serve_every_catalogued_field(
    keystore: Keystore, tmp_path: Path
) -> None:
    departments = demo_data.write_departments(tmp_path / "departments", keystore.root, {})
    demo_data.create_keys(keystore)
    servers = await demo_data.start_adapters(departments)
    try:
        by_type = {entry.material_type: entry for entry in demo_data.CATALOG}
        for department, server in zip(departments, servers, strict=True):
            assert load(department.config).department_id == department.department_id
            caller = HubCaller(
                f"127.0.0.1:{server.port}", keystore.operator_tls(), keystore.hub_signing_key()
            )
            for material_type in department.material_types:
                fields = by_type[material_type].fields
                answer = await caller.fetch(
                    provider_pb2.FetchRequest(
                        material_type=material_type,
                        subject_id=demo_data.ZHANG_SAN,
                        fields=list(fields),
                    )
                )
                record = exchange_pb2.MaterialRecord.FromString(answer.material.payload)
                assert set(record.fields) == set(fields)
                assert record.holder == department.department_id
            await caller.close()
    finally:
        for server in servers:
            await server.stop(0)


def test_wang_wu_has_no_marriage_record_to_collect(tmp_path: Path, keystore: Keystore) -> None:
    departments = demo_data.write_departments(tmp_path, keystore.root, {})
    from adapters.backends import open_backend

    civil = next(d for d in departments if d.department_id == demo_data.CIVIL_AFFAIRS)
    backend = open_backend(load(civil.config))
    backend.validate()
    assert backend.fetch(demo_data.MARRIAGE, demo_data.WANG_WU, ["marital_status"]) is None
    assert {f.material_type for f in demo_data.FORM} <= {e.material_type for e in demo_data.CATALOG}
    backend.close()


async def test_demo_catalog_and_holdings_are_accepted_by_a_real_hub(
    hub: RunningHub, tmp_path: Path
) -> None:
    departments = demo_data.write_departments(tmp_path / "departments", hub.keystore.root, {})
    demo_data.create_keys(hub.keystore)
    servers = await demo_data.start_adapters(departments)
    try:
        for department, server in zip(departments, servers, strict=True):
            key = hub.keystore.department_signing_key(department.department_id)
            await hub.operator.register_department(
                department=registry_pb2.Department(
                    id=department.department_id,
                    name=department.name,
                    roles=[common_pb2.PROVIDER],
                    provider_endpoint=f"127.0.0.1:{server.port}",
                    keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
                )
            )
            client = hub.client(department.department_id)
            for entry in demo_data.CATALOG:
                if entry.owner != department.department_id:
                    continue
                await client.publish_material_type(material_type=entry.to_proto())
                summary = await publish_holdings(client, server.backend, entry.material_type)
                assert set(summary.outcomes) == {"STORED"} and summary.total >= 2
    finally:
        for server in servers:
            await server.stop(0)
