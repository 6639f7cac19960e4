"""No entry, no access, at the holder too (issue 13, item 4).

A real hub and real adapters (tests.flows.world), on SQLite and on PostgreSQL. The ledger is
made unable to commit by a trigger the test puts on ``ledger_entries`` (every insert fails) —
the request log and the index keep working, so what is tested is the hub's own guard: once a
commit failed, Request, Prefill and Submit answer UNAVAILABLE LEDGER_UNAVAILABLE and no adapter
receives a Fetch or a Store. Once the fault is lifted, the next refusal's entry commits and the
holders are asked again; the log verifies.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine

from adapters.client import Refused
from tests.conftest import StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CIVIL,
    FORM,
    FORM_TOOL,
    MARRIAGE,
    MARRIAGE_FIELDS,
    SOCIAL,
    TOWNSHIP,
    World,
    build,
)
from tests.integration.revocation import verify
from tests.integration.test_flows import grant

SQLITE_FAULT = (
    "CREATE TRIGGER ledger_fault BEFORE INSERT ON ledger_entries "
    "BEGIN SELECT RAISE(ABORT, 'ledger fault injected by the test'); END"
)
POSTGRES_FAULT = (
    "CREATE OR REPLACE FUNCTION ledger_fault() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'ledger fault injected by the test'; END $$; "
    "CREATE TRIGGER ledger_fault BEFORE INSERT ON ledger_entries "
    "FOR EACH ROW EXECUTE FUNCTION ledger_fault()"
)
NEW_MARRIAGE = {"marital_status": "married", "spouse_name": "赵六 (demo)"}

Switch = Callable[[bool], None]


def sqlite_switch(path: Path) -> Switch:
    def switch(on: bool) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(SQLITE_FAULT if on else "DROP TRIGGER ledger_fault")

    return switch


def postgres_switch(url: str) -> Switch:
    def switch(on: bool) -> None:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    POSTGRES_FAULT if on else "DROP TRIGGER ledger_fault ON ledger_entries"
                )
        finally:
            engine.dispose()

    return switch


def holder_calls(world: World) -> Counter[str]:
    """Calls every adapter received, by method, and the fetches its source answered."""
    calls: Counter[str] = Counter()
    for department, adapter in world.adapters.items():
        calls.update({f"{department} {m}": n for m, n in adapter.calls.items()})
        calls[f"{department} source fetch"] = len(world.spies[department].fetches)
    return calls


async def refused_unavailable(call: object) -> None:
    with pytest.raises(Refused) as refused:
        await call  # type: ignore[misc]
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
    assert refused.value.reason == "LEDGER_UNAVAILABLE", refused.value


async def check_guard(world: World, switch: Switch) -> None:
    await grant(world, fields=MARRIAGE_FIELDS)
    await grant(world, consumer=TOWNSHIP)
    social, township, form_tool = (world.clients[d] for d in (SOCIAL, TOWNSHIP, FORM_TOOL))
    await social.request(MARRIAGE, ANNA, purpose=ASSISTANCE)  # healthy: the holder is asked
    switch(True)
    # The first commit after the fault fails (a Check asks no holder): now the hub knows.
    await refused_unavailable(township.check(MARRIAGE, ANNA))
    before = holder_calls(world)
    await refused_unavailable(social.request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    await refused_unavailable(form_tool.prefill(FORM, ANNA, assertion=world.assertion(ANNA)))
    await refused_unavailable(township.submit(MARRIAGE, BEN, NEW_MARRIAGE))
    assert holder_calls(world) == before, "a holder was asked while the ledger could not commit"
    assert world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"]) is None

    switch(False)
    # The first call after the fault is refused as before, and its refusal's entry commits: the
    # hub sees its ledger commit again, and the holders are asked again.
    answers = []
    for _ in range(3):
        try:
            answers.append(await social.request(MARRIAGE, ANNA, purpose=ASSISTANCE))
            break
        except Refused as refused:
            assert refused.reason == "LEDGER_UNAVAILABLE"
    assert answers and answers[0].fields["marital_status"] == "married"
    stored = await township.submit(MARRIAGE, BEN, NEW_MARRIAGE)
    assert stored.outcome == "STORED"
    held = world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"])
    assert held is not None and held.fields["marital_status"] == "married"
    hub = world.hub.server.hub
    await verify(hub.engine, hub.ledger, hub.key_history())


async def check_store_aborted(world: World, switch: Switch) -> None:
    """A Submit that meets a newly failed ledger (the hub does not know yet) has stored at the
    owner pending; its entry fails, and the pending Store is aborted: nothing visible."""
    switch(True)
    await refused_unavailable(world.clients[TOWNSHIP].submit(MARRIAGE, BEN, NEW_MARRIAGE))
    adapter = world.adapters[CIVIL]
    assert adapter.calls["Store"] == 1 and adapter.calls["Settle"] == 1
    assert world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"]) is None
    hub = world.hub.server.hub
    assert hub.index.current(MARRIAGE, hub.content_keys.subject_ref(BEN)) is None
    switch(False)


async def test_submit_whose_entry_fails_aborts_its_pending_store_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    world = await build(await start_hub(provider_timeout_ms=1500), tmp_path)
    try:
        await check_store_aborted(world, sqlite_switch(tmp_path / "exchange.db"))
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_submit_whose_entry_fails_aborts_its_pending_store_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    world = await build(await start_hub(postgres_url, provider_timeout_ms=1500), tmp_path)
    try:
        await check_store_aborted(world, postgres_switch(postgres_url))
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_no_holder_is_asked_while_the_ledger_cannot_commit_sqlite(
    start_hub: StartHub, tmp_path: Path
) -> None:
    hub = await start_hub(provider_timeout_ms=1500)
    world = await build(hub, tmp_path)
    try:
        await check_guard(world, sqlite_switch(tmp_path / "exchange.db"))
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_no_holder_is_asked_while_the_ledger_cannot_commit_postgres(
    start_hub: StartHub, postgres_url: str, tmp_path: Path
) -> None:
    hub = await start_hub(postgres_url, provider_timeout_ms=1500)
    world = await build(hub, tmp_path)
    try:
        await check_guard(world, postgres_switch(postgres_url))
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
