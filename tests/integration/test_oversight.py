"""Access history and objections against a real hub and real provider adapters."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapters.client import Refused
from exchange.v1 import exchange_pb2
from tests.flows.world import (
    ANNA,
    CARL,
    CIVIL,
    FORM_TOOL,
    MARRIAGE,
    SOCIAL,
    TOWNSHIP,
    World,
)

FILE = "/exchange.v1.Exchange/FileObjection"
LIST = "/exchange.v1.Exchange/ListObjections"
RESOLVE = "/exchange.v1.Exchange/ResolveObjection"


async def refused(coroutine: object) -> Refused:
    with pytest.raises(Refused) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value


async def file(world: World, who: str = FORM_TOOL, subject: str = ANNA) -> exchange_pb2.Objection:
    body = exchange_pb2.FileObjectionRequest(
        material_type=MARRIAGE,
        subject_id=subject,
        reason="the person says the marriage was dissolved",
        proposed_fields={"marital_status": "divorced"},
    )
    if who == FORM_TOOL:  # filed for the person: with their assertion
        body.assertion.CopyFrom(world.assertion(subject))
    answer = await world.clients[who].call(FILE, body, exchange_pb2.ObjectionResponse)
    return answer.objection


async def test_access_history_lists_every_touch_of_the_subject_and_only_it(world: World) -> None:
    form_tool = world.clients[FORM_TOOL]
    await world.clients[SOCIAL].check(MARRIAGE, ANNA)
    await world.clients[TOWNSHIP].check(MARRIAGE, CARL)
    await refused(world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose="social-assistance"))
    history = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    kinds = [(a.actor, a.kind, a.outcome) for a in history]
    assert (SOCIAL, "CHECK", "OK") in kinds
    assert (SOCIAL, "REQUEST", "REFUSED") in kinds
    assert all(a.actor != TOWNSHIP for a in history)  # CARL's check is not ANNA's history
    refusal = next(a for a in history if a.kind == "REQUEST")
    assert refusal.reason == "NO_GRANT" and refusal.material_type == MARRIAGE
    again = await form_tool.access_history(ANNA, assertion=world.assertion(ANNA))
    assert again[-1].kind == "ACCESS_HISTORY"  # reading the history is itself on record


async def test_access_history_is_for_form_tools_only(world: World) -> None:
    error = await refused(world.clients[SOCIAL].access_history(ANNA))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")


async def test_objection_filed_listed_and_rejected_with_a_reason(world: World) -> None:
    objection = await file(world)
    assert objection.state == exchange_pb2.OPEN and objection.owner == CIVIL
    assert objection.deadline.seconds > objection.filed_at.seconds
    listed = await world.clients[CIVIL].call(
        LIST,
        exchange_pb2.ListObjectionsRequest(open_only=True),
        exchange_pb2.ListObjectionsResponse,
    )
    assert [o.id for o in listed.objections] == [objection.id]
    error = await refused(
        world.clients[CIVIL].call(
            RESOLVE,
            exchange_pb2.ResolveObjectionRequest(
                objection_id=objection.id, state=exchange_pb2.REJECTED
            ),
            exchange_pb2.ObjectionResponse,
        )
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT_FIELD",
    )
    answer = await world.clients[CIVIL].call(
        RESOLVE,
        exchange_pb2.ResolveObjectionRequest(
            objection_id=objection.id,
            state=exchange_pb2.REJECTED,
            resolution="the registry shows no dissolution",
        ),
        exchange_pb2.ObjectionResponse,
    )
    assert answer.objection.state == exchange_pb2.REJECTED
    assert answer.objection.resolution == "the registry shows no dissolution"
    again = await refused(
        world.clients[CIVIL].call(
            RESOLVE,
            exchange_pb2.ResolveObjectionRequest(
                objection_id=objection.id, state=exchange_pb2.REJECTED, resolution="again"
            ),
            exchange_pb2.ObjectionResponse,
        )
    )
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_RESOLVED")
    kinds = [e.kind for e in world.ledger_entries()]
    from exchange.v1 import ledger_pb2

    assert ledger_pb2.OBJECTION_FILING in kinds and ledger_pb2.OBJECTION_RESOLUTION in kinds
    filing = next(e for e in world.ledger_entries() if e.kind == ledger_pb2.OBJECTION_FILING)
    assert (
        filing.attributes["objection_id"] == objection.id
        and int(filing.attributes["deadline_us"]) > 0
    )


async def test_correction_needs_a_new_version_then_resolves(world: World) -> None:
    objection = await file(world)
    early = await refused(
        world.clients[CIVIL].call(
            RESOLVE,
            exchange_pb2.ResolveObjectionRequest(
                objection_id=objection.id, state=exchange_pb2.CORRECTED
            ),
            exchange_pb2.ObjectionResponse,
        )
    )
    assert (early.code, early.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CORRECTION_NOT_ON_FILE",
    )
    corrected = await world.clients[CIVIL].submit(
        MARRIAGE,
        ANNA,
        {"marital_status": "divorced", "spouse_name": "李四 (demo)", "registered_on": "2018-05-20"},
    )
    assert corrected.outcome == "NEW_VERSION"
    answer = await world.clients[CIVIL].call(
        RESOLVE,
        exchange_pb2.ResolveObjectionRequest(
            objection_id=objection.id, state=exchange_pb2.CORRECTED
        ),
        exchange_pb2.ObjectionResponse,
    )
    assert answer.objection.state == exchange_pb2.CORRECTED
    assert "version 2" in answer.objection.resolution
    assert dict(answer.objection.proposed_fields) == {}  # values in flight are not kept


async def test_only_the_owner_resolves_and_unknown_objections_are_not_found(world: World) -> None:
    objection = await file(world)
    error = await refused(
        world.clients[SOCIAL].call(
            RESOLVE,
            exchange_pb2.ResolveObjectionRequest(
                objection_id=objection.id, state=exchange_pb2.REJECTED, resolution="no"
            ),
            exchange_pb2.ObjectionResponse,
        )
    )
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    missing = await refused(
        world.clients[CIVIL].call(
            RESOLVE,
            exchange_pb2.ResolveObjectionRequest(
                objection_id="o-nope", state=exchange_pb2.REJECTED, resolution="no"
            ),
            exchange_pb2.ObjectionResponse,
        )
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_OBJECTION")


async def test_objection_to_material_not_on_file_is_not_found(world: World) -> None:
    with pytest.raises(Refused) as caught:
        await file(world, subject=CARL)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_ON_FILE")


async def test_resolutions_racing_for_one_objection_record_one_outcome(world: World) -> None:
    """The owner resolves one objection from several calls at once: one is the resolution, the
    others are refused ALREADY_RESOLVED (at the check, or in the entry's transaction when they
    passed it together), and a refused one's entry does not read like a resolution."""
    from exchange.v1 import ledger_pb2

    objection = await file(world)

    async def resolve(n: int) -> object:
        body = exchange_pb2.ResolveObjectionRequest(
            objection_id=objection.id,
            state=exchange_pb2.REJECTED,
            resolution=f"the registry shows no dissolution ({n})",
        )
        try:
            return await world.clients[CIVIL].call(RESOLVE, body, exchange_pb2.ObjectionResponse)
        except Refused as error:
            return error

    results = await asyncio.gather(*(resolve(n) for n in range(6)))
    served = [r for r in results if isinstance(r, exchange_pb2.ObjectionResponse)]
    refusals = [r for r in results if isinstance(r, Refused)]
    assert len(served) == 1 and len(refusals) == 5
    assert {(r.code, r.reason) for r in refusals} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_RESOLVED")
    }
    resolutions = [e for e in world.ledger_entries() if e.kind == ledger_pb2.OBJECTION_RESOLUTION]
    assert [e.outcome for e in resolutions].count(ledger_pb2.OK) == 1
    for entry in resolutions:
        assert entry.attributes["objection_id"] == objection.id
        if entry.outcome != ledger_pb2.OK:
            assert "state" not in entry.attributes and entry.version == 0
    stored = next(e for e in resolutions if e.outcome == ledger_pb2.OK)
    assert stored.attributes["state"] == "REJECTED"
