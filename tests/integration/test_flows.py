"""Collect once, share many times: Check / Submit / Request / Prefill through a real hub and two
real provider adapters (SQL on SQLite, CSV / JSON Lines files) over mTLS on loopback."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from adapters.client import Refused
from exchange.clock import now_us, to_timestamp
from exchange.v1 import common_pb2, exchange_pb2, grants_pb2, ledger_pb2
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
    MARRIAGE,
    MARRIAGE_FIELDS,
    MARRIAGE_REGISTRATION,
    POLICE,
    SOCIAL,
    TOWNSHIP,
    World,
)

ISSUE = "/exchange.v1.Grants/IssueGrant"


async def grant(
    world: World,
    *,
    consumer: str = SOCIAL,
    fields: tuple[str, ...] = ("marital_status",),
    purposes: tuple[str, ...] = (ASSISTANCE,),
    valid_from_us: int | None = None,
    valid_until_us: int | None = None,
    rate_per_minute: int = 0,
) -> grants_pb2.Grant:
    body = grants_pb2.IssueGrantRequest(
        grant=grants_pb2.Grant(
            consumer=consumer,
            material_type=MARRIAGE,
            fields=list(fields),
            purposes=list(purposes),
            rate_per_minute=rate_per_minute,
        )
    )
    if valid_from_us is not None:
        body.grant.valid_from.CopyFrom(to_timestamp(valid_from_us))
    if valid_until_us is not None:
        body.grant.valid_until.CopyFrom(to_timestamp(valid_until_us))
    answer = await world.clients[CIVIL].call(ISSUE, body, grants_pb2.GrantResponse)
    return answer.grant


async def refused(coroutine: object) -> Refused:
    with pytest.raises(Refused) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value


def no_personal_data(world: World) -> None:
    """No subject id and no field value appears in any ledger entry, in any envelope stored
    beside one (what auditors receive), or in the hub's request log."""
    ledger = world.hub.server.hub.ledger
    stored = ledger.entries(0, ledger.size())
    from sqlalchemy import select

    from exchange.store.tables import requests

    with world.hub.server.hub.engine.connect() as conn:
        answers = [bytes(r.response or b"") for r in conn.execute(select(requests)).all()]
    for data in [
        *(e.entry_bytes for e in stored),
        *(e.envelope_bytes for e in stored),
        *answers,
    ]:
        for secret in (ANNA, BEN, CARL, "李四", "张三"):
            assert secret.encode() not in data


# ------------------------------------------------------------------------------ Check


async def test_check_finds_published_holding_without_content(world: World) -> None:
    answer = await world.clients[TOWNSHIP].check(MARRIAGE, ANNA)
    assert answer.on_file and answer.version == 1 and answer.holder == CIVIL
    assert answer.reference.startswith("m-")
    missing = await world.clients[TOWNSHIP].check(MARRIAGE, CARL)
    assert not missing.on_file and missing.holder == CIVIL
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.CHECK and entry.attributes["on_file"] == "false"
    assert len(entry.subject_ref) == 32
    no_personal_data(world)


async def test_check_of_unknown_type_is_not_found(world: World) -> None:
    error = await refused(world.clients[TOWNSHIP].check("no-such-type", ANNA))
    assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "UNKNOWN_MATERIAL_TYPE"
    assert world.last_entry().outcome == ledger_pb2.REFUSED


# ------------------------------------------------------------------------------ Request


async def test_unconditional_material_is_served_to_any_consumer_and_logged(world: World) -> None:
    material = await world.clients[SOCIAL].request(HOUSEHOLD, ANNA, purpose=ASSISTANCE)
    assert material.fields == {
        "name": "张三 (demo)",
        "birth_date": "1990-01-01",
        "address": "示例路 1 号",
    }
    assert material.holder == POLICE
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.REQUEST and entry.outcome == ledger_pb2.OK
    assert entry.counterparty == POLICE and entry.purpose == ASSISTANCE
    no_personal_data(world)


async def test_unconditional_material_needs_the_consumer_role(world: World) -> None:
    error = await refused(world.clients[FORM_TOOL].request(HOUSEHOLD, ANNA, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED and error.reason == "ROLE_REQUIRED"


async def test_not_shared_material_never_leaves_the_owner(world: World) -> None:
    error = await refused(world.clients[SOCIAL].request(CRIMINAL, ANNA, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED and error.reason == "MATERIAL_NOT_SHARED"
    assert not any(f[0] == CRIMINAL for f in world.spies[POLICE].fetches)
    assert world.last_entry().reason == common_pb2.MATERIAL_NOT_SHARED


async def test_conditional_material_without_grant_is_refused(world: World) -> None:
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED and error.reason == "NO_GRANT"
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.REQUEST and entry.outcome == ledger_pb2.REFUSED
    assert entry.reason == common_pb2.NO_GRANT and entry.material_type == MARRIAGE
    assert len(entry.subject_ref) == 32
    assert world.spies[CIVIL].fetches == []


async def test_granted_request_returns_only_granted_fields_signed_by_owner(world: World) -> None:
    await grant(world)
    material = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert material.fields == {"marital_status": "married"}
    assert material.holder == CIVIL and material.version == 1
    # The adapter was asked for the granted field and nothing else.
    assert world.spies[CIVIL].fetches == [(MARRIAGE, ANNA, ("marital_status",))]
    entry = world.last_entry()
    assert entry.outcome == ledger_pb2.OK and entry.attributes["fields"] == "marital_status"
    assert entry.attributes["grant_id"].startswith("g-")
    no_personal_data(world)


async def test_request_for_fields_outside_the_grant_is_refused_and_never_asked(
    world: World,
) -> None:
    await grant(world)
    error = await refused(
        world.clients[SOCIAL].request(
            MARRIAGE, ANNA, purpose=ASSISTANCE, fields=["marital_status", "spouse_name"]
        )
    )
    assert error.reason == "FIELD_NOT_GRANTED" and "spouse_name" in error.message
    assert world.spies[CIVIL].fetches == []
    # Asking for everything gets what the grant allows, and the adapter sees only that.
    material = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert set(material.fields) == {"marital_status"}
    for _, _, asked in world.spies[CIVIL].fetches:
        assert set(asked) <= {"marital_status"}


async def test_request_for_another_purpose_is_refused(world: World) -> None:
    await grant(world)
    error = await refused(
        world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=MARRIAGE_REGISTRATION)
    )
    assert error.reason == "PURPOSE_NOT_GRANTED"
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose="not-catalogued"))
    assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "UNKNOWN_PURPOSE"


async def test_expired_and_not_yet_valid_grants_are_refused(world: World) -> None:
    now = now_us()
    await grant(world, valid_from_us=now - 7_200_000_000, valid_until_us=now - 3_600_000_000)
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert error.reason == "GRANT_EXPIRED"


async def test_revoked_grant_is_refused_at_once(world: World) -> None:
    issued = await grant(world)
    await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    revoked = await world.clients[CIVIL].revoke_grant(grant_id=issued.id)
    assert revoked.grant.HasField("revoked_at")
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert error.reason == "GRANT_REVOKED"
    assert world.last_entry().attributes["method"].endswith("/Request")


async def test_only_the_owner_grants_and_revokes(world: World) -> None:
    body = grants_pb2.IssueGrantRequest(
        grant=grants_pb2.Grant(
            consumer=SOCIAL,
            material_type=MARRIAGE,
            fields=["marital_status"],
            purposes=[ASSISTANCE],
        )
    )
    error = await refused(world.clients[POLICE].call(ISSUE, body, grants_pb2.GrantResponse))
    assert error.reason == "NOT_OWNER"
    issued = await grant(world)
    error = await refused(world.clients[SOCIAL].revoke_grant(grant_id=issued.id))
    assert error.reason == "NOT_OWNER"


async def test_rate_limit_is_resource_exhausted_with_retry_delay(world: World) -> None:
    await grant(world, rate_per_minute=2)
    for _ in range(2):
        await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    with pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "RATE_LIMITED"
    assert world.last_entry().reason == common_pb2.RATE_LIMITED


async def test_request_for_material_not_on_file_is_not_found(world: World) -> None:
    await grant(world)
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, BEN, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "NOT_ON_FILE"


async def test_provider_down_is_unavailable_and_recorded_as_failed(world: World) -> None:
    await grant(world)
    await world.adapters[CIVIL].stop(grace=0)
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "PROVIDER_UNAVAILABLE"
    entry = world.last_entry()
    assert entry.outcome == ledger_pb2.FAILED and entry.reason == common_pb2.PROVIDER_UNAVAILABLE
    assert entry.counterparty == CIVIL


async def test_provider_slow_is_deadline_exceeded_within_the_callers_deadline(
    world: World,
) -> None:
    await grant(world)
    world.spies[CIVIL].delay = 3.0
    started = time.monotonic()
    # The hub's provider timeout (1.5 s) ends the wait.
    error = await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED and error.reason == "PROVIDER_TIMEOUT"
    assert time.monotonic() - started < 2.9
    entry = world.last_entry()
    assert entry.outcome == ledger_pb2.FAILED and entry.reason == common_pb2.PROVIDER_TIMEOUT
    # A caller deadline shorter than the provider timeout is honoured too, with the reason.
    body = exchange_pb2.MaterialRequest(material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE)
    started = time.monotonic()
    error = await refused(
        world.clients[SOCIAL].call(
            "/exchange.v1.Exchange/Request", body, exchange_pb2.MaterialResponse, timeout=1.0
        )
    )
    assert error.reason == "PROVIDER_TIMEOUT"
    assert time.monotonic() - started < 1.0
    world.spies[CIVIL].delay = 0.0
    await asyncio.sleep(0)


# ------------------------------------------------------------------------------ Submit


async def test_submit_same_content_returns_already_on_file_and_is_counted(world: World) -> None:
    on_file = await world.clients[TOWNSHIP].check(MARRIAGE, ANNA)
    answer = await world.clients[TOWNSHIP].submit(
        MARRIAGE,
        ANNA,
        {"marital_status": "married", "spouse_name": "李四 (demo)", "registered_on": "2018-05-20"},
    )
    assert answer.outcome == "ALREADY_ON_FILE"
    assert answer.reference == on_file.reference and answer.version == 1
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.SUBMIT and entry.attributes["submit"] == "ALREADY_ON_FILE"
    no_personal_data(world)


async def test_submit_new_subject_is_stored_at_the_owner_and_indexed(world: World) -> None:
    fields = {
        "marital_status": "married",
        "spouse_name": "赵六 (demo)",
        "registered_on": "2020-02-02",
    }
    answer = await world.clients[TOWNSHIP].submit(MARRIAGE, BEN, fields)
    assert answer.outcome == "STORED" and answer.version == 1
    check = await world.clients[TOWNSHIP].check(MARRIAGE, BEN)
    assert check.on_file and check.reference == answer.reference
    # Stored at the owner: a granted consumer now gets it from the civil-affairs database.
    await grant(world, fields=MARRIAGE_FIELDS)
    material = await world.clients[SOCIAL].request(MARRIAGE, BEN, purpose=ASSISTANCE)
    assert material.fields == fields
    again = await world.clients[TOWNSHIP].submit(MARRIAGE, BEN, fields)
    assert again.outcome == "ALREADY_ON_FILE" and again.reference == answer.reference


async def test_owner_changed_content_is_a_new_version(world: World) -> None:
    fields = {
        "marital_status": "divorced",
        "spouse_name": "李四 (demo)",
        "registered_on": "2018-05-20",
    }
    answer = await world.clients[CIVIL].submit(MARRIAGE, ANNA, fields)
    assert answer.outcome == "NEW_VERSION" and answer.version == 2
    await grant(world)
    material = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert material.fields == {"marital_status": "divorced"} and material.version == 2


async def test_changed_content_from_another_department_is_a_correction_proposal(
    world: World,
) -> None:
    fields = {
        "marital_status": "divorced",
        "spouse_name": "李四 (demo)",
        "registered_on": "2018-05-20",
    }
    answer = await world.clients[TOWNSHIP].submit(MARRIAGE, ANNA, fields)
    assert answer.outcome == "CORRECTION_PROPOSED" and answer.objection_id.startswith("o-")
    assert answer.version == 1
    # Never an overwrite: the owner still serves the old content.
    await grant(world)
    material = await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert material.fields == {"marital_status": "married"}
    proposals = world.hub.server.hub.objections.for_owner(CIVIL, open_only=True)
    assert [p.id for p in proposals] == [answer.objection_id]


async def test_submit_violating_the_schema_is_invalid(world: World) -> None:
    error = await refused(
        world.clients[TOWNSHIP].submit(
            MARRIAGE, CARL, {"marital_status": "x", "registered_on": "2020-13-01"}
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "SCHEMA_VIOLATION"
    error = await refused(world.clients[TOWNSHIP].submit(MARRIAGE, CARL, {"spouse_name": "x"}))
    assert error.reason == "SCHEMA_VIOLATION"


async def test_an_objection_whose_reason_holds_a_nul_character_is_invalid(world: World) -> None:
    body = exchange_pb2.FileObjectionRequest(
        material_type=MARRIAGE,
        subject_id=ANNA,
        reason="misspelt\x00name",
        assertion=world.assertion(ANNA),
    )
    error = await refused(
        world.clients[FORM_TOOL].call(
            "/exchange.v1.Exchange/FileObjection", body, exchange_pb2.ObjectionResponse
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT_FIELD" and "NUL" in error.message
    assert world.hub.server.hub.objections.for_owner(CIVIL, open_only=False) == []


# ------------------------------------------------------------------------------ Prefill


async def test_prefill_fills_what_is_on_file_with_provenance_and_lists_the_rest(
    world: World,
) -> None:
    answer = await world.clients[FORM_TOOL].call(
        "/exchange.v1.Exchange/Prefill",
        exchange_pb2.PrefillRequest(form_id=FORM, subject_id=ANNA, assertion=world.assertion(ANNA)),
        exchange_pb2.PrefillResponse,
    )
    filled = {f.name: f for f in answer.fields}
    assert filled["full_name"].value == "张三 (demo)" and filled["full_name"].holder == POLICE
    assert filled["full_name"].reference.startswith("m-") and filled["full_name"].version == 1
    assert len(filled["full_name"].content_hash) == 32
    assert set(filled) == {"full_name", "birth_date", "address"}
    # No grant to the form tool (or its township) for marriage records: withheld, not fetched.
    assert list(answer.withheld) == ["marital_status"]
    assert list(answer.missing) == ["bank_account"]
    assert len(answer.materials) == 1
    entry = world.last_entry()
    assert entry.kind == ledger_pb2.PREFILL and entry.attributes["filled"] == "3"
    no_personal_data(world)


async def test_prefill_uses_a_grant_to_the_form_tools_department_and_lists_missing(
    world: World,
) -> None:
    await grant(world, consumer=TOWNSHIP)
    client = world.clients[FORM_TOOL]
    full = await client.prefill(FORM, ANNA, assertion=world.assertion(ANNA))
    assert full.values()["marital_status"] == "married"
    assert {m.holder for m in full.materials} == {CIVIL, POLICE}
    partial = await client.prefill(FORM, BEN, assertion=world.assertion(BEN))
    assert partial.values() == {"full_name": "王五 (demo)", "birth_date": "1992-02-02"}
    assert list(partial.missing) == ["address", "marital_status", "bank_account"]
    nothing = await client.prefill(FORM, CARL, assertion=world.assertion(CARL))
    assert nothing.fields == () and len(nothing.missing) == 5


async def test_prefill_with_a_holder_down_lists_its_fields_as_unavailable(world: World) -> None:
    await grant(world, consumer=TOWNSHIP)
    await world.adapters[CIVIL].stop(grace=0)
    answer = await world.clients[FORM_TOOL].call(
        "/exchange.v1.Exchange/Prefill",
        exchange_pb2.PrefillRequest(form_id=FORM, subject_id=ANNA, assertion=world.assertion(ANNA)),
        exchange_pb2.PrefillResponse,
    )
    assert list(answer.unavailable) == ["marital_status"]
    assert {f.name for f in answer.fields} == {"full_name", "birth_date", "address"}
    assert "PROVIDER_UNAVAILABLE" in world.last_entry().attributes["failures"]


async def test_prefill_fetches_holders_concurrently(world: World) -> None:
    await grant(world, consumer=TOWNSHIP)
    world.spies[CIVIL].delay = 0.6
    started = time.monotonic()
    await world.clients[FORM_TOOL].prefill(FORM, ANNA, assertion=world.assertion(ANNA))
    # Sequential would be >= 0.6 s for civil affairs plus the police fetch; both overlap.
    assert time.monotonic() - started < 1.2
    world.spies[CIVIL].delay = 0.0


async def test_prefill_of_unknown_form_is_not_found(world: World) -> None:
    error = await refused(
        world.clients[FORM_TOOL].prefill("no-such-form", ANNA, assertion=world.assertion(ANNA))
    )
    assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "UNKNOWN_FORM"


# ------------------------------------------------------------------------------ holdings


async def test_republishing_unchanged_holdings_changes_nothing(world: World) -> None:
    from adapters.holdings import publish_holdings

    summary = await publish_holdings(world.clients[POLICE], world.spies[POLICE], HOUSEHOLD)
    assert summary.outcomes == {"ALREADY_ON_FILE": 2}
    error = await refused(publish_holdings(world.clients[POLICE], world.spies[CIVIL], MARRIAGE))
    assert error.reason == "NOT_OWNER"


async def test_every_call_appends_exactly_one_entry(world: World) -> None:
    # (The SDK's end-to-end verification reads the registry: those reads are entries too.)
    before = len(world.ledger_entries())
    await world.clients[TOWNSHIP].check(HOUSEHOLD, ANNA)
    await world.clients[SOCIAL].request(HOUSEHOLD, ANNA, purpose=ASSISTANCE)
    await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE))
    await world.clients[FORM_TOOL].prefill(FORM, BEN, assertion=world.assertion(BEN))
    added = world.ledger_entries()[before:]
    assert [ledger_pb2.EntryKind.Name(e.kind) for e in added if e.kind != ledger_pb2.READ] == [
        "CHECK",
        "REQUEST",
        "REQUEST",
        "PREFILL",
    ]
