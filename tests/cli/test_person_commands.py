"""``exchange history``, ``objection file|list|resolve``, ``form register|show`` and the
operator's ``registry`` commands against a real hub and real adapters (the flow tests' world),
and a holder's refusal of a write reaching the caller as the holder's decision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from adapters.client import Refused
from exchange.cli.main import main
from tests.cli.test_flows_commands import (
    assertion_file,
    exchange,
    hub_logs,
    refused,
    succeeded,
    world,
)
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


async def test_history_lists_who_accessed_the_subject_in_utc(world: World) -> None:
    await world.clients[SOCIAL].check(HOUSEHOLD, ANNA)
    # A form tool reads the person's history with the person's assertion (docs/identity.md).
    assertion = await assertion_file(world, ANNA)
    without = await exchange(world, FORM_TOOL, "history", ANNA)
    assert "ASSERTION_REQUIRED" in refused(without)
    out = succeeded(await exchange(world, FORM_TOOL, "history", ANNA, "--assertion", assertion))
    assert f" UTC  {SOCIAL}" in out and HOUSEHOLD in out
    as_json = json.loads(
        succeeded(
            await exchange(world, FORM_TOOL, "history", ANNA, "--assertion", assertion, "--json")
        )
    )
    assert any(r["actor"] == SOCIAL and r["material_type"] == HOUSEHOLD for r in as_json)
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
