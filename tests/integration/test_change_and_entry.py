"""A change is stored with its ledger entry or not at all: when the ledger cannot commit, a
grant, a registration, a purpose, a submission or an objection is refused UNAVAILABLE and
leaves nothing behind (no unlogged permission, member or indexed material).

The ledger is made to fail by hiding its entry table for the length of one call: the entry's
transaction then fails after the change was written in it, so this proves the rollback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator

import grpc
import pytest
from sqlalchemy import select, text

from adapters.client import Refused
from exchange.store.exchange_tables import grants
from exchange.store.write_lock import writing
from exchange.v1 import catalog_pb2, common_pb2, exchange_pb2, grants_pb2, ledger_pb2, registry_pb2
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CIVIL,
    FORM_TOOL,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
)


@contextlib.contextmanager
def ledger_down(world: World) -> Iterator[None]:
    """The ledger cannot commit inside the block (its entry table is hidden)."""
    engine = world.hub.server.hub.engine
    with writing(engine) as conn:
        conn.execute(text("ALTER TABLE ledger_entries RENAME TO ledger_entries_hidden"))
    try:
        yield
    finally:
        with writing(engine) as conn:
            conn.execute(text("ALTER TABLE ledger_entries_hidden RENAME TO ledger_entries"))


async def refused_while_down(world: World, call: Awaitable[object]) -> Refused:
    size = world.hub.server.hub.ledger.size()
    with ledger_down(world), pytest.raises(Refused) as caught:
        await call
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "LEDGER_UNAVAILABLE"
    assert world.hub.server.hub.ledger.size() == size  # not even the refusal got in
    return caught.value


def kinds(world: World) -> list[int]:
    ledger = world.hub.server.hub.ledger
    return [e.decode().kind for e in ledger.entries(0, ledger.size())]


async def test_a_grant_is_not_stored_without_its_entry(world: World) -> None:
    call = world.clients[CIVIL].issue_grant(
        grants_pb2.Grant(
            consumer=SOCIAL,
            material_type=MARRIAGE,
            fields=["marital_status"],
            purposes=[ASSISTANCE],
        )
    )
    await refused_while_down(world, call)
    with world.hub.server.hub.engine.connect() as conn:
        assert conn.execute(select(grants)).all() == []
    # The ledger is back: the consumer holds no grant, and the ledger shows no issuance.
    with pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert caught.value.reason == "NO_GRANT"
    assert ledger_pb2.GRANT_ISSUANCE not in kinds(world)


async def test_a_department_is_not_registered_without_its_entry(world: World) -> None:
    key = world.hub.keystore.add_department("js.nj.new-office")
    department = registry_pb2.Department(
        id="js.nj.new-office",
        name="New Office",
        roles=[common_pb2.CONSUMER],
        keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
    )

    def register() -> Awaitable[registry_pb2.DepartmentResponse]:
        return world.hub.operator.register_department(department)

    await refused_while_down(world, register())
    assert world.hub.server.hub.registry.get("js.nj.new-office") is None
    # Registering again once the ledger is back works: nothing half-registered is in the way.
    assert (await register()).department.id == "js.nj.new-office"
    assert world.hub.server.hub.registry.get("js.nj.new-office") is not None


async def test_a_purpose_is_not_defined_without_its_entry(world: World) -> None:
    call = world.hub.operator.define_purpose(
        catalog_pb2.Purpose(id="housing-subsidy", name="Housing", legal_basis="test")
    )
    await refused_while_down(world, call)
    assert world.hub.server.hub.catalog.purpose("housing-subsidy") is None


async def test_a_submission_is_not_indexed_without_its_entry(world: World) -> None:
    fields = {
        "marital_status": "married",
        "spouse_name": "赵六 (demo)",
        "registered_on": "2020-02-02",
    }
    await refused_while_down(world, world.clients[TOWNSHIP].submit(MARRIAGE, BEN, fields))
    assert not (await world.clients[TOWNSHIP].check(MARRIAGE, BEN)).on_file
    # The retry stores it (the owner's adapter takes the same version again) and indexes it.
    answer = await world.clients[TOWNSHIP].submit(MARRIAGE, BEN, fields)
    assert answer.outcome == "STORED" and answer.version == 1
    assert (await world.clients[TOWNSHIP].check(MARRIAGE, BEN)).on_file


async def test_an_objection_is_not_filed_without_its_entry(world: World) -> None:
    body = exchange_pb2.FileObjectionRequest(
        material_type=MARRIAGE,
        subject_id=ANNA,
        reason="the spouse's name is misspelt",
        assertion=world.assertion(ANNA),
    )
    call = world.clients[FORM_TOOL].call(
        "/exchange.v1.Exchange/FileObjection", body, exchange_pb2.ObjectionResponse
    )
    await refused_while_down(world, call)
    assert world.hub.server.hub.objections.for_owner(CIVIL, open_only=False) == []
