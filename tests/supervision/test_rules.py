"""Every rule is raised by its scenario and not by its near miss (entries at chosen times)."""

from __future__ import annotations

from exchange.supervision import AlertCategory, AlertLevel, Supervisor
from exchange.v1 import common_pb2, ledger_pb2

from .support import DAY, OFFICE_TIME, SECOND, Stream, entry, subject

REQ, OK, REFUSED, FAILED = ledger_pb2.REQUEST, ledger_pb2.OK, ledger_pb2.REFUSED, ledger_pb2.FAILED


def rules_raised(supervisor: Supervisor) -> list[tuple[str, AlertLevel, AlertCategory]]:
    return [(a.rule, a.level, a.category) for a in reversed(supervisor.store.alerts())]


# ---------------------------------------------------------------- provider time limit


async def test_provider_answer_beyond_time_limit_raises_yellow_timeliness(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    await supervisor.feed(stream(entry(REQ, OFFICE_TIME, provider_latency_ms="2500.4")))
    [alert] = supervisor.store.alerts()
    assert (alert.rule, alert.level, alert.category) == (
        "provider-late",
        AlertLevel.YELLOW,
        AlertCategory.TIMELINESS,
    )
    assert alert.department == "js.nj.civil-affairs"  # the provider, not the consumer
    assert "2500 ms" in alert.message and alert.sequence == 0


async def test_provider_answer_within_time_limit_raises_nothing(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(
            entry(REQ, OFFICE_TIME, provider_latency_ms="2000"),  # exactly at the limit
            entry(ledger_pb2.PREFILL, OFFICE_TIME, provider_latency_ms="150"),
            entry(ledger_pb2.CHECK, OFFICE_TIME, provider_latency_ms="9999"),  # not a provider call
        )
    )
    assert supervisor.store.alerts() == []


async def test_provider_timeout_raises_red_timeliness(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(entry(REQ, OFFICE_TIME, outcome=FAILED, reason=common_pb2.PROVIDER_TIMEOUT))
    )
    assert rules_raised(supervisor) == [("provider-late", AlertLevel.RED, AlertCategory.TIMELINESS)]


async def test_provider_unavailable_is_not_a_timeout(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(entry(REQ, OFFICE_TIME, outcome=FAILED, reason=common_pb2.PROVIDER_UNAVAILABLE))
    )
    assert supervisor.store.alerts() == []


# ---------------------------------------------------------------- objection deadlines


def filing(time_us: int, objection_id: str, deadline_us: int) -> ledger_pb2.LedgerEntry:
    return entry(
        ledger_pb2.OBJECTION_FILING,
        time_us,
        actor="js.nj.township-form",
        counterparty="js.nj.civil-affairs",
        objection_id=objection_id,
        deadline_us=str(deadline_us),
    )


async def test_objection_past_deadline_yellow_then_twice_past_red(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    deadline = OFFICE_TIME + 15 * DAY
    await supervisor.feed(stream(filing(OFFICE_TIME, "obj-1", deadline)))
    assert await supervisor.tick(deadline) == []  # at the deadline: not yet past it
    [yellow] = await supervisor.tick(deadline + SECOND)
    assert (yellow.level, yellow.category, yellow.rule) == (
        AlertLevel.YELLOW,
        AlertCategory.TIMELINESS,
        "objection-overdue",
    )
    assert yellow.department == "js.nj.civil-affairs" and yellow.sequence == 0
    assert await supervisor.tick(deadline + 10 * DAY) == []  # yellow is raised once
    [red] = await supervisor.tick(deadline + 15 * DAY)  # the 15 days allowed, twice over
    assert red.level is AlertLevel.RED and "twice" in red.message
    assert await supervisor.tick(deadline + 100 * DAY) == []
    assert [a.level for a in supervisor.store.alerts()] == [AlertLevel.RED, AlertLevel.YELLOW]


async def test_objection_resolved_before_deadline_raises_nothing(supervisor: Supervisor) -> None:
    stream = Stream()
    deadline = OFFICE_TIME + 15 * DAY
    await supervisor.feed(
        stream(
            filing(OFFICE_TIME, "obj-1", deadline),
            entry(ledger_pb2.OBJECTION_RESOLUTION, OFFICE_TIME + DAY, objection_id="obj-1"),
        )
    )
    assert await supervisor.tick(deadline + 40 * DAY) == []
    assert supervisor.store.alerts() == []


async def test_objection_without_deadline_uses_configured_days(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(entry(ledger_pb2.OBJECTION_FILING, OFFICE_TIME, objection_id="obj-2"))
    )
    assert await supervisor.tick(OFFICE_TIME + 14 * DAY) == []
    assert [a.level for a in await supervisor.tick(OFFICE_TIME + 16 * DAY)] == [AlertLevel.YELLOW]


async def test_correction_proposal_is_watched_like_an_objection(supervisor: Supervisor) -> None:
    stream = Stream()
    proposal = entry(
        ledger_pb2.SUBMIT,
        OFFICE_TIME,
        actor="js.nj.township-office",
        submit="CORRECTION_PROPOSED",
        objection_id="o-3",
    )
    other = entry(ledger_pb2.SUBMIT, OFFICE_TIME, submit="ALREADY_ON_FILE", objection_id="o-4")
    await supervisor.feed(stream(proposal, other))
    assert [a.level for a in await supervisor.tick(OFFICE_TIME + 16 * DAY)] == [AlertLevel.YELLOW]


# ---------------------------------------------------------------- repeated refusals


def refusal(time_us: int, actor: str = "js.nj.social-security") -> ledger_pb2.LedgerEntry:
    return entry(REQ, time_us, actor=actor, outcome=REFUSED, reason=common_pb2.NO_GRANT)


async def test_repeated_refusals_within_window_raise_process_alerts(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    await supervisor.feed(stream(*(refusal(OFFICE_TIME + i * SECOND) for i in range(6))))
    assert rules_raised(supervisor) == [
        ("repeated-refusals", AlertLevel.YELLOW, AlertCategory.PROCESS),  # 3rd refusal
        ("repeated-refusals", AlertLevel.RED, AlertCategory.PROCESS),  # 6th: twice the threshold
    ]
    yellow = supervisor.store.alerts()[-1]
    assert yellow.department == "js.nj.social-security" and "NO_GRANT" in yellow.message


async def test_refusals_below_threshold_or_spread_out_raise_nothing(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(
            refusal(OFFICE_TIME),
            refusal(OFFICE_TIME + SECOND),  # two within the window: below 3
            refusal(OFFICE_TIME + 601 * SECOND),  # the first two have left the window
            refusal(OFFICE_TIME + 1300 * SECOND),
            refusal(OFFICE_TIME + SECOND, actor="js.nj.other"),  # another consumer
            entry(REQ, OFFICE_TIME + 1301 * SECOND),  # served, not refused
            entry(
                ledger_pb2.CALL_REFUSAL,
                OFFICE_TIME + 1302 * SECOND,
                outcome=REFUSED,
                reason=common_pb2.BAD_SIGNATURE,
            ),  # unauthenticated: the actor is only a claim
        )
    )
    assert supervisor.store.alerts() == []


# ---------------------------------------------------------------- bulk access


async def test_bulk_access_above_threshold_raises_red_risk(supervisor: Supervisor) -> None:
    stream = Stream()
    entries = [entry(REQ, OFFICE_TIME + i * SECOND, subject_ref=subject(i)) for i in range(7)]
    await supervisor.feed(stream(*entries))
    [alert] = supervisor.store.alerts()  # the 6th subject crosses 5; once per window
    assert (alert.rule, alert.level, alert.category) == (
        "bulk-access",
        AlertLevel.RED,
        AlertCategory.RISK,
    )
    assert alert.sequence == 5 and alert.message.startswith("6 distinct subjects")
    for i in range(7):  # no personal data: the subject refs are not in the alert
        assert subject(i).hex() not in alert.message


async def test_bulk_access_at_threshold_or_same_subjects_raises_nothing(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    at_threshold = [entry(REQ, OFFICE_TIME + i, subject_ref=subject(i)) for i in range(5)]
    repeated = [entry(REQ, OFFICE_TIME + 100 + i, subject_ref=subject(i % 3)) for i in range(40)]
    spread = [
        entry(REQ, OFFICE_TIME + (4000 + 800 * i) * SECOND, subject_ref=subject(10 + i))
        for i in range(10)
    ]  # one every 800 s: at most 5 within any hour
    refused = [
        entry(REQ, OFFICE_TIME, actor="js.nj.x", outcome=REFUSED, subject_ref=subject(50 + i))
        for i in range(10)
    ]  # refused calls reveal nothing: they do not count
    await supervisor.feed(stream(*at_threshold, *repeated, *spread, *refused))
    assert [a for a in supervisor.store.alerts() if a.rule == "bulk-access"] == []


async def test_form_tool_reading_many_access_histories_raises_red_risk(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    histories = [
        entry(
            ledger_pb2.ACCESS_HISTORY,
            OFFICE_TIME + i * SECOND,
            actor="js.nj.township-form",
            counterparty="",
            material_type="",
            subject_ref=subject(i),
        )
        for i in range(6)
    ]
    await supervisor.feed(stream(*histories))
    [alert] = supervisor.store.alerts()
    assert (alert.rule, alert.level, alert.category) == (
        "bulk-access",
        AlertLevel.RED,
        AlertCategory.RISK,
    )
    assert alert.department == "js.nj.township-form" and alert.sequence == 5


# ---------------------------------------------------------------- content mismatch


async def test_content_mismatch_raises_red_content(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(entry(REQ, OFFICE_TIME, outcome=REFUSED, reason=common_pb2.CONTENT_MISMATCH))
    )
    assert rules_raised(supervisor) == [("content-mismatch", AlertLevel.RED, AlertCategory.CONTENT)]
    assert supervisor.store.alerts()[0].department == "js.nj.civil-affairs"


async def test_other_refusals_are_not_content_mismatches(supervisor: Supervisor) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(
            entry(REQ, OFFICE_TIME, outcome=REFUSED, reason=common_pb2.NO_GRANT),
            entry(REQ, OFFICE_TIME),
            entry(ledger_pb2.CHECK, OFFICE_TIME, outcome=REFUSED, reason=common_pb2.NOT_ON_FILE),
        )
    )
    assert supervisor.store.alerts() == []


# ---------------------------------------------------------------- office hours


async def test_conditional_request_at_night_raises_yellow_discretion(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    night = OFFICE_TIME + 12 * 3600 * SECOND  # 22:00 local
    await supervisor.feed(
        stream(
            entry(REQ, night, sharing_class="CONDITIONAL"),
            entry(REQ, night + 60 * SECOND, sharing_class="CONDITIONAL"),  # same night: once
        )
    )
    [alert] = supervisor.store.alerts()
    assert (alert.rule, alert.level, alert.category) == (
        "off-hours-conditional",
        AlertLevel.YELLOW,
        AlertCategory.DISCRETION,
    )
    assert alert.department == "js.nj.social-security" and "22:00" in alert.message


async def test_conditional_request_on_saturday_raises_discretion(supervisor: Supervisor) -> None:
    stream = Stream()
    saturday = OFFICE_TIME + 3 * DAY  # Saturday 10:00 local
    await supervisor.feed(stream(entry(REQ, saturday, sharing_class="CONDITIONAL")))
    assert [a.rule for a in supervisor.store.alerts()] == ["off-hours-conditional"]


async def test_office_hours_or_unconditional_requests_raise_nothing(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    await supervisor.feed(
        stream(
            entry(REQ, OFFICE_TIME, sharing_class="CONDITIONAL"),  # Wednesday 10:00
            entry(REQ, OFFICE_TIME + 7 * 3600 * SECOND, sharing_class="CONDITIONAL"),  # 17:00
            entry(REQ, OFFICE_TIME + 12 * 3600 * SECOND, sharing_class="UNCONDITIONAL"),
            entry(ledger_pb2.CHECK, OFFICE_TIME + 12 * 3600 * SECOND, sharing_class="CONDITIONAL"),
        )
    )
    assert supervisor.store.alerts() == []


async def test_prefill_failures_raise_timeliness_and_content_alerts(supervisor: Supervisor) -> None:
    stream = Stream()
    failed = entry(
        ledger_pb2.PREFILL,
        OFFICE_TIME,
        material_type="",
        failures="marriage-record:PROVIDER_TIMEOUT,household-registration:CONTENT_MISMATCH",
    )
    clean = entry(ledger_pb2.PREFILL, OFFICE_TIME, material_type="", failures="")
    unavailable = entry(
        ledger_pb2.PREFILL,
        OFFICE_TIME,
        material_type="",
        failures="marriage-record:PROVIDER_UNAVAILABLE",
    )
    await supervisor.feed(stream(failed, clean, unavailable))
    raised = {(a.rule, a.level, a.material_type) for a in supervisor.store.alerts()}
    assert raised == {
        ("provider-late", AlertLevel.RED, "marriage-record"),
        ("content-mismatch", AlertLevel.RED, "household-registration"),
    }
