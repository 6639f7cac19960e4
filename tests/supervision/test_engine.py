"""The engine follows a real ledger: incremental, exactly once, and rebuilt on restart."""

from __future__ import annotations

from sqlalchemy import Engine

from exchange.ledger import EntryDraft, Ledger
from exchange.supervision import AlertLevel, Supervisor
from exchange.v1 import common_pb2, ledger_pb2

from .support import CONFIG, OFFICE_TIME, Stream, entry

CONSUMER, HOLDER = "js.nj.social-security", "js.nj.civil-affairs"


def refusal() -> EntryDraft:
    return EntryDraft(
        kind=ledger_pb2.REQUEST,
        actor=CONSUMER,
        outcome=ledger_pb2.REFUSED,
        reason=common_pb2.NO_GRANT,
        counterparty=HOLDER,
        material_type="marriage-record",
    )


def submission(result: str) -> EntryDraft:
    return EntryDraft(
        kind=ledger_pb2.SUBMIT,
        actor="js.nj.township-form",
        outcome=ledger_pb2.OK,
        counterparty=HOLDER,
        material_type="marriage-record",
        attributes={"submit": result},
    )


async def test_rules_run_as_entries_commit(engine: Engine, ledger: Ledger) -> None:
    supervisor = Supervisor(ledger, engine, CONFIG)
    await supervisor.start()
    try:
        await ledger.append(
            EntryDraft(
                kind=ledger_pb2.REQUEST,
                actor=CONSUMER,
                outcome=ledger_pb2.REFUSED,
                reason=common_pb2.CONTENT_MISMATCH,
                counterparty=HOLDER,
                material_type="marriage-record",
            )
        )
        assert await supervisor.settle(5)
        [alert] = supervisor.store.alerts()
        assert (alert.rule, alert.level, alert.sequence) == ("content-mismatch", AlertLevel.RED, 0)
        assert supervisor.position == 1 and supervisor.store.cursor() == 1
    finally:
        await supervisor.close()


async def test_restart_catches_up_once_and_rebuilds_the_window(
    engine: Engine, ledger: Ledger
) -> None:
    first = Supervisor(ledger, engine, CONFIG)
    await first.start()
    await ledger.append(refusal())
    await ledger.append(refusal())
    await ledger.append(submission("STORED"))
    assert await first.settle(5)
    await first.close()

    # Committed while no supervisor runs: caught up from the cursor at the next start.
    await ledger.append(submission("ALREADY_ON_FILE"))

    second = Supervisor(ledger, engine, CONFIG)
    await second.start()
    try:
        assert await second.settle(5)
        [counters] = second.store.counters()
        assert (counters.stored, counters.avoided, counters.refused) == (1, 1, 2)
        assert second.store.alerts() == []
        # The two refusals before the restart are in the rebuilt window: a third raises.
        await ledger.append(refusal())
        assert await second.settle(5)
        [alert] = second.store.alerts()
        assert (alert.rule, alert.level, alert.sequence) == (
            "repeated-refusals",
            AlertLevel.YELLOW,
            4,
        )
    finally:
        await second.close()


async def test_the_same_entries_are_stored_once(engine: Engine, ledger: Ledger) -> None:
    batch = Stream()(
        entry(ledger_pb2.SUBMIT, OFFICE_TIME, submit="ALREADY_ON_FILE"),
        entry(
            ledger_pb2.REQUEST,
            OFFICE_TIME,
            outcome=ledger_pb2.REFUSED,
            reason=common_pb2.CONTENT_MISMATCH,
        ),
    )
    await Supervisor(ledger, engine, CONFIG).feed(batch)
    # Another process (fresh in-memory state) seeing the same entries stores nothing again.
    await Supervisor(ledger, engine, CONFIG).feed(batch)
    store = Supervisor(ledger, engine, CONFIG).store
    assert [c.avoided for c in store.counters()] == [1]
    assert len(store.alerts()) == 1 and store.cursor() == 2


async def test_postgres_stores_effects_once_and_ticks(postgres_url: str) -> None:
    from exchange.crypto.keys import SigningKey
    from exchange.store.engines import open_engine
    from exchange.store.schema import upgrade

    pg = open_engine(postgres_url)
    upgrade(pg)
    ledger = Ledger(pg, SigningKey.generate(), "exchange.test/supervision")
    try:
        batch = Stream()(
            entry(ledger_pb2.SUBMIT, OFFICE_TIME, submit="STORED"),
            entry(ledger_pb2.PREFILL, OFFICE_TIME, actor="js.tool", material_types="a,b"),
            entry(ledger_pb2.OBJECTION_FILING, OFFICE_TIME, objection_id="o-1"),
        )
        await Supervisor(ledger, pg, CONFIG).feed(batch)
        again = Supervisor(ledger, pg, CONFIG)
        await again.feed(batch)
        assert [(c.material_type, c.stored, c.prefills) for c in again.store.counters()] == [
            ("a", 0, 1),
            ("b", 0, 1),
            ("marriage-record", 1, 0),
        ]
        assert again.store.usage(0)["js.tool"].uses == 1
        [overdue] = await again.tick(OFFICE_TIME + 16 * 86_400_000_000)
        assert overdue.level is AlertLevel.YELLOW
        assert await again.tick(OFFICE_TIME + 16 * 86_400_000_000) == []
    finally:
        pg.dispose()
