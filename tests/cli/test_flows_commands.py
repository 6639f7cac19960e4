"""``exchange check|submit|request|prefill|grant|catalog`` against a real hub and two real
provider adapters (the flow tests' world), through click's runner.

The commands run their own event loop (``asyncio.run``), so each is invoked in a worker thread.
Hub and adapters run in this process: their log events are captured (``structlog``'s
``capture_logs``) rather than printed into the command's output, and checked for subject ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result

from exchange.cli.main import main
from exchange.v1 import catalog_pb2
from tests.conftest import HUB_ID, StartHub
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    BEN,
    CARL,
    CIVIL,
    CRIMINAL,
    FORM,
    FORM_TOOL,
    HOUSEHOLD,
    IDENTITY,
    MARRIAGE,
    POLICE,
    SOCIAL,
    TOWNSHIP,
    World,
    build,
)

SUBJECTS = (ANNA, BEN, CARL)


@pytest.fixture
def hub_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log event of the hub and adapters during the test, kept out of the CLI's output."""
    with structlog.testing.capture_logs() as events:
        yield events
    for event in events:
        text = json.dumps(event, ensure_ascii=False, default=str)
        assert not any(subject in text for subject in SUBJECTS), event


@pytest.fixture
async def world(
    start_hub: StartHub, tmp_path: Path, hub_logs: list[MutableMapping[str, Any]]
) -> AsyncIterator[World]:
    hub = await start_hub(provider_timeout_ms=1500)
    built = await build(hub, tmp_path)
    yield built
    for adapter in built.adapters.values():
        await adapter.stop(grace=0.2)


async def assertion_file(world: World, subject: str, audience: str = FORM_TOOL) -> str:
    """A subject assertion for ``subject`` made by ``exchange person assert`` (the development
    identity provider of the world), written to a file; its path."""
    path = world.hub.keystore.root.parent / f"assertion-{subject}-{audience}.bin"
    argv = [
        "person",
        "assert",
        subject,
        "--as",
        IDENTITY,
        "--audience",
        audience,
        "--out",
        str(path),
        "--keys-dir",
        str(world.hub.keystore.root),
    ]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv, env={})
    assert result.exit_code == 0, result.output
    assert path.stat().st_mode & 0o077 == 0  # it names the person: owner-readable only
    return str(path)


async def prefill(world: World, form: str, subject: str, *extra: str) -> Result:
    """``exchange prefill FORM SUBJECT --assertion FILE`` as the form tool."""
    path = await assertion_file(world, subject)
    return await exchange(world, FORM_TOOL, "prefill", form, subject, "--assertion", path, *extra)


async def exchange(world: World, department: str, *args: str, verify: bool = True) -> Result:
    """Run ``exchange ARGS`` as ``department`` against the world's hub (receipts verified)."""
    argv = [
        *args,
        "--as",
        department,
        "--listen",
        world.hub.target,
        "--keys-dir",
        str(world.hub.keystore.root),
    ]
    if verify:
        argv += ["--hub-verifier", world.hub.server.hub.ledger.verifier_key]
    return await asyncio.to_thread(CliRunner().invoke, main, argv, env={})


def succeeded(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def refused(result: Result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result.stderr


# ------------------------------------------------------------------------------ check


async def test_check_reports_material_on_file_with_its_holder(world: World) -> None:
    out = succeeded(await exchange(world, SOCIAL, "check", HOUSEHOLD, ANNA))
    assert out.startswith(f"on file: {HOUSEHOLD} v1 held by {POLICE} (reference ")
    assert "ledger entry #" in out
    assert "张三" not in out  # a check never shows content


async def test_check_reports_material_not_on_file(world: World) -> None:
    out = succeeded(await exchange(world, SOCIAL, "check", MARRIAGE, CARL))
    assert out.startswith(f"not on file: {MARRIAGE} at {CIVIL} (ledger entry #")


async def test_check_json_output_parses(world: World) -> None:
    on_file = json.loads(
        succeeded(await exchange(world, SOCIAL, "check", HOUSEHOLD, BEN, "--json"))
    )
    assert on_file["on_file"] is True
    assert (on_file["material_type"], on_file["holder"], on_file["version"]) == (
        HOUSEHOLD,
        POLICE,
        1,
    )
    assert on_file["reference"] and on_file["ledger_sequence"] > 0
    missing = json.loads(succeeded(await exchange(world, SOCIAL, "check", MARRIAGE, BEN, "--json")))
    assert missing["on_file"] is False and missing["reference"] == ""


async def test_a_form_tool_checks_with_the_persons_assertion_or_a_granted_legal_basis(
    world: World,
) -> None:
    error = refused(await exchange(world, FORM_TOOL, "check", MARRIAGE, ANNA))
    assert "refused: UNAUTHENTICATED ASSERTION_REQUIRED" in error
    path = await assertion_file(world, ANNA)
    out = succeeded(await exchange(world, FORM_TOOL, "check", MARRIAGE, ANNA, "--assertion", path))
    assert out.startswith(f"on file: {MARRIAGE} v1 held by {CIVIL}")
    args = ("check", MARRIAGE, ANNA, "--purpose", ASSISTANCE)
    assert "PERMISSION_DENIED NO_GRANT" in refused(await exchange(world, FORM_TOOL, *args))
    grant = ("grant", "issue", TOWNSHIP, MARRIAGE, "--field", "marital_status")
    succeeded(await exchange(world, CIVIL, *grant, "--purpose", ASSISTANCE))
    assert succeeded(await exchange(world, FORM_TOOL, *args)).startswith(f"on file: {MARRIAGE}")


# ------------------------------------------------------------------------------ submit


async def test_submit_stores_then_the_same_submission_is_already_on_file(world: World) -> None:
    args = ("submit", MARRIAGE, CARL, "marital_status=unmarried")
    first = succeeded(await exchange(world, TOWNSHIP, *args))
    assert first.startswith(f"STORED: {MARRIAGE} reference ")
    again = json.loads(succeeded(await exchange(world, TOWNSHIP, *args, "--json")))
    assert again["outcome"] == "ALREADY_ON_FILE"
    assert again["reference"] in first
    assert len(bytes.fromhex(again["content_hash"])) == 32
    out = succeeded(await exchange(world, SOCIAL, "check", MARRIAGE, CARL))
    assert out.startswith(f"on file: {MARRIAGE} v1 held by {CIVIL}")


async def test_a_form_tool_submits_only_with_the_persons_assertion(world: World) -> None:
    args = ("submit", MARRIAGE, CARL, "marital_status=unmarried")
    err = refused(await exchange(world, FORM_TOOL, *args))
    assert err.startswith("refused: UNAUTHENTICATED ASSERTION_REQUIRED: ")
    path = await assertion_file(world, CARL)
    out = succeeded(await exchange(world, FORM_TOOL, *args, "--assertion", path))
    assert out.startswith(f"STORED: {MARRIAGE} reference ")
    other = await assertion_file(world, ANNA)
    err = refused(await exchange(world, FORM_TOOL, *args, "--assertion", other))
    assert err.startswith("refused: PERMISSION_DENIED ASSERTION_SUBJECT_MISMATCH: ")


async def test_submit_without_name_value_pairs_is_a_usage_error(world: World) -> None:
    result = await exchange(world, TOWNSHIP, "submit", MARRIAGE, CARL, "unmarried")
    assert result.exit_code == 2
    assert "is not name=value" in result.stderr and "Usage:" in result.stderr
    none = await exchange(world, TOWNSHIP, "submit", MARRIAGE, CARL)
    assert none.exit_code == 2 and "give at least one field" in none.stderr


# ------------------------------------------------------------------------------ request and grants


async def test_request_without_grant_is_refused_with_exit_2_and_the_reason(world: World) -> None:
    result = await exchange(world, SOCIAL, "request", MARRIAGE, ANNA, "--purpose", ASSISTANCE)
    err = refused(result)
    assert err.startswith("refused: PERMISSION_DENIED NO_GRANT: ")
    assert result.stdout == ""


async def test_request_for_not_shared_material_is_refused(world: World) -> None:
    result = await exchange(world, SOCIAL, "request", CRIMINAL, ANNA, "--purpose", ASSISTANCE)
    assert refused(result).startswith("refused: PERMISSION_DENIED MATERIAL_NOT_SHARED: ")


async def test_grant_issue_then_request_is_served_verified(world: World) -> None:
    issued = await exchange(
        world,
        CIVIL,
        "grant",
        "issue",
        SOCIAL,
        MARRIAGE,
        "--field",
        "marital_status",
        "--purpose",
        ASSISTANCE,
        "--days",
        "30",
        "--json",
    )
    grant = json.loads(succeeded(issued))
    assert (grant["owner"], grant["consumer"], grant["material_type"]) == (CIVIL, SOCIAL, MARRIAGE)
    assert grant["fields"] == ["marital_status"] and grant["valid_until"] is not None

    served = succeeded(
        await exchange(world, SOCIAL, "request", MARRIAGE, ANNA, "--purpose", ASSISTANCE)
    )
    assert served.startswith(f"served: {MARRIAGE} v1 signed by {CIVIL} (reference ")
    assert "marital_status" in served and "married" in served
    assert "spouse_name" not in served  # only the granted field leaves the holder

    as_json = await exchange(
        world,
        SOCIAL,
        "request",
        MARRIAGE,
        ANNA,
        "--purpose",
        ASSISTANCE,
        "--field",
        "marital_status",
        "--json",
    )
    material = json.loads(succeeded(as_json))
    assert material["fields"] == {"marital_status": "married"}
    assert material["holder"] == CIVIL and material["ledger_sequence"] > 0

    beyond = await exchange(
        world, SOCIAL, "request", MARRIAGE, ANNA, "--purpose", ASSISTANCE, "--field", "spouse_name"
    )
    assert refused(beyond).startswith("refused: PERMISSION_DENIED FIELD_NOT_GRANTED: ")


async def test_grant_list_and_revoke(world: World) -> None:
    issued = await exchange(
        world,
        CIVIL,
        "grant",
        "issue",
        SOCIAL,
        MARRIAGE,
        "--field",
        "marital_status",
        "--purpose",
        ASSISTANCE,
        "--rate-per-minute",
        "10",
    )
    out = succeeded(issued)
    grant_id = out.split()[0]
    assert grant_id.startswith("g-") and "10/min" in out and "in force" in out
    listed = json.loads(succeeded(await exchange(world, SOCIAL, "grant", "list", "--json")))
    assert [g["id"] for g in listed] == [grant_id]

    not_owner = await exchange(world, SOCIAL, "grant", "revoke", grant_id)
    assert refused(not_owner).startswith("refused: PERMISSION_DENIED NOT_OWNER: ")
    revoked = succeeded(await exchange(world, CIVIL, "grant", "revoke", grant_id))
    assert "revoked 20" in revoked and "revoked (ledger entry #" in revoked
    after = await exchange(world, SOCIAL, "request", MARRIAGE, ANNA, "--purpose", ASSISTANCE)
    assert refused(after).startswith("refused: PERMISSION_DENIED GRANT_REVOKED: ")


async def test_grant_of_a_type_the_caller_does_not_own_is_refused(world: World) -> None:
    result = await exchange(
        world,
        SOCIAL,
        "grant",
        "issue",
        SOCIAL,
        MARRIAGE,
        "--field",
        "marital_status",
        "--purpose",
        ASSISTANCE,
    )
    assert refused(result).startswith("refused: PERMISSION_DENIED NOT_OWNER: ")


# ------------------------------------------------------------------------------ prefill


async def test_prefill_lists_each_value_with_its_source_and_the_missing_fields(
    world: World,
) -> None:
    out = succeeded(await prefill(world, FORM, BEN))
    lines = {line.split()[0]: line for line in out.splitlines()[:-1]}
    assert "王五 (demo)" in lines["full_name"]
    assert f"<- {POLICE} ({HOUSEHOLD} v1, authoritative)" in lines["full_name"]
    assert "authoritative" in lines["full_name"]
    assert "1992-02-02" in lines["birth_date"]
    # Nothing on file: missing, never "withheld" (even without a grant for marriage records).
    for name in ("address", "marital_status", "bank_account"):
        assert "(not on file: ask the person)" in lines[name]
    assert out.splitlines()[-1].startswith(f"{FORM}: 2 prefilled, 3 missing (ledger entry #")


async def test_prefill_draws_from_every_holder_once_granted(world: World) -> None:
    granted = await exchange(
        world,
        CIVIL,
        "grant",
        "issue",
        TOWNSHIP,
        MARRIAGE,
        "--field",
        "marital_status",
        "--purpose",
        ASSISTANCE,
    )
    succeeded(granted)
    out = succeeded(await prefill(world, FORM, ANNA))
    lines = {line.split()[0]: line for line in out.splitlines()[:-1]}
    assert "= married" in lines["marital_status"]
    assert f"<- {CIVIL} ({MARRIAGE} v1, authoritative)" in lines["marital_status"]
    assert f"<- {POLICE} ({HOUSEHOLD} v1, authoritative)" in lines["address"]
    assert "(not on file: ask the person)" in lines["bank_account"]
    assert out.splitlines()[-1].startswith(f"{FORM}: 4 prefilled, 1 missing (ledger entry #")


async def test_prefill_lists_material_on_file_but_not_granted_as_withheld(world: World) -> None:
    out = succeeded(await prefill(world, FORM, ANNA))
    lines = {line.split()[0]: line for line in out.splitlines()[:-1]}
    assert "(on file, not granted to this form: ask the person)" in lines["marital_status"]
    result = json.loads(succeeded(await prefill(world, FORM, ANNA, "--json")))
    assert result["withheld"] == ["marital_status"]


async def test_prefill_json_output_parses(world: World) -> None:
    result = json.loads(succeeded(await prefill(world, FORM, BEN, "--json")))
    by_name = {f["name"]: f for f in result["fields"]}
    assert set(by_name) == {"full_name", "birth_date"}
    assert by_name["full_name"]["value"] == "王五 (demo)"
    assert (by_name["full_name"]["holder"], by_name["full_name"]["material_type"]) == (
        POLICE,
        HOUSEHOLD,
    )
    assert len(bytes.fromhex(by_name["full_name"]["content_hash"])) == 32
    assert by_name["full_name"]["source_class"] == "AUTHORITATIVE"
    assert result["missing"] == ["address", "marital_status", "bank_account"]
    assert result["withheld"] == []
    assert result["form"] == FORM and result["ledger_sequence"] > 0


async def test_prefill_of_an_unknown_form_is_refused(world: World) -> None:
    result = await prefill(world, "no-such-form", BEN)
    assert refused(result).startswith("refused: NOT_FOUND UNKNOWN_FORM: ")


# ------------------------------------------------------------------------------ catalog


async def test_catalog_list_shows_types_purposes_and_forms(world: World) -> None:
    out = succeeded(await exchange(world, SOCIAL, "catalog", "list"))
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "CONDITIONAL" in rows[MARRIAGE] and CIVIL in rows[MARRIAGE]
    assert "UNCONDITIONAL" in rows[HOUSEHOLD] and "NOT_SHARED" in rows[CRIMINAL]
    assert "demo regulation" in rows[ASSISTANCE]
    assert "5 fields" in rows[FORM]


async def test_catalog_list_json_output_parses(world: World) -> None:
    listed = json.loads(succeeded(await exchange(world, SOCIAL, "catalog", "list", "--json")))
    types = {m["id"]: m for m in listed["material_types"]}
    assert set(types) == {MARRIAGE, HOUSEHOLD, CRIMINAL}
    assert types[MARRIAGE]["sharing_class"] == "CONDITIONAL"
    assert [f["name"] for f in types[HOUSEHOLD]["fields"]] == ["name", "birth_date", "address"]
    assert {p["id"] for p in listed["purposes"]} == {ASSISTANCE, "marriage-registration"}
    assert [f["id"] for f in listed["forms"]] == [FORM]


async def test_catalog_show_one_type(world: World) -> None:
    out = succeeded(await exchange(world, SOCIAL, "catalog", "show", MARRIAGE))
    assert out.startswith(f"{MARRIAGE} v1: ")
    assert f"owner {CIVIL}, CONDITIONAL" in out
    assert any(
        line.split()[:3] == ["registered_on", "DATE", "optional"] for line in out.splitlines()
    )
    unknown = await exchange(world, SOCIAL, "catalog", "show", "no-such-type")
    assert refused(unknown).startswith("refused: NOT_FOUND UNKNOWN_MATERIAL_TYPE: ")


async def test_catalog_publish_from_toml_then_republish_the_shown_json(
    world: World, tmp_path: Path
) -> None:
    definition = tmp_path / "vehicle.toml"
    definition.write_text(
        'id = "vehicle-registration"\n'
        'name = "Vehicle registration"\n'
        'sharing_class = "unconditional"\n'
        "retention_days = 3650\n"
        "[[fields]]\n"
        'name = "plate"\n'
        'type = "STRING"\n'
        "required = true\n"
        "[[fields]]\n"
        'name = "registered_on"\n'
        'type = "date"\n',
        encoding="utf-8",
    )
    out = succeeded(await exchange(world, POLICE, "catalog", "publish", str(definition)))
    assert out.startswith("vehicle-registration v1: Vehicle registration")
    assert f"owner {POLICE}, UNCONDITIONAL, kept 3650 days" in out

    shown = succeeded(
        await exchange(world, POLICE, "catalog", "show", "vehicle-registration", "--json")
    )
    edited = json.loads(shown)
    edited["fields"].append({"name": "colour", "type": "STRING"})
    again = tmp_path / "vehicle.json"
    again.write_text(json.dumps(edited), encoding="utf-8")
    republished = succeeded(
        await exchange(world, POLICE, "catalog", "publish", str(again), "--json")
    )
    assert json.loads(republished)["version"] == 2

    not_owner = await exchange(world, CIVIL, "catalog", "publish", str(again))
    assert refused(not_owner).startswith("refused: PERMISSION_DENIED NOT_OWNER: ")


async def test_catalog_publish_of_a_malformed_file_is_a_usage_error(
    world: World, tmp_path: Path
) -> None:
    definition = tmp_path / "bad.toml"
    definition.write_text('id = "x"\nname = "X"\nsharing_class = "SOMETIMES"\nfields = []\n')
    result = await exchange(world, POLICE, "catalog", "publish", str(definition))
    assert result.exit_code == 2 and "Usage:" in result.stderr
    assert "sharing_class must be one of UNCONDITIONAL, CONDITIONAL, NOT_SHARED" in result.stderr


async def test_catalog_purpose_is_defined_by_the_operator_only(world: World) -> None:
    args = (
        "catalog",
        "purpose",
        "pension-eligibility",
        "--name",
        "Pension eligibility",
        "--legal-basis",
        "demo regulation art. 3",
    )
    denied = await exchange(world, SOCIAL, *args)
    assert refused(denied).startswith("refused: PERMISSION_DENIED OPERATOR_ONLY: ")
    out = succeeded(await exchange(world, HUB_ID, *args))
    assert out.startswith("purpose pension-eligibility: Pension eligibility (demo regulation")
    listed = json.loads(succeeded(await exchange(world, SOCIAL, "catalog", "list", "--json")))
    assert "pension-eligibility" in {p["id"] for p in listed["purposes"]}


# ------------------------------------------------------------------------------ local failures


async def test_a_department_without_keys_fails_without_a_traceback(world: World) -> None:
    result = await exchange(world, "js.nj.unknown", "check", HOUSEHOLD, ANNA)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output


async def test_an_invalid_department_id_or_verifier_key_is_a_usage_error(world: World) -> None:
    bad_id = await exchange(world, "Not An Id", "check", HOUSEHOLD, ANNA)
    assert bad_id.exit_code == 2 and "Invalid value for '--as'" in bad_id.stderr
    bad_key = await exchange(
        world, SOCIAL, "check", HOUSEHOLD, ANNA, "--hub-verifier", "nope", verify=False
    )
    assert bad_key.exit_code == 2 and "Invalid value for '--hub-verifier'" in bad_key.stderr


async def test_receipts_not_signed_by_the_pinned_hub_key_fail_verification(
    world: World,
) -> None:
    from exchange.crypto.keys import SigningKey
    from exchange.ledger import verifier_key

    stranger = verifier_key(world.hub.config.origin, SigningKey.generate().public_bytes)
    result = await exchange(
        world, SOCIAL, "check", HOUSEHOLD, ANNA, "--hub-verifier", stranger, verify=False
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: verification failed: ")
    assert "Traceback" not in result.output


async def test_an_unreachable_hub_is_a_local_failure(world: World, tmp_path: Path) -> None:
    argv = [
        "check",
        HOUSEHOLD,
        ANNA,
        "--as",
        SOCIAL,
        "--listen",
        "127.0.0.1:9",
        "--keys-dir",
        str(world.hub.keystore.root),
    ]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv, env={})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the hub at 127.0.0.1:9 did not answer: UNAVAILABLE")


# ------------------------------------------------------------------------------ person


async def test_person_commands_history_objection_consent_and_confirmation(world: World) -> None:
    path = await assertion_file(world, ANNA)
    history = await exchange(world, FORM_TOOL, "person", "history", ANNA, "--assertion", path)
    assert succeeded(history).splitlines()[-1].endswith("accesses")
    rows = json.loads(
        succeeded(
            await exchange(
                world, FORM_TOOL, "person", "history", ANNA, "--assertion", path, "--json"
            )
        )
    )
    assert rows[-1]["kind"] == "ACCESS_HISTORY" and rows[-1]["identity_provider"] == IDENTITY
    filed = await exchange(
        world,
        FORM_TOOL,
        "person",
        "object",
        MARRIAGE,
        ANNA,
        "--reason",
        "dissolved",
        "--propose",
        "marital_status=divorced",
        "--assertion",
        path,
    )
    assert f"filed with {CIVIL}" in succeeded(filed)
    await world.hub.operator.define_purpose(
        purpose=catalog_pb2.Purpose(
            id="loan", name="loan", legal_basis="demo", basis=catalog_pb2.PERSON_CONSENT
        )
    )
    given = json.loads(
        succeeded(
            await exchange(
                world,
                FORM_TOOL,
                "person",
                "consent",
                "give",
                ANNA,
                "--consumer",
                SOCIAL,
                "--type",
                MARRIAGE,
                "--field",
                "marital_status",
                "--purpose",
                "loan",
                "--assertion",
                path,
                "--json",
            )
        )
    )
    assert given["consumer"] == SOCIAL and given["max_uses"] == 1
    listed = await exchange(
        world, FORM_TOOL, "person", "consent", "list", ANNA, "--assertion", path
    )
    assert given["id"] in succeeded(listed) and "in force" in listed.output
    revoked = await exchange(
        world, FORM_TOOL, "person", "consent", "revoke", ANNA, given["id"], "--assertion", path
    )
    assert f"consent {given['id']} revoked" in succeeded(revoked)
    confirmed = await exchange(
        world,
        FORM_TOOL,
        "person",
        "confirm",
        FORM,
        ANNA,
        "--value",
        "full_name=张三 (demo)",
        "--assertion",
        path,
    )
    assert "confirmed by the person" in succeeded(confirmed)


async def test_person_commands_refuse_another_persons_assertion(world: World) -> None:
    path = await assertion_file(world, BEN)
    result = await exchange(world, FORM_TOOL, "person", "history", ANNA, "--assertion", path)
    assert refused(result).startswith("refused: PERMISSION_DENIED ASSERTION_SUBJECT_MISMATCH: ")
    result = await exchange(world, FORM_TOOL, "prefill", FORM, ANNA, "--assertion", path)
    assert refused(result).startswith("refused: PERMISSION_DENIED ASSERTION_SUBJECT_MISMATCH: ")
