"""A small exchange for flow tests: a real hub and two real provider adapters on loopback.

- civil affairs holds marriage records (CONDITIONAL) in a SQLite database, SQL backend;
- public security holds household registrations (UNCONDITIONAL) in a CSV file and criminal
  records (NOT_SHARED) in a JSON Lines file, files backend;
- social security is a consumer, a township office a collector, a township form tool a form tool;
- the province's identity platform (a development identity provider) signs subject assertions.

Each adapter's backend is wrapped in a ``SpyBackend`` that records what the hub asked for (to
prove that ungranted fields are never asked) and can be made slow.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Date, MetaData, String, Table, create_engine

from adapters.backends import Backend, Holding, open_backend
from adapters.client import HubClient, Identity
from adapters.holdings import publish_holdings
from adapters.identity import Assurance, DevelopmentIdentityProvider
from adapters.provider import ProviderServer
from adapters.settings import parse
from exchange.v1 import catalog_pb2, common_pb2, envelope_pb2, grants_pb2, registry_pb2
from tests.conftest import HUB_ID, RunningHub, StartHub

CIVIL = "js.nj.civil-affairs"
POLICE = "js.nj.public-security"
SOCIAL = "js.nj.social-security"
TOWNSHIP = "js.nj.township-office"
FORM_TOOL = "js.nj.township-form"
IDENTITY = "js.identity-platform"

MARRIAGE = "marriage-record"
HOUSEHOLD = "household-registration"
CRIMINAL = "criminal-record"

ASSISTANCE = "social-assistance"
MARRIAGE_REGISTRATION = "marriage-registration"
FORM = "township-subsidy-application"

ANNA = "990101199001010019"  # married, household registered, a criminal record
BEN = "990101199202020029"  # household registered only
CARL = "990101199303030031"  # nothing on file

MARRIAGE_FIELDS = ("marital_status", "spouse_name", "registered_on")


class SpyBackend:
    """A real backend, recording every fetch and store the hub makes, its fetches and stores
    optionally slowed down."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.fetches: list[tuple[str, str, tuple[str, ...]]] = []
        self.stores: list[tuple[str, str]] = []
        self.delay = 0.0
        self.store_delay = 0.0

    def validate(self) -> None:
        self.inner.validate()

    def material_types(self) -> Sequence[str]:
        return self.inner.material_types()

    def fields_of(self, material_type: str) -> Sequence[str]:
        return self.inner.fields_of(material_type)

    def store_fields(self, material_type: str) -> Sequence[str] | None:
        return self.inner.store_fields(material_type)

    def fetch(self, material_type: str, subject_id: str, fields: Sequence[str]) -> Holding | None:
        self.fetches.append((material_type, subject_id, tuple(fields)))
        if self.delay:
            time.sleep(self.delay)  # runs in the adapter's worker thread
        return self.inner.fetch(material_type, subject_id, fields)

    def store(
        self, material_type: str, subject_id: str, fields: Mapping[str, str], **kw: Any
    ) -> None:
        self.stores.append((material_type, subject_id))
        if self.store_delay:
            time.sleep(self.store_delay)  # runs in the adapter's worker thread
        self.inner.store(material_type, subject_id, fields, **kw)

    def list_holdings(self, material_type: str) -> Iterator[Holding]:
        return self.inner.list_holdings(material_type)

    def close(self) -> None:
        self.inner.close()


def civil_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    metadata = MetaData()
    marriages = Table(
        "marriages",
        metadata,
        Column("citizen_id", String(32), primary_key=True),
        Column("status", String(32), nullable=False),
        Column("spouse", String(64)),
        Column("reg_date", Date),
        Column("hub_ref", String(64)),
        Column("collected_by", String(128)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            marriages.insert(),
            [
                {
                    "citizen_id": ANNA,
                    "status": "married",
                    "spouse": "李四 (demo)",
                    "reg_date": dt.date(2018, 5, 20),
                }
            ],
        )
    engine.dispose()
    return url


def police_files(directory: Path) -> tuple[Path, Path]:
    people = directory / "people.csv"
    with people.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id_no", "name", "birth", "addr"])
        writer.writeheader()
        writer.writerow(
            {"id_no": ANNA, "name": "张三 (demo)", "birth": "1990-01-01", "addr": "示例路 1 号"}
        )
        writer.writerow({"id_no": BEN, "name": "王五 (demo)", "birth": "1992-02-02", "addr": ""})
    records = directory / "records.jsonl"
    records.write_text(json.dumps({"id_no": ANNA, "offence": "demo"}) + "\n", encoding="utf-8")
    return people, records


@dataclass
class World:
    """The running exchange and its members."""

    hub: RunningHub
    adapters: dict[str, ProviderServer]
    spies: dict[str, SpyBackend]
    clients: dict[str, HubClient] = field(default_factory=dict)
    identity: DevelopmentIdentityProvider | None = None

    def assertion(
        self,
        subject_id: str,
        audience: str = FORM_TOOL,
        assurance: Assurance = Assurance.ID_CARD_AT_COUNTER,
        **kwargs: Any,
    ) -> envelope_pb2.Envelope:
        """A subject assertion from the identity platform: the person authenticated to
        ``audience`` just now."""
        assert self.identity is not None
        return self.identity.issue(subject_id, audience, assurance, **kwargs).envelope

    def verified_client(self, department: str) -> HubClient:
        """A new client for ``department`` that verifies every receipt against the hub's
        key (close it after use: ``async with``)."""
        store = self.hub.keystore
        return HubClient(
            self.hub.target,
            Identity(
                department,
                store.department_signing_key(department),
                store.department_tls(department),
            ),
            server_name="localhost",
            hub_verifier=self.hub.server.hub.ledger.verifier_key,
        )

    def ledger_entries(self) -> list[Any]:
        """Every ledger entry as a LedgerEntry message."""
        ledger = self.hub.server.hub.ledger
        return [stored.decode() for stored in ledger.entries(0, ledger.size())]

    def last_entry(self) -> Any:
        """The newest ledger entry that is not a read (the SDK reads the registry to verify)."""
        from exchange.v1 import ledger_pb2

        return next(e for e in reversed(self.ledger_entries()) if e.kind != ledger_pb2.READ)


async def register(
    hub: RunningHub, department_id: str, roles: Sequence[int], endpoint: str = "", owner: str = ""
) -> HubClient:
    """Register a department whose keys are already in the keystore; return its client."""
    key = hub.keystore.department_signing_key(department_id)
    department = registry_pb2.Department(
        id=department_id,
        name=department_id,
        roles=list(roles),
        provider_endpoint=endpoint,
        owner=owner,
        keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
    )
    await hub.operator.register_department(department)
    return hub.client(department_id)


def material_type(
    type_id: str, sharing: int, fields: Sequence[tuple[str, int, bool]]
) -> catalog_pb2.MaterialType:
    return catalog_pb2.MaterialType(
        id=type_id,
        name=type_id.replace("-", " "),
        sharing_class=sharing,  # type: ignore[arg-type]
        fields=[catalog_pb2.FieldSpec(name=n, type=t, required=r) for n, t, r in fields],  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(
    start_hub: StartHub, tmp_path: Path, **hub_options: object
) -> AsyncIterator[World]:
    """The exchange on a hub started with ``hub_options``; its adapters stopped after."""
    built = await build(await start_hub(**hub_options), tmp_path)
    try:
        yield built
    finally:
        for adapter in built.adapters.values():
            await adapter.stop(grace=0.2)


async def build(hub: RunningHub, tmp_path: Path) -> World:
    """Start both adapters, register everyone, publish the catalog and the holdings."""
    store = hub.keystore
    for department in (CIVIL, POLICE):
        store.add_department(department, server_names=("localhost", "127.0.0.1"))
    for department in (SOCIAL, TOWNSHIP, FORM_TOOL, IDENTITY):
        store.add_department(department)

    civil_dir = tmp_path / "civil"
    civil_dir.mkdir()
    civil_settings = parse(
        {
            "department": {
                "id": CIVIL,
                "listen": "127.0.0.1:0",
                "keys_dir": str(store.root),
                "hub_id": HUB_ID,
            },
            "backend": {"kind": "sql", "url": civil_database(civil_dir / "civil.db")},
            "materials": {
                MARRIAGE: {
                    "table": "marriages",
                    "subject_column": "citizen_id",
                    "fields": {
                        "marital_status": "status",
                        "spouse_name": "spouse",
                        "registered_on": "reg_date",
                    },
                    "store": {
                        "table": "marriages",
                        "reference_column": "hub_ref",
                        "submitted_by_column": "collected_by",
                    },
                }
            },
        },
        civil_dir,
    )
    police_dir = tmp_path / "police"
    police_dir.mkdir()
    people, records = police_files(police_dir)
    police_settings = parse(
        {
            "department": {
                "id": POLICE,
                "listen": "127.0.0.1:0",
                "keys_dir": str(store.root),
                "hub_id": HUB_ID,
            },
            "backend": {"kind": "files"},
            "materials": {
                HOUSEHOLD: {
                    "file": str(people),
                    "subject_column": "id_no",
                    "fields": {"name": "name", "birth_date": "birth", "address": "addr"},
                },
                CRIMINAL: {
                    "file": str(records),
                    "subject_column": "id_no",
                    "fields": {"offence": "offence"},
                },
            },
        },
        police_dir,
    )
    adapters: dict[str, ProviderServer] = {}
    spies: dict[str, SpyBackend] = {}
    for department, settings in ((CIVIL, civil_settings), (POLICE, police_settings)):
        spy = SpyBackend(open_backend(settings))
        server = ProviderServer(settings, spy)  # type: ignore[arg-type]
        await server.start()
        adapters[department] = server
        spies[department] = spy

    world = World(hub, adapters, spies)
    c = world.clients
    c[CIVIL] = await register(
        hub, CIVIL, [common_pb2.PROVIDER], f"127.0.0.1:{adapters[CIVIL].port}"
    )
    c[POLICE] = await register(
        hub, POLICE, [common_pb2.PROVIDER], f"127.0.0.1:{adapters[POLICE].port}"
    )
    c[SOCIAL] = await register(hub, SOCIAL, [common_pb2.CONSUMER])
    c[TOWNSHIP] = await register(hub, TOWNSHIP, [common_pb2.COLLECTOR, common_pb2.CONSUMER])
    c[FORM_TOOL] = await register(hub, FORM_TOOL, [common_pb2.FORM_TOOL], owner=TOWNSHIP)
    c[IDENTITY] = await register(hub, IDENTITY, [common_pb2.IDENTITY_PROVIDER])
    world.identity = DevelopmentIdentityProvider(IDENTITY, store.department_signing_key(IDENTITY))

    S, D = catalog_pb2.STRING, catalog_pb2.DATE
    await publish_type(
        c[CIVIL],
        material_type(
            MARRIAGE,
            catalog_pb2.CONDITIONAL,
            [("marital_status", S, True), ("spouse_name", S, False), ("registered_on", D, False)],
        ),
    )
    await publish_type(
        c[POLICE],
        material_type(
            HOUSEHOLD,
            catalog_pb2.UNCONDITIONAL,
            [("name", S, True), ("birth_date", D, True), ("address", S, False)],
        ),
    )
    await publish_type(
        c[POLICE], material_type(CRIMINAL, catalog_pb2.NOT_SHARED, [("offence", S, True)])
    )
    for purpose in (ASSISTANCE, MARRIAGE_REGISTRATION):
        await hub.operator.define_purpose(
            purpose=catalog_pb2.Purpose(id=purpose, name=purpose, legal_basis="demo regulation")
        )
    await c[FORM_TOOL].register_form(
        form=catalog_pb2.Form(
            id=FORM,
            name="Township subsidy application",
            purpose=ASSISTANCE,
            fields=[
                catalog_pb2.FormField(
                    name="full_name", material_type=HOUSEHOLD, material_field="name"
                ),
                catalog_pb2.FormField(
                    name="birth_date", material_type=HOUSEHOLD, material_field="birth_date"
                ),
                catalog_pb2.FormField(
                    name="address", material_type=HOUSEHOLD, material_field="address"
                ),
                catalog_pb2.FormField(
                    name="marital_status",
                    material_type=MARRIAGE,
                    material_field="marital_status",
                ),
                catalog_pb2.FormField(name="bank_account", label="Bank account"),
            ],
        )
    )
    await publish_holdings(c[CIVIL], spies[CIVIL], MARRIAGE)
    await publish_holdings(c[POLICE], spies[POLICE], HOUSEHOLD)
    await publish_holdings(c[POLICE], spies[POLICE], CRIMINAL)
    return world


async def publish_type(
    client: HubClient, value: catalog_pb2.MaterialType
) -> catalog_pb2.MaterialTypeResponse:
    return await client.publish_material_type(material_type=value)


async def grant_marital_status(world: World) -> None:
    """Civil affairs grants social security the marital status for social assistance."""
    await world.clients[CIVIL].issue_grant(
        grant=grants_pb2.Grant(
            consumer=SOCIAL,
            material_type=MARRIAGE,
            fields=["marital_status"],
            purposes=[ASSISTANCE],
        )
    )
