"""The hub's hot-path storage: the loop's index read, batched request-id claims, write-behind
commits. Real SQLite files and, where named, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from structlog.testing import capture_logs

from exchange.crypto.keys import SigningKey
from exchange.ledger import EntryDraft, Ledger
from exchange.store.engines import open_engine
from exchange.store.materials import IndexedMaterial, MaterialIndex
from exchange.store.requests import ANSWERED, PENDING, RequestLog
from exchange.store.schema import upgrade
from exchange.store.write_lock import writing
from exchange.v1 import ledger_pb2
from tests.postgres import drop_other_sessions


def _material(reference: str, version: int, fields: dict[str, bytes]) -> IndexedMaterial:
    return IndexedMaterial(
        reference=reference,
        material_type="marriage-record",
        subject_ref=b"s" * 32,
        version=version,
        content_hash=bytes([version]) * 32,
        holder="js.nj.civil-affairs",
        submitted_by="js.nj.civil-affairs",
        field_hashes=fields,
    )


def _put(
    engine: Engine, index: MaterialIndex, material: IndexedMaterial, superseded: str | None, at: int
) -> None:
    with writing(engine) as conn:
        index.put_version(conn, material, superseded, at)


def test_the_loop_read_answers_as_the_pooled_read(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/hub.db")
    upgrade(engine)
    index = MaterialIndex(engine)
    try:
        ref = b"s" * 32
        assert index.current_on_loop("marriage-record", ref) is None
        assert index.current("marriage-record", ref) is None

        first = _material("m-1", 1, {"marital_status": b"a" * 32, "spouse_name": b"b" * 32})
        _put(engine, index, first, None, 1)
        assert index.current_on_loop("marriage-record", ref) == first
        assert index.current("marriage-record", ref) == first

        # A new version supersedes the old one: both reads see only the new one, at once (the
        # loop's connection holds no snapshot between reads).
        second = _material("m-2", 2, {"marital_status": b"c" * 32})
        _put(engine, index, second, "m-1", 2)
        assert index.current_on_loop("marriage-record", ref) == second
        assert index.current("marriage-record", ref) == second

        # A version with no field hashes (every field empty) still reads.
        third = _material("m-3", 3, {})
        _put(engine, index, third, "m-2", 3)
        assert index.current_on_loop("marriage-record", ref) == third
        assert index.current_on_loop("birth-record", ref) is None
    finally:
        index.close()
        engine.dispose()


@contextlib.asynccontextmanager
async def _request_log(url: str) -> AsyncIterator[tuple[RequestLog, Engine]]:
    """A started request log on a migrated write-behind engine; closed afterwards."""
    engine = open_engine(url, synchronous="NORMAL")
    upgrade(engine)
    log = RequestLog(engine)
    log.start()
    try:
        yield log, engine
    finally:
        await log.close()
        engine.dispose()


async def _claims_in_one_batch(url: str) -> None:
    async with _request_log(url) as (log, _):
        # Queued together, so the writer takes them as one batch: the same id twice, two ids,
        # and an answer followed by a retry of its id.
        first, again, other = await asyncio.gather(
            log.claim("d1", "r1", b"e" * 32, "/m", 1),
            log.claim("d1", "r1", b"e" * 32, "/m", 1),
            log.claim("d2", "r1", b"f" * 32, "/m", 1),
        )
        assert first is None and other is None
        assert again is not None and again.state == PENDING and again.envelope_sha256 == b"e" * 32

        await log.complete("d1", "r1", ANSWERED, b"answer")
        retry = await log.claim("d1", "r1", b"e" * 32, "/m", 2)
        assert retry is not None and retry.state == ANSWERED and retry.response == b"answer"

        # A released id is claimed afresh, also within one batch.
        released, reclaimed = await asyncio.gather(
            log.release("d2", "r1"), log.claim("d2", "r1", b"g" * 32, "/m", 3)
        )
        assert released is None and reclaimed is None
        record = await log.claim("d2", "r1", b"g" * 32, "/m", 3)
        assert record is not None and record.envelope_sha256 == b"g" * 32


def test_claims_batched_on_sqlite(tmp_path: Path) -> None:
    asyncio.run(_claims_in_one_batch(f"sqlite:///{tmp_path}/hub.db"))


def test_claims_batched_on_postgres(postgres_url: str) -> None:
    asyncio.run(_claims_in_one_batch(postgres_url))


def test_write_behind_engines(tmp_path: Path, postgres_url: str) -> None:
    sqlite = open_engine(f"sqlite:///{tmp_path}/hub.db", synchronous="NORMAL")
    with sqlite.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    sqlite.dispose()
    relaxed = open_engine(postgres_url, synchronous="NORMAL")
    durable = open_engine(postgres_url)
    try:
        with relaxed.connect() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
        with durable.connect() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    finally:
        relaxed.dispose()
        durable.dispose()


def test_write_behind_refuses_unknown_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        open_engine(f"sqlite:///{tmp_path}/hub.db", synchronous="OFF")


async def _answer_written_while_idle(url: str) -> None:
    async with _request_log(url) as (log, engine):
        assert await log.claim("d1", "r1", b"e" * 32, "/m", 1) is None
        # No claim follows: the answer is committed when ``complete`` returns.
        await log.complete("d1", "r1", ANSWERED, b"answer")
        with engine.connect() as conn:
            state, response = conn.execute(
                text("SELECT state, response FROM requests WHERE request_id = 'r1'")
            ).one()
        assert (state, bytes(response)) == (ANSWERED, b"answer")


def test_an_answer_is_written_when_no_claim_follows(tmp_path: Path) -> None:
    asyncio.run(_answer_written_while_idle(f"sqlite:///{tmp_path}/hub.db"))


async def _writers_survive_a_dropped_connection(url: str) -> None:
    engine = open_engine(url)
    upgrade(engine)
    relaxed = open_engine(url, synchronous="NORMAL")
    log = RequestLog(relaxed)
    log.start()
    ledger = Ledger(engine, SigningKey.generate(), "test.exchange/log")
    await ledger.start()
    try:
        assert await log.claim("d1", "r1", b"e" * 32, "/m", 1) is None
        first = await ledger.append(_entry(1))
        # Both writers keep a connection between batches; the server drops them.
        assert drop_other_sessions(url) >= 2
        # The next batch of each reconnects once and succeeds: nothing was lost or refused.
        assert await log.claim("d1", "r2", b"f" * 32, "/m", 2) is None
        second = await ledger.append(_entry(2))
        assert second.sequence == first.sequence + 1
        again = await log.claim("d1", "r1", b"e" * 32, "/m", 3)
        assert again is not None and again.state == PENDING
    finally:
        await ledger.close()
        await log.close()
        relaxed.dispose()
        engine.dispose()


def _entry(i: int) -> EntryDraft:
    return EntryDraft(
        kind=ledger_pb2.CHECK,
        actor="js.nj.civil-affairs",
        outcome=ledger_pb2.OK,
        request_id=f"req-{i}",
        material_type="household-registration",
    )


def test_writers_survive_a_dropped_postgres_connection(postgres_url: str) -> None:
    asyncio.run(_writers_survive_a_dropped_connection(postgres_url))


async def _loop_reads_on_postgres(url: str) -> None:
    engine = open_engine(url)
    upgrade(engine)
    index = MaterialIndex(engine)
    ref = b"s" * 32
    try:
        assert await index.current_async("marriage-record", ref) is None
        first = _material("m-1", 1, {"marital_status": b"a" * 32, "spouse_name": b"b" * 32})
        _put(engine, index, first, None, 1)
        assert await index.current_async("marriage-record", ref) == first
        assert index.current("marriage-record", ref) == first
        second = _material("m-2", 2, {})
        _put(engine, index, second, "m-1", 2)
        assert await index.current_async("marriage-record", ref) == second

        # Many reads at once share a few connections; every one gets the answer.
        answers = await asyncio.gather(
            *(index.current_async("marriage-record", ref) for _ in range(20))
        )
        assert answers == [second] * 20
        assert index._readers is not None and 1 <= index._readers.opened <= 4

        # The server drops the loop's connections: the next read reconnects once.
        assert drop_other_sessions(url) >= 1
        assert await index.current_async("marriage-record", ref) == second
    finally:
        await index.close_readers()
        index.close()
        engine.dispose()


def test_the_loop_reads_the_index_on_postgres(postgres_url: str) -> None:
    asyncio.run(_loop_reads_on_postgres(postgres_url))


async def _claims_reconnect_mid_batch(url: str) -> None:
    # A durable engine has no transaction hook: the batch's first statement is the claim on
    # the driver's cursor, so it is the driver that finds the connection gone.
    engine = open_engine(url)
    upgrade(engine)
    log = RequestLog(engine)
    log.start()
    try:
        assert await log.claim("d1", "r1", b"e" * 32, "/m", 1) is None
        assert drop_other_sessions(url) >= 1
        with capture_logs() as events:
            assert await log.claim("d1", "r2", b"f" * 32, "/m", 2) is None
        names = [event["event"] for event in events]
        assert "request_log_reconnected" in names
        assert not [name for name in names if name.endswith("close_failed")], names
        again = await log.claim("d1", "r1", b"e" * 32, "/m", 3)
        assert again is not None and again.state == PENDING
    finally:
        await log.close()
        engine.dispose()


def test_claims_reconnect_when_the_driver_finds_the_connection_gone(postgres_url: str) -> None:
    asyncio.run(_claims_reconnect_mid_batch(postgres_url))
