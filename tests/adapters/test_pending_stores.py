"""Pending Stores on disk (adapters.pending): an adapter started again holds what the one before
it held pending, settles it once, remembers how it settled, and keeps the file private and
sealed. Real adapters over mTLS, a real SQLite department database and a files backend."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import grpc
import pytest

from adapters.backends import open_backend
from adapters.errors import SettingsError
from adapters.provider import ProviderServer
from adapters.settings import DepartmentSettings, parse
from exchange.crypto.keystore import Keystore
from exchange.rpc.status import error_info
from exchange.v1 import provider_pb2
from tests.adapters.conftest import (
    DEPARTMENT,
    MARRIAGE,
    HubCaller,
    MakeCaller,
    StartAdapter,
    civil_database,
    sql_settings,
)

NEW_SUBJECT = "990101198803030033"
SECRET_SPOUSE = "欧阳秘密 (demo)"


def store_body(request_id: str, reference: str, **fields: str) -> provider_pb2.StoreRequest:
    body = provider_pb2.StoreRequest(
        material_type=MARRIAGE,
        subject_id=NEW_SUBJECT,
        fields=fields or {"marital_status": "married", "spouse_name": SECRET_SPOUSE},
        reference=reference,
        version=1,
        submitted_by="demo.township-office",
        pending=True,
    )
    body.header.request_id = request_id
    return body


async def store(caller: HubCaller, body: provider_pb2.StoreRequest) -> provider_pb2.StoreResponse:
    answer: provider_pb2.StoreResponse = await caller.stub().Store(
        caller.envelope(body), timeout=10
    )
    return answer


async def inventory(
    caller: HubCaller, material_type: str = MARRIAGE
) -> provider_pb2.InventoryResponse:
    answer: provider_pb2.InventoryResponse = await caller.stub().Inventory(
        caller.envelope(provider_pb2.InventoryRequest(material_type=material_type)), timeout=10
    )
    return answer


async def settle(caller: HubCaller, store: str, commit: bool) -> bool:
    body = provider_pb2.SettleRequest(store_request_id=store, commit=commit)
    answer = await caller.stub().Settle(caller.envelope(body), timeout=10)
    return bool(answer.found)


async def visible(caller: HubCaller) -> bool:
    """Whether the adapter serves the new subject's material (pending Stores are invisible)."""
    fetch = provider_pb2.FetchRequest(
        material_type=MARRIAGE, subject_id=NEW_SUBJECT, fields=["spouse_name"]
    )
    return bool((await caller.fetch(fetch)).found)


async def crash(adapter: ProviderServer) -> None:
    """Stop ``adapter`` the way a killed process stops: nothing is settled or flushed on the
    way out (what the kernel would close is closed, no more)."""
    await adapter.server.stop(0)
    adapter.backend.close()
    if adapter.service.pending_file is not None:
        adapter.service.pending_file.close()


@pytest.fixture
def settings(department_keystore: Keystore, tmp_path: Path) -> DepartmentSettings:
    url = civil_database(f"sqlite:///{tmp_path / 'civil.db'}")
    return sql_settings(url, department_keystore.root, tmp_path)


async def test_a_pending_store_outlives_its_adapter_and_is_settled_once(
    settings: DepartmentSettings, start_adapter: StartAdapter, hub_caller: MakeCaller
) -> None:
    assert settings.pending_stores == settings.pending_stores.parent / (  # type: ignore[union-attr]
        f"{DEPARTMENT}.pending-stores.db"
    )
    first = await start_adapter(settings)
    caller = hub_caller(first)
    assert (await store(caller, store_body("s-1", "ref-1"))).pending
    await crash(first)

    second = await start_adapter(settings)
    caller = hub_caller(second)
    (pending,) = (await inventory(caller)).pending
    assert (pending.store_request_id, pending.subject_id, pending.reference) == (
        "s-1",
        NEW_SUBJECT,
        "ref-1",
    )
    assert dict(pending.fields)["spouse_name"] == SECRET_SPOUSE
    assert not await visible(caller)  # still invisible
    assert await settle(caller, "s-1", commit=True)
    assert await visible(caller)
    await crash(second)

    # The outcome is on disk too: a Settle repeated after another restart gets the same answer,
    # one the other way is refused, and nothing is pending any more.
    third = await start_adapter(settings)
    caller = hub_caller(third)
    assert list((await inventory(caller)).pending) == []
    assert await settle(caller, "s-1", commit=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await settle(caller, "s-1", commit=False)
    info = error_info(caught.value.trailing_metadata())
    assert info is not None and info.reason == "REQUEST_ID_REUSED"


async def test_an_aborted_store_stays_aborted_after_a_restart(
    settings: DepartmentSettings, start_adapter: StartAdapter, hub_caller: MakeCaller
) -> None:
    first = await start_adapter(settings)
    await store(hub_caller(first), store_body("s-2", "ref-2"))
    assert await settle(hub_caller(first), "s-2", commit=False)
    await crash(first)
    caller = hub_caller(await start_adapter(settings))
    assert list((await inventory(caller)).pending) == []
    assert await settle(caller, "s-2", commit=False)
    assert not await visible(caller)


async def test_the_pending_stores_file_is_private_and_sealed(
    settings: DepartmentSettings, start_adapter: StartAdapter, hub_caller: MakeCaller
) -> None:
    adapter = await start_adapter(settings)
    caller = hub_caller(adapter)
    await store(caller, store_body("s-3", "ref-3"))
    path = settings.pending_stores
    assert path is not None
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    assert path in files
    on_disk = b""
    for file in files:  # the database and its WAL
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        on_disk += file.read_bytes()
    for personal in (NEW_SUBJECT, SECRET_SPOUSE):
        assert personal.encode() not in on_disk, "personal data in the clear"
    assert b"ref-3" in on_disk  # the hub's reference (a keyed hash) is kept in the clear


async def test_a_pending_stores_file_others_may_read_is_refused(
    settings: DepartmentSettings, start_adapter: StartAdapter
) -> None:
    path = settings.pending_stores
    assert path is not None
    path.touch()
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        await start_adapter(settings)


async def test_a_recovered_store_already_written_is_not_written_again(
    department_keystore: Keystore,
    tmp_path: Path,
    start_adapter: StartAdapter,
    hub_caller: MakeCaller,
) -> None:
    """An adapter that died after writing a commit, before marking it in the file, holds the
    Store pending again; its commit then finds it written (here by its reference) and appends
    no second line."""
    people = tmp_path / "people.jsonl"
    people.write_text("", encoding="utf-8")
    settings = parse(
        {
            "department": {
                "id": DEPARTMENT,
                "listen": "127.0.0.1:0",
                "keys_dir": str(department_keystore.root),
                "hub_id": "hub",
            },
            "backend": {"kind": "files"},
            "materials": {
                MARRIAGE: {
                    "file": str(people),
                    "subject_column": "id_no",
                    "reference_column": "ref",
                    "fields": {"marital_status": "status"},
                    "store": {"file": str(people), "reference_column": "ref"},
                }
            },
        },
        tmp_path,
    )
    first = await start_adapter(settings)
    caller = hub_caller(first)
    body = store_body("s-4", "ref-4", marital_status="married")
    await store(caller, body)
    # The commit's write, as the dying process made it, and no Settle recorded.
    open_backend(settings).store(
        MARRIAGE,
        NEW_SUBJECT,
        {"marital_status": "married"},
        reference="ref-4",
        version=1,
        submitted_by="demo.township-office",
    )
    await crash(first)
    second = await start_adapter(settings)
    caller = hub_caller(second)
    assert [p.store_request_id for p in (await inventory(caller)).pending] == ["s-4"]
    assert await settle(caller, "s-4", commit=True)
    lines = [json.loads(line) for line in people.read_text(encoding="utf-8").splitlines()]
    assert [line["ref"] for line in lines] == ["ref-4"]
    assert list((await inventory(caller)).pending) == []
