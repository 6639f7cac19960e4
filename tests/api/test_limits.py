"""The fairness limits' turn-taking: a department with many calls waiting delays another's by
one turn, not by its whole queue, and runs one call at a time while departments without a
backlog are served; a caller gone away leaves no slot behind."""

from __future__ import annotations

import asyncio

import pytest

from exchange import errors
from exchange.api import limits as limits_module
from exchange.api.limits import Kind, Limits, Slot
from exchange.config import LimitsConfig
from exchange.v1 import common_pb2


async def test_departments_take_turns_for_freed_slots() -> None:
    limits = Limits(LimitsConfig(calls=1, calls_per_department=1, calls_per_certificate=1))
    first = await limits.call("flood", None, None)
    order: list[str] = []
    slots: list[Slot] = []

    async def queued(department: str) -> None:
        slots.append(await limits.call(department, None, None))
        order.append(department)

    flood = [asyncio.create_task(queued("flood")) for _ in range(3)]
    await asyncio.sleep(0)
    quiet = asyncio.create_task(queued("quiet"))
    await asyncio.sleep(0)
    assert limits.waiting() == 4 and limits.waiting("quiet") == 1
    first.release()
    for turn in range(1, 5):
        for _ in range(100):  # the turn's task runs within a few loop iterations
            if len(order) == turn:
                break
            await asyncio.sleep(0)
        assert len(order) == turn and limits.in_use(Kind.CALL) == 1
        slots[-1].release()
    await asyncio.gather(*flood, quiet)
    assert order == ["flood", "quiet", "flood", "flood"]
    assert limits.in_use(Kind.CALL) == 0 and limits.waiting() == 0


async def test_a_waiting_caller_that_goes_away_leaves_no_slot_behind() -> None:
    limits = Limits(LimitsConfig(calls_per_department=1, calls_per_certificate=1))
    held = await limits.call("a", b"cert", None)
    gone = asyncio.create_task(limits.call("a", b"cert", None))
    await asyncio.sleep(0)
    assert limits.waiting("a") == 1
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert limits.waiting() == 0
    held.release()
    assert limits.in_use(Kind.CALL) == 0
    again = await limits.call("a", b"cert", None)
    again.release()
    again.release()  # releasing twice is harmless
    assert limits.in_use(Kind.CALL) == 0


async def settle() -> None:
    """Let the tasks whose turn came run (a few loop iterations)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_backlogged_department_runs_one_call_while_another_department_is_served() -> None:
    limits = Limits(LimitsConfig(calls_per_department=4, calls_per_certificate=4))
    flood = [await limits.call("flood", None, None) for _ in range(4)]
    queued = [asyncio.create_task(limits.call("flood", None, None)) for _ in range(3)]
    await settle()
    quiet = await limits.call("quiet", None, None)  # no backlog: served at once
    for slot in flood[:3]:
        slot.release()
    await settle()
    # Its three freed slots are not given back to the flood while quiet is in progress.
    assert limits.in_use(Kind.CALL, "flood") == 1 and limits.waiting("flood") == 3
    flood[3].release()
    await settle()
    assert limits.in_use(Kind.CALL, "flood") == 1 and limits.waiting("flood") == 2
    quiet.release()
    (await queued[0]).release()
    await settle()
    # quiet's call ended a moment ago: the flood still runs one call at a time.
    assert limits.in_use(Kind.CALL, "flood") == 1 and limits.waiting("flood") == 1
    for task in queued[1:]:
        (await task).release()
    assert limits.in_use(Kind.CALL) == 0 and limits.waiting() == 0


async def test_a_backlogged_department_alone_runs_its_full_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits_module, "LIGHT_WINDOW_SECONDS", 0.0)
    limits = Limits(LimitsConfig(calls_per_department=4, calls_per_certificate=4))
    quiet = await limits.call("quiet", None, None)
    flood = [await limits.call("flood", None, None) for _ in range(4)]
    queued = [asyncio.create_task(limits.call("flood", None, None)) for _ in range(4)]
    await settle()
    flood[0].release()
    await settle()
    assert limits.in_use(Kind.CALL, "flood") == 3  # quiet is in progress: no turn given
    quiet.release()
    flood[1].release()
    await settle()
    # Nobody else is left: the flood's freed slots all go to its waiting calls.
    assert limits.in_use(Kind.CALL, "flood") == 4 and limits.waiting("flood") == 2
    for slot in flood[2:]:
        slot.release()
    for task in queued:
        (await task).release()
    assert limits.in_use(Kind.CALL) == 0 and limits.waiting() == 0


async def test_departments_that_all_have_a_backlog_run_their_full_shares() -> None:
    limits = Limits(LimitsConfig(calls_per_department=2, calls_per_certificate=2))
    held = {d: [await limits.call(d, None, None) for _ in range(2)] for d in ("a", "b")}
    queued = {d: [asyncio.create_task(limits.call(d, None, None)) for _ in range(4)] for d in held}
    await settle()
    for slots in held.values():
        for slot in slots:
            slot.release()
    await settle()
    assert limits.in_use(Kind.CALL, "a") == 2 and limits.in_use(Kind.CALL, "b") == 2
    assert limits.waiting("a") == 2 and limits.waiting("b") == 2
    for tasks in queued.values():
        for task in tasks:
            (await task).release()
    assert limits.in_use(Kind.CALL) == 0


async def test_a_call_whose_wait_runs_out_is_refused_with_its_reason() -> None:
    limits = Limits(LimitsConfig(calls_per_department=1, calls_per_certificate=1))
    held = await limits.call("a", None, None)
    with pytest.raises(errors.ResourceExhausted) as caught:
        await limits.call("a", None, limits_module.DEADLINE_MARGIN_SECONDS + 0.05)
    assert caught.value.reason == common_pb2.TOO_MANY_CALLS
    assert "deadline" in str(caught.value)
    assert limits.waiting() == 0
    held.release()
    assert limits.in_use(Kind.CALL) == 0


async def test_a_caller_gone_away_before_its_turn_is_handed_on_is_skipped() -> None:
    limits = Limits(LimitsConfig(calls_per_department=1, calls_per_certificate=1))
    held = await limits.call("a", None, None)
    gone = asyncio.create_task(limits.call("a", None, None))
    next_ = asyncio.create_task(limits.call("a", None, None))
    await settle()
    gone.cancel()
    held.release()  # before the gone caller's task has run its cancellation
    slot = await next_
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert limits.in_use(Kind.CALL) == 1 and limits.waiting() == 0
    slot.release()
    assert limits.in_use(Kind.CALL) == 0


async def test_a_department_alone_does_not_yield_to_its_own_earlier_calls() -> None:
    limits = Limits(LimitsConfig(calls_per_department=2, calls_per_certificate=2))
    first = await limits.call("busy", None, None)
    first.release()  # it had no backlog then
    held = [await limits.call("busy", None, None) for _ in range(2)]
    queued = [asyncio.create_task(limits.call("busy", None, None)) for _ in range(3)]
    await settle()
    for slot in held:
        slot.release()
    await settle()
    assert limits.in_use(Kind.CALL, "busy") == 2 and limits.waiting("busy") == 1
    for task in queued:
        (await task).release()
    assert limits.in_use(Kind.CALL) == 0
