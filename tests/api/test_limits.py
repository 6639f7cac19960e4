"""The fairness limits' turn-taking: a department with many calls waiting delays another's by
one turn, not by its whole queue; a caller gone away leaves no slot behind."""

from __future__ import annotations

import asyncio

from exchange.api.limits import Kind, Limits, Slot
from exchange.config import LimitsConfig


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
