"""Effects: a call's change is committed in its entry's transaction, both or neither.

On SQLite and on PostgreSQL (whose transactions abort on the first error, so a failed effect
must be rolled back to its savepoint for the rest of the batch to commit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger, LedgerUnavailable, verify_receipt
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from tests.conftest import require_postgres
from tests.postgres import scratch_postgres

from .support import ORIGIN, draft


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def effect_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database with a scratch table ``effects`` (id unique) for effects to write."""
    with database_url(request.param, tmp_path) as url:
        engine = open_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE effects (id VARCHAR(32) PRIMARY KEY)"))
        yield engine
        engine.dispose()


def database_url(kind: str, tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    if kind == "sqlite":
        return contextlib.nullcontext(f"sqlite:///{tmp_path / 'effects.db'}")
    return scratch_postgres(require_postgres(), "exchange_test_effects")  # fails under CI


@pytest.fixture
async def ledger(effect_engine: Engine) -> AsyncIterator[Ledger]:
    ledger = Ledger(effect_engine, SigningKey.generate(), ORIGIN)
    await ledger.start()
    yield ledger
    await ledger.close()


def insert(row_id: str) -> Callable[[Connection], None]:
    def effect(conn: Connection) -> None:
        conn.execute(text("INSERT INTO effects (id) VALUES (:id)"), {"id": row_id})

    return effect


def stored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row.id for row in conn.execute(text("SELECT id FROM effects"))}


async def test_an_effect_is_committed_with_its_entry(ledger: Ledger, effect_engine: Engine) -> None:
    receipts = await asyncio.gather(
        *(ledger.append(draft(i), effect=insert(f"row-{i}")) for i in range(20))
    )
    assert sorted(r.sequence for r in receipts) == list(range(20))
    assert stored(effect_engine) == {f"row-{i}" for i in range(20)}
    assert ledger.size() == 20


async def test_a_failed_effect_leaves_out_its_entry_and_only_its_caller_fails(
    ledger: Ledger, effect_engine: Engine
) -> None:
    await ledger.append(draft(0), effect=insert("taken"))
    # Queued together, so that they share batches with the one whose effect fails.
    outcomes = await asyncio.gather(
        *(ledger.append(draft(i), effect=insert(f"row-{i}")) for i in range(1, 6)),
        ledger.append(draft(6), effect=insert("taken")),
        *(ledger.append(draft(i), effect=insert(f"row-{i}")) for i in range(7, 12)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[5], IntegrityError)
    receipts = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(receipts) == 10
    # The chain has no hole where the refused entry would have been.
    assert sorted(r.sequence for r in receipts) == list(range(1, 11))
    for receipt in receipts:
        verify_receipt(receipt, [ledger.verifier_key])
    assert ledger.size() == 11
    assert stored(effect_engine) == {"taken"} | {f"row-{i}" for i in (*range(1, 6), *range(7, 12))}
    actors = [e.decode().request_id for e in ledger.entries(0, 20)]
    assert "req-6" not in actors


async def test_an_effect_that_raises_its_own_error_is_refused_with_it(
    ledger: Ledger, effect_engine: Engine
) -> None:
    def broken(conn: Connection) -> None:
        insert("half-done")(conn)
        raise ValueError("the effect changed its mind")

    with pytest.raises(ValueError, match="changed its mind"):
        await ledger.append(draft(0), effect=broken)
    assert stored(effect_engine) == set()  # rolled back to its savepoint
    assert ledger.size() == 0
    assert (await ledger.append(draft(1))).sequence == 0


async def test_a_database_error_in_an_effect_is_ledger_unavailable(
    ledger: Ledger, effect_engine: Engine
) -> None:
    def missing_table(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table (id) VALUES ('x')"))

    with pytest.raises(LedgerUnavailable):
        await ledger.append(draft(0), effect=missing_table)
    assert ledger.size() == 0


async def test_a_failed_commit_stores_neither_the_entry_nor_its_effect(
    ledger: Ledger, effect_engine: Engine
) -> None:
    await ledger.append(draft(0), effect=insert("before"))
    with effect_engine.begin() as conn:
        conn.execute(text("DROP TABLE ledger_entries"))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(draft(1), effect=insert("lost"))
    assert stored(effect_engine) == {"before"}


async def test_a_connection_lost_after_the_commit_does_not_run_the_batch_again(
    ledger: Ledger, effect_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    def counted(conn: Connection) -> None:
        runs.append("ran")
        insert("grant-1")(conn)

    real_commit = Connection.commit
    lost = [True]

    def commit_then_lose_the_answer(self: Connection) -> None:
        real_commit(self)  # the database has committed, but the answer is lost with the link
        if lost and lost.pop():
            raise OperationalError(
                "COMMIT", {}, Exception("server closed"), connection_invalidated=True
            )

    monkeypatch.setattr(Connection, "commit", commit_then_lose_the_answer)
    with pytest.raises(LedgerUnavailable):  # the outcome is unknown to the writer
        await ledger.append(draft(1), effect=counted)
    monkeypatch.undo()
    assert runs == ["ran"]  # not a second time on a new connection
    assert stored(effect_engine) == {"grant-1"}
    assert [e.decode().request_id for e in ledger.entries(0, 10)] == ["req-1"]
    # The writer re-reads the head it may not have seen move, and goes on.
    assert (await ledger.append(draft(2))).sequence == 1


async def test_on_commit_runs_once_committed_even_if_the_caller_is_gone(
    ledger: Ledger, effect_engine: Engine
) -> None:
    committed: list[str] = []
    caller = asyncio.create_task(
        ledger.append(draft(1), effect=insert("slow"), on_commit=lambda: committed.append("slow"))
    )
    await asyncio.sleep(0)  # queued to the writer; then its caller goes away
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await ledger.append(draft(2))  # after the first, in this batch or the next
    assert committed == ["slow"] and stored(effect_engine) == {"slow"}


async def test_on_commit_does_not_run_for_a_refused_effect(ledger: Ledger) -> None:
    committed: list[str] = []
    await ledger.append(draft(0), effect=insert("taken"))
    with pytest.raises(IntegrityError):
        await ledger.append(
            draft(1), effect=insert("taken"), on_commit=lambda: committed.append("x")
        )
    assert committed == []


async def test_each_caller_of_a_failed_batch_gets_its_own_error(
    ledger: Ledger, effect_engine: Engine
) -> None:
    # Flows add their call's facts to the error they catch: a shared error would carry one
    # call's subject into another call's refusal entry.
    with effect_engine.begin() as conn:
        conn.execute(text("DROP TABLE ledger_entries"))
    outcomes = await asyncio.gather(
        *(ledger.append(draft(i)) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(o, LedgerUnavailable) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 4


async def test_a_batch_holds_at_most_64_effects(ledger: Ledger, effect_engine: Engine) -> None:
    before = ledger.commit_count
    await asyncio.gather(*(ledger.append(draft(i), effect=insert(f"r-{i}")) for i in range(100)))
    assert ledger.commit_count - before >= 2
    assert len(stored(effect_engine)) == 100 and ledger.size() == 100


@pytest.mark.parametrize("then_raise", [False, True])
async def test_an_effect_that_rolls_back_the_transaction_fails_its_batch(
    ledger: Ledger, effect_engine: Engine, then_raise: bool
) -> None:
    # Against the contract (an effect must not end the transaction): the batch's work and its
    # head lock are gone, so no entry of the batch may be appended.
    def rolls_back(conn: Connection) -> None:
        insert("early")(conn)
        conn.rollback()
        if then_raise:
            raise ValueError("and then fails")

    await ledger.append(draft(0), effect=insert("before"))
    outcomes = await asyncio.gather(
        ledger.append(draft(1), effect=insert("same-batch")),
        ledger.append(draft(2), effect=rolls_back),
        return_exceptions=True,
    )
    assert all(isinstance(o, LedgerUnavailable) for o in outcomes)
    assert stored(effect_engine) == {"before"}
    assert ledger.size() == 1
    assert (await ledger.append(draft(3), effect=insert("after"))).sequence == 1
    assert stored(effect_engine) == {"before", "after"}


async def test_on_commit_runs_when_the_commit_may_have_happened(
    ledger: Ledger, effect_engine: Engine
) -> None:
    # A failed batch may still have committed (the answer to COMMIT lost): caches are
    # refreshed anyway, as refreshing what did not change only costs a read.
    refreshed: list[str] = []
    with effect_engine.begin() as conn:
        conn.execute(text("DROP TABLE ledger_entries"))
    with pytest.raises(LedgerUnavailable):
        await ledger.append(draft(0), on_commit=lambda: refreshed.append("cache"))
    assert refreshed == ["cache"]
