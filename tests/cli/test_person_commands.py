"""``exchange history``, ``objection file|list|resolve``, ``form register|show`` and the
operator's ``registry`` commands against a real hub and real adapters (the flow tests' world),
and a holder's refusal of a write reaching the caller as the holder's decision."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from adapters.client import Refused
from exchange.audit.verify import verify_export
from exchange.cli.main import main
from exchange.ledger.export import export_ledger, first_keys
from exchange.v1 import ledger_pb2, registry_pb2
from tests.cli.test_flows_commands import (
    assertion_file,
    exchange,
    hub_logs,
    refused,
    succeeded,
    world,
)
from tests.conftest import HUB_ID
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CARL,
    CIVIL,
    FORM,
    FORM_TOOL,
    HOUSEHOLD,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
)

__all__ = ["hub_logs", "world"]  # fixtures used here

UPDATE = "/exchange.v1.Registry/UpdateDepartment"


async def test_history_lists_who_accessed_the_subject(world: World) -> None:
    await world.clients[SOCIAL].check(HOUSEHOLD, ANNA)
    # A form tool reads the person's history with the person's assertion (docs/identity.md).
    assertion = await assertion_file(world, ANNA)
    without = await exchange(world, FORM_TOOL, "history", ANNA)
    assert "ASSERTION_REQUIRED" in refused(without)
    out = succeeded(await exchange(world, FORM_TOOL, "history", ANNA, "--assertion", assertion))
    assert f"  {SOCIAL}" in out and HOUSEHOLD in out
    as_json = json.loads(
        succeeded(
            await exchange(world, FORM_TOOL, "history", ANNA, "--assertion", assertion, "--json")
        )
    )
    assert any(r["actor"] == SOCIAL and HOUSEHOLD in r["material_types"] for r in as_json)
    assert ANNA not in json.dumps(as_json)  # the history names who and why, never the subject


async def test_objection_file_list_and_resolve(world: World) -> None:
    # The form tool files for the person, with the person's assertion.
    filed = await exchange(
        world,
        FORM_TOOL,
        "objection",
        "file",
        MARRIAGE,
        ANNA,
        "--reason",
        "divorced in 2024",
        "--propose",
        "marital_status=divorced",
        "--assertion",
        await assertion_file(world, ANNA),
        "--json",
    )
    objection = json.loads(succeeded(filed))
    assert objection["state"] == "OPEN" and objection["owner"] == CIVIL
    assert objection["proposed_fields"] == {"marital_status": "divorced"}
    listed = succeeded(await exchange(world, CIVIL, "objection", "list", "--open"))
    assert objection["id"] in listed and "OPEN" in listed
    resolved = await exchange(
        world,
        CIVIL,
        "objection",
        "resolve",
        objection["id"],
        "--state",
        "rejected",
        "--answer",
        "the divorce is not registered here",
    )
    assert "REJECTED" in succeeded(resolved) and "ledger entry #" in resolved.stdout
    again = await exchange(
        world,
        CIVIL,
        "objection",
        "resolve",
        objection["id"],
        "--state",
        "rejected",
        "--answer",
        "x",
    )
    assert "ALREADY_RESOLVED" in refused(again)
    assert "no objections" in succeeded(await exchange(world, CIVIL, "objection", "list", "--open"))


async def test_form_register_from_a_file_then_show(world: World, tmp_path: Path) -> None:
    definition = tmp_path / "form.toml"
    definition.write_text(
        f"""
[form]
id = "township-household-check"
name = "Household check"
purpose = "{ASSISTANCE}"

[[form.fields]]
name = "full_name"
label = "Full name"
material_type = "{HOUSEHOLD}"
material_field = "name"

[[form.fields]]
name = "phone"
label = "Phone"
""",
        encoding="utf-8",
    )
    out = succeeded(await exchange(world, FORM_TOOL, "form", "register", str(definition)))
    assert out.startswith("township-household-check: Household check (by js.nj.township-form")
    assert "asked of the person" in out and "registered (ledger entry #" in out
    shown = json.loads(succeeded(await exchange(world, FORM_TOOL, "form", "show", FORM, "--json")))
    assert shown["id"] == FORM and shown["purpose"] == ASSISTANCE
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[form]\nid = "x"\nname = "x"\npurpose = "p"\nfields = [{ label = "no name" }]\n'
    )
    result = await exchange(world, FORM_TOOL, "form", "register", str(bad))
    assert result.exit_code == 2 and "name is required" in result.output


def operator(world: World, *args: str) -> Result:
    argv = [*args, "--listen", world.hub.target, "--keys-dir", str(world.hub.keystore.root)]
    return CliRunner().invoke(main, argv, env={})


async def test_registry_list_set_state_and_rotation_to_the_next_key(world: World) -> None:
    listed = succeeded(await asyncio.to_thread(operator, world, "registry", "list"))
    assert f"endpoint 127.0.0.1:{world.adapters[CIVIL].port}" in listed
    suspended = await asyncio.to_thread(
        operator, world, "registry", "set-state", TOWNSHIP, "suspended", "--reason", "audit"
    )
    assert "SUSPENDED" in succeeded(suspended) and "state set (ledger entry #" in suspended.stdout
    assert "DEPARTMENT_INACTIVE" in refused(
        await exchange(world, TOWNSHIP, "check", HOUSEHOLD, ANNA)
    )

    store = world.hub.keystore
    old = store.department_signing_key(SOCIAL)
    made = CliRunner().invoke(main, ["keys", "next", SOCIAL, "--dir", str(store.root)], env={})
    assert "registry rotate" in succeeded(made)
    rotated = await asyncio.to_thread(operator, world, "registry", "rotate", SOCIAL, "--next")
    out = succeeded(rotated)
    assert f"{old.keyid[:16]}(rotated)" in out and "the next key now signs" in out
    assert store.department_signing_key(SOCIAL).keyid != old.keyid
    # The department signs with its new key at once.
    succeeded(await exchange(world, SOCIAL, "check", HOUSEHOLD, ANNA, verify=False))

    revoked = await asyncio.to_thread(operator, world, "registry", "revoke", SOCIAL, old.keyid)
    assert f"{old.keyid[:16]}(revoked)" in succeeded(revoked)
    assert "revoked (ledger entry #" in revoked.stdout
    shown = succeeded(await asyncio.to_thread(operator, world, "registry", "show", SOCIAL))
    assert f"key {old.keyid}  revoked" in shown


async def test_registry_update_changes_the_record_in_an_entry_the_verifier_accepts(
    world: World,
) -> None:
    civil = f"127.0.0.1:{world.adapters[CIVIL].port}"
    updated = await asyncio.to_thread(
        operator, world, "registry", "update", CIVIL, "--name", "Civil Affairs Bureau",
        "--endpoint", "127.0.0.1:1",
    )  # fmt: skip
    out = succeeded(updated)
    assert "Civil Affairs Bureau  endpoint 127.0.0.1:1" in out
    assert "updated name, provider_endpoint (ledger entry #" in out
    # The hub routes to the endpoint now registered: nothing listens there.
    assert "PROVIDER_UNAVAILABLE" in refused(
        await exchange(world, TOWNSHIP, "submit", MARRIAGE, CARL, "marital_status=married")
    )
    back = await asyncio.to_thread(
        operator, world, "registry", "update", CIVIL, "--endpoint", civil
    )
    assert f"Civil Affairs Bureau  endpoint {civil}" in succeeded(back)
    roles = await asyncio.to_thread(
        operator, world, "registry", "update", TOWNSHIP, "--role", "consumer", "--role", "collector"
    )
    assert f"{TOWNSHIP:32} ACTIVE    CONSUMER,COLLECTOR " in succeeded(roles)

    # Refusals: a provider without an endpoint, an unknown department, a caller other than
    # the operator; and a command naming no change is a usage error.
    no_endpoint = await asyncio.to_thread(
        operator, world, "registry", "update", CIVIL, "--endpoint", ""
    )
    assert "INVALID_ARGUMENT" in refused(no_endpoint) and "provider_endpoint" in no_endpoint.stderr
    unknown = await asyncio.to_thread(
        operator, world, "registry", "update", "js.nj.nobody", "--name", "x"
    )
    assert "UNKNOWN_DEPARTMENT" in refused(unknown)
    nothing = await asyncio.to_thread(operator, world, "registry", "update", CIVIL)
    assert nothing.exit_code == 2 and "give at least one of --name" in nothing.output
    body = registry_pb2.UpdateDepartmentRequest(department_id=CIVIL)
    body.department.name = "taken over"
    body.update_mask.paths.append("name")
    with pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].call(UPDATE, body, registry_pb2.DepartmentResponse)
    assert caught.value.reason == "OPERATOR_ONLY"
    body.update_mask.paths.append("keys")  # keys change by rotation only
    with pytest.raises(Refused) as caught:
        await world.hub.operator.call(UPDATE, body, registry_pb2.DepartmentResponse)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'keys' is not one" in caught.value.message

    # The changes are operator-signed entries an auditor's verification accepts.
    hub = world.hub
    await hub.server.stop(grace=1)
    history = hub.server.hub.key_history()
    verifier = hub.server.hub.ledger.verifier_key
    exported = io.StringIO()
    export_ledger(
        hub.server.hub.engine,
        exported,
        history,
        [verifier],
        operator_keys=first_keys(history, HUB_ID),
    )
    report = verify_export(
        io.StringIO(exported.getvalue()),
        hub_keys=[verifier],
        operator_keys=first_keys(history, HUB_ID),
    )
    assert report.ok, report.first_failure
    entries = [
        ledger_pb2.LedgerEntry.FromString(base64.b64decode(record["entry"]))
        for record in map(json.loads, exported.getvalue().splitlines())
        if record["type"] == "entry"
    ]
    updates = [
        dict(e.attributes)
        for e in entries
        if e.kind == ledger_pb2.DEPARTMENT_REGISTRATION
        and e.outcome == ledger_pb2.OK
        and "changed" in e.attributes
    ]
    assert [u["changed"] for u in updates] == [
        "name,provider_endpoint",
        "provider_endpoint",
        "roles",
    ]
    assert updates[2]["roles"] == "COLLECTOR,CONSUMER"


async def test_registry_refusals_exit_2_like_every_refusal(world: World) -> None:
    result = await asyncio.to_thread(
        operator, world, "registry", "set-state", "js.nj.nobody", "retired", "--reason", "x"
    )
    assert result.exit_code == 2 and result.stderr.startswith("refused: NOT_FOUND")


async def test_a_holder_refusing_a_value_is_named_as_its_decision(
    world: World, tmp_path: Path
) -> None:
    civil = create_engine(f"sqlite:///{tmp_path / 'civil' / 'civil.db'}")
    with civil.begin() as conn:  # the holder's own rule, enforced by its database
        conn.execute(
            text(
                "CREATE TRIGGER spouse_length BEFORE INSERT ON marriages "
                "WHEN length(NEW.spouse) > 8 BEGIN SELECT RAISE(ABORT, 'spouse too long'); END"
            )
        )
    civil.dispose()
    try:
        await world.clients[TOWNSHIP].submit(
            MARRIAGE, CARL, {"marital_status": "married", "spouse_name": "a very long name"}
        )
    except Refused as error:
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "SCHEMA_VIOLATION"
        assert "the holder refused" in error.message and "marriages" in error.message
        assert "cannot be reached" not in error.message
        assert "a very long name" not in error.message
    else:
        raise AssertionError("the holder's refusal was not passed on")
