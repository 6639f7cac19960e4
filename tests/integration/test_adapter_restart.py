"""An owner's adapter that dies between the pending Store and its Settle (issue 13, item 4).

The adapter keeps its pending Stores on disk before it answers the Store (adapters.pending),
so the adapter started again holds them, ``Provider.Inventory`` reports them, and
``exchange reconcile`` (the command, as the operator runs it) settles each as the ledger says,
one RECONCILIATION entry per repair. Without that file the restarted adapter knows nothing of
them: the committed entry's material is lost (INDEXED_NOT_HELD, which reconcile cannot repair).

The hub that served the Submit (B, an ``exchange serve`` process sharing the database of hub
A, which runs in this process with the adapters of tests.flows.world) is SIGKILLed at the same
moment, so that no retry of its own settles the Store before reconcile: the exact moment is set
by the civil affairs adapter's source. The adapter "dies" by losing everything it held in
memory: its server is stopped, its objects dropped, and a new adapter object is started on the
same port over the same department database and pending Stores file (a real SQLite file).
SQLite and PostgreSQL hubs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.backends import open_backend
from adapters.provider import ProviderServer
from exchange.crypto.keystore import Keystore
from exchange.routing.provider import forwarded_id
from exchange.v1 import ledger_pb2, provider_pb2
from tests.conftest import StartHub
from tests.flows.world import BEN, CIVIL, MARRIAGE, SpyBackend, World, build
from tests.integration.revocation import verify
from tests.integration.test_submit_killed_hub import (
    FIELDS,
    adapter_endpoint,
    kill_on_settle,
    kill_on_store,
    reconcile_command,
    submit_through_killed_hub,
)


async def answered_its_store(adapter: ProviderServer) -> None:
    """Wait until ``adapter`` has its pending Store on disk, as it has once it answers the
    Store: the hub killed at the Store's arrival does not wait for that answer, and the adapter
    "dies" in this test only after it (a process killed earlier never answered the Store)."""
    assert adapter.settings.pending_stores is not None
    for _ in range(400):
        with sqlite3.connect(adapter.settings.pending_stores) as db:
            (count,) = db.execute(
                "SELECT count(*) FROM pending_stores WHERE state = 'pending'"
            ).fetchone()
        if count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the adapter never kept its pending Store")


async def restart_civil_adapter(world: World) -> ProviderServer:
    """Stop the civil affairs adapter without a word to anyone and start a new one on its
    port: nothing of the old one's memory survives, its pending Stores file is as it left it."""
    old = world.adapters[CIVIL]
    await old.server.stop(0)
    settings = dataclasses.replace(old.settings, listen=f"127.0.0.1:{old.port}")
    assert settings.pending_stores is not None and settings.pending_stores.exists()
    spy = SpyBackend(open_backend(settings))
    new = ProviderServer(settings, spy)  # type: ignore[arg-type]
    await new.start()
    world.adapters[CIVIL], world.spies[CIVIL] = new, spy
    # The dead one's handles go now (a killed process's would be closed by the kernel).
    old.backend.close()
    if old.service.pending_file is not None:
        old.service.pending_file.close()
    return new


async def pending_at(world: World) -> list[provider_pb2.InventoryItem]:
    inventory = await world.hub.server.hub.providers.inventory(
        adapter_endpoint(world),
        request_id=forwarded_id("test", "inventory"),
        material_type=MARRIAGE,
    )
    return list(inventory.pending)


def held(world: World) -> object:
    return world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"])


async def check_restart_before_settle(
    world: World, url: str, keystore: Keystore, tmp_path: Path, *, entry_committed: bool
) -> None:
    hub = world.hub.server.hub
    ben = hub.content_keys.subject_ref(BEN)
    # The hub dies after the entry (at Settle's write) or before it (at the Store).
    plant = kill_on_settle if entry_committed else kill_on_store
    await submit_through_killed_hub(world, url, keystore, tmp_path, plant)
    assert held(world) is None
    assert (hub.index.current(MARRIAGE, ben) is not None) == entry_committed

    await answered_its_store(world.adapters[CIVIL])
    await restart_civil_adapter(world)
    (pending,) = await pending_at(world)  # the new adapter holds it again, from its file
    assert pending.subject_id == BEN and dict(pending.fields) == FIELDS
    assert held(world) is None  # still invisible

    size = hub.ledger.size()
    done = await reconcile_command(keystore.root, url)
    assert done.returncode == 0, done.stderr
    assert BEN not in done.stdout + done.stderr, "a subject id in reconcile's output"
    kind = "PENDING_WITH_ENTRY" if entry_committed else "PENDING_WITHOUT_ENTRY"
    assert kind in done.stdout and "INDEXED_NOT_HELD" not in done.stdout, done.stdout
    repairs = [s.decode() for s in hub.ledger.entries(size, hub.ledger.size() - size)]
    assert [(e.kind, e.attributes["difference"], e.subject_ref) for e in repairs] == [
        (ledger_pb2.RECONCILIATION, kind, ben)
    ]
    assert await pending_at(world) == []
    stored = held(world)
    if entry_committed:
        assert stored is not None and stored.fields["marital_status"] == "married"  # type: ignore[attr-defined]
    else:
        assert stored is None and hub.index.current(MARRIAGE, ben) is None

    # The settlement is on disk too: a second restart holds nothing pending.
    await restart_civil_adapter(world)
    assert await pending_at(world) == []
    again = await reconcile_command(keystore.root, url)
    assert again.returncode == 0 and "no differences" in again.stdout, again.stdout
    await verify(hub.engine, hub.ledger, hub.key_history())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world_and_url(
    request: pytest.FixtureRequest, start_hub: StartHub, tmp_path: Path
) -> AsyncIterator[tuple[World, str]]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    world = await build(await start_hub(url, provider_timeout_ms=5000), tmp_path)
    yield world, url or f"sqlite:///{tmp_path / 'exchange.db'}"
    for adapter in world.adapters.values():
        await adapter.stop(grace=0.2)


@pytest.mark.parametrize("entry_committed", [True, False], ids=["after-entry", "before-entry"])
async def test_a_store_pending_at_a_restarted_adapter_is_settled_by_reconcile(
    world_and_url: tuple[World, str], keystore: Keystore, tmp_path: Path, entry_committed: bool
) -> None:
    """Committed when its entry committed (the hub died at Settle), aborted when none did (the
    hub died at the Store)."""
    world, url = world_and_url
    await check_restart_before_settle(
        world, url, keystore, tmp_path, entry_committed=entry_committed
    )
