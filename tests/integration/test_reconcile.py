"""``exchange reconcile`` (issue 13, item 4): a holder's adapter, the index and the ledger.

Real hub and adapters (tests.flows.world) on SQLite and PostgreSQL. Differences are planted
behind the exchange's back — an index row deleted, a marriage written straight into the civil
affairs database — and reconcile must report each (a dry run changes nothing), repair each with
one RECONCILIATION entry, find nothing the second time, and leave a log that verifies.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import delete

from exchange.flows.reconcile import reconcile
from exchange.store.exchange_tables import material_fields, materials
from exchange.v1 import ledger_pb2
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CARL,
    CIVIL,
    MARRIAGE,
    MARRIAGE_FIELDS,
    SOCIAL,
    World,
    build,
)
from tests.integration.revocation import verify
from tests.integration.test_flows import grant


def plant(world: World, tmp_path: Path) -> str:
    """Delete ANNA's marriage from the index; write CARL's into the civil database directly.
    Return the reference that was deleted."""
    hub = world.hub.server.hub
    current = hub.index.current(MARRIAGE, hub.content_keys.subject_ref(ANNA))
    assert current is not None
    with hub.engine.begin() as conn:
        conn.execute(
            delete(material_fields).where(material_fields.c.reference == current.reference)
        )
        conn.execute(delete(materials).where(materials.c.reference == current.reference))
    with sqlite3.connect(tmp_path / "civil" / "civil.db") as civil:
        civil.execute(
            "INSERT INTO marriages (citizen_id, status, spouse, reg_date) VALUES (?, ?, ?, ?)",
            (CARL, "married", "周七 (demo)", "2021-03-03"),
        )
    return current.reference


async def check_reconcile(world: World, tmp_path: Path) -> None:
    hub = world.hub.server.hub
    deleted = plant(world, tmp_path)
    anna, carl = (hub.content_keys.subject_ref(s) for s in (ANNA, CARL))
    size = hub.ledger.size()
    operator = world.hub.keystore.operator_signing_key()

    dry = await reconcile(hub, CIVIL, operator, dry_run=True)
    found = {d.subject_ref: d for d in dry.differences}
    assert set(found) == {anna, carl}, dry.differences
    # ANNA's holding was published in a call naming her alone: its entry is found.
    assert found[anna].kind == "ENTRY_WITHOUT_INDEX_ROW" and found[anna].reference == deleted
    assert found[carl].kind == "HELD_WITHOUT_ENTRY" and found[carl].version == 1
    assert not any(d.repaired for d in dry.differences)
    assert hub.ledger.size() == size, "a dry run appended"
    assert hub.index.current(MARRIAGE, anna) is None

    done = await reconcile(hub, CIVIL, operator)
    assert {d.subject_ref for d in done.differences} == {anna, carl}
    assert all(d.repaired and d.sequence is not None for d in done.differences), done
    entries = {
        d.subject_ref: hub.ledger.entries(d.sequence, 1)[0].decode() for d in done.differences
    }  # type: ignore[arg-type]
    for subject_ref, entry in entries.items():
        assert entry.kind == ledger_pb2.RECONCILIATION and entry.outcome == ledger_pb2.OK
        assert entry.subject_ref == subject_ref and entry.actor == hub.config.hub_id
        assert entry.attributes["difference"] == found[subject_ref].kind
    restored = hub.index.current(MARRIAGE, anna)
    assert restored is not None and restored.reference == deleted
    assert hub.index.current(MARRIAGE, carl) is not None

    again = await reconcile(hub, CIVIL, operator)
    assert again.differences == [] and again.held == again.indexed == 2
    # The repaired index serves: ANNA's marriage is delivered again.
    await grant(world, fields=MARRIAGE_FIELDS)
    material = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert material.fields["marital_status"] == "married"
    await verify(hub.engine, hub.ledger, hub.key_history())


async def test_reconcile_repairs_planted_differences_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    world = await build(await start_hub(provider_timeout_ms=1500), tmp_path)
    try:
        await check_reconcile(world, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_reconcile_repairs_planted_differences_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    world = await build(await start_hub(postgres_url, provider_timeout_ms=1500), tmp_path)
    try:
        await check_reconcile(world, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
