"""ReadBack: an effect that writes, then reads in the same transaction what the call answers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, create_engine, text

from exchange.flows.record import ReadBack


def test_read_back_keeps_what_its_last_run_read(tmp_path: Path) -> None:
    # The ledger runs an effect again when it runs a batch again on a new connection: the
    # answer must be what the committed (last) run read.
    engine = create_engine(f"sqlite:///{tmp_path / 'rb.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE grants (id TEXT)"))

    def write(conn: Connection) -> None:
        conn.execute(text("INSERT INTO grants (id) VALUES ('g-1')"))

    def read(conn: Connection) -> int:
        return int(conn.execute(text("SELECT count(*) FROM grants")).scalar_one())

    effect = ReadBack(write, read)
    with engine.connect() as first:
        effect(first)  # this run's transaction is rolled back, as a lost connection's is
    with engine.begin() as second:
        second.execute(text("INSERT INTO grants (id) VALUES ('g-0')"))
        effect(second)
    assert effect.value == 2
    engine.dispose()
