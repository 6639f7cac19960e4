"""A Submit whose hub is SIGKILLed between the adapter's Store and the entry's commit (issue 13,
item 4): the Store was held pending (provider contract 2), so nothing is visible at the owner
without an entry, and ``exchange reconcile`` (the command, as the operator runs it) finds the
leftover and aborts it with a RECONCILIATION entry. A hub killed after the entry committed but
before the adapter wrote the material leaves it pending with its entry: reconcile commits it.
The log verifies afterwards.

Hub B is an ``exchange serve`` process; hub A (in process, with the adapters of
tests.flows.world) shares its database and is used to look at the result. The kill is exact:
the civil affairs adapter kills hub B when B's Store reaches it, before B can have its answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import BackendError
from exchange.crypto.keystore import Keystore
from exchange.routing.provider import forwarded_id
from exchange.v1 import ledger_pb2
from tests.conftest import StartHub
from tests.flows.world import BEN, CIVIL, MARRIAGE, TOWNSHIP, World, build
from tests.integration.revocation import verify
from tests.integration.test_hub_process import wait_serving
from tests.integration.test_several_hubs import EXCHANGE, HubProcess, spawn, stop

FIELDS = {"marital_status": "married", "spouse_name": "赵六 (demo)"}


def kill_on_store(world: World, victim: HubProcess) -> None:
    """The next Store at the civil affairs adapter first SIGKILLs ``victim``."""
    spy = world.spies[CIVIL]
    original = spy.store_fields

    def store_fields(material_type: str) -> object:
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        spy.store_fields = original  # type: ignore[method-assign]
        return original(material_type)

    spy.store_fields = store_fields  # type: ignore[method-assign]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def reconcile_command(keys: Path, url: str, *flags: str) -> Ran:
    """``exchange reconcile CIVIL`` as a process (awaited: the adapters answer on this loop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    process = await asyncio.create_subprocess_exec(
        *EXCHANGE,
        "reconcile",
        CIVIL,
        "--keys-dir",
        str(keys),
        "--database-url",
        url,
        *flags,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def submit_through_killed_hub(
    world: World,
    url: str,
    keystore: Keystore,
    tmp_path: Path,
    plant: Callable[[World, HubProcess], None],
) -> HubProcess:
    """Submit BEN's marriage through a new hub process B sharing ``url``, with ``plant`` set to
    SIGKILL it at the civil affairs adapter; the Submit must go unanswered. Returns B."""
    b = spawn(keystore.root, url, tmp_path, "b")
    try:
        await wait_serving(b.target, keystore)
        plant(world, b)
        client = b.client(keystore, TOWNSHIP)
        try:
            await client.submit(MARRIAGE, BEN, FIELDS)
            raise AssertionError("the Submit was answered by a killed hub")
        except Exception as exc:  # the connection to the killed hub broke
            assert "unavailable" in str(exc).lower(), exc
        finally:
            await client.close()
    finally:
        stop([b])
    return b


async def check_killed_submit(world: World, url: str, keystore: Keystore, tmp_path: Path) -> None:
    hub = world.hub.server.hub
    ben = hub.content_keys.subject_ref(BEN)
    b = await submit_through_killed_hub(world, url, keystore, tmp_path, kill_on_store)
    adapter = world.adapters[CIVIL]
    assert adapter.calls["Store"] == 1 and b.process.returncode == -signal.SIGKILL

    def visible() -> object:
        return world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"])

    # Nothing visible at the owner, nothing on the index, no entry: the Store is only pending.
    assert visible() is None
    assert hub.index.current(MARRIAGE, ben) is None
    submits = [
        e
        for e in (s.decode() for s in hub.ledger.entries_for_subject(ben))
        if e.kind == ledger_pb2.SUBMIT and e.outcome == ledger_pb2.OK
    ]
    assert submits == []

    dry = await reconcile_command(keystore.root, url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "PENDING_WITHOUT_ENTRY" in dry.stdout and "would be aborted" in dry.stdout, dry.stdout
    size = hub.ledger.size()
    done = await reconcile_command(keystore.root, url)
    assert done.returncode == 0, done.stderr
    assert "PENDING_WITHOUT_ENTRY" in done.stdout and "aborted at the holder (entry" in done.stdout
    assert BEN not in done.stdout + done.stderr, "a subject id in reconcile's output"

    inventory = await hub.providers.inventory(
        adapter_endpoint(world),
        request_id=forwarded_id("test", "inventory"),
        material_type=MARRIAGE,
    )
    assert list(inventory.pending) == []
    assert visible() is None and hub.index.current(MARRIAGE, ben) is None
    repairs = [s.decode() for s in hub.ledger.entries(size, hub.ledger.size() - size)]
    assert [(e.kind, e.attributes["difference"]) for e in repairs] == [
        (ledger_pb2.RECONCILIATION, "PENDING_WITHOUT_ENTRY")
    ]
    assert repairs[0].subject_ref == ben
    again = await reconcile_command(keystore.root, url)
    assert again.returncode == 0 and "no differences" in again.stdout, again.stdout
    await verify(hub.engine, hub.ledger, hub.key_history())


def kill_on_settle(world: World, victim: HubProcess) -> None:
    """The next commit at the civil affairs adapter first SIGKILLs ``victim``, then fails as a
    source that cannot write: the Store stays pending, its entry committed."""
    spy = world.spies[CIVIL]
    original = spy.store

    def store(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("rehearse"):  # the pending Store's rehearsal: not yet
            return original(*args, **kwargs)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        spy.store = original  # type: ignore[method-assign]
        raise BackendError("the source is down (planted by the test)")

    spy.store = store  # type: ignore[method-assign]


async def check_killed_before_settle(
    world: World, url: str, keystore: Keystore, tmp_path: Path
) -> None:
    hub = world.hub.server.hub
    ben = hub.content_keys.subject_ref(BEN)
    await submit_through_killed_hub(world, url, keystore, tmp_path, kill_on_settle)
    assert world.adapters[CIVIL].calls["Settle"] == 1
    # The entry and index row committed; the material is still pending at the owner.
    current = hub.index.current(MARRIAGE, ben)
    assert current is not None
    assert world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"]) is None

    done = await reconcile_command(keystore.root, url)
    assert done.returncode == 0, done.stderr
    assert "PENDING_WITH_ENTRY" in done.stdout and "committed at the holder (entry" in done.stdout
    held = world.spies[CIVIL].inner.fetch(MARRIAGE, BEN, ["marital_status"])
    assert held is not None and held.fields["marital_status"] == "married"
    again = await reconcile_command(keystore.root, url)
    assert again.returncode == 0 and "no differences" in again.stdout, again.stdout
    await verify(hub.engine, hub.ledger, hub.key_history())


async def test_submit_killed_between_entry_and_settle_sqlite(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path
) -> None:
    world = await build(await start_hub(provider_timeout_ms=5000), tmp_path)
    try:
        url = f"sqlite:///{tmp_path / 'exchange.db'}"
        await check_killed_before_settle(world, url, keystore, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_submit_killed_between_entry_and_settle_postgres(
    start_hub: StartHub, postgres_url: str, keystore: Keystore, tmp_path: Path
) -> None:
    world = await build(await start_hub(postgres_url, provider_timeout_ms=5000), tmp_path)
    try:
        await check_killed_before_settle(world, postgres_url, keystore, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


def adapter_endpoint(world: World) -> str:
    return f"127.0.0.1:{world.adapters[CIVIL].port}"


async def test_submit_killed_between_store_and_entry_sqlite(
    start_hub: StartHub, keystore: Keystore, tmp_path: Path
) -> None:
    world = await build(await start_hub(provider_timeout_ms=5000), tmp_path)
    try:
        url = f"sqlite:///{tmp_path / 'exchange.db'}"
        await check_killed_submit(world, url, keystore, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)


async def test_submit_killed_between_store_and_entry_postgres(
    start_hub: StartHub, postgres_url: str, keystore: Keystore, tmp_path: Path
) -> None:
    world = await build(await start_hub(postgres_url, provider_timeout_ms=5000), tmp_path)
    try:
        await check_killed_submit(world, postgres_url, keystore, tmp_path)
    finally:
        for adapter in world.adapters.values():
            await adapter.stop(grace=0.2)
