"""Logged exceptions carry their traceback, never the values of local variables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from exchange import logs

SUBJECT_ID = "990101199001010019"


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def look_up_person() -> None:
    subject_id = SUBJECT_ID  # a local holding personal data, as real handlers have
    raise LookupError(f"no holder answered for a subject of length {len(subject_id)}")


def log_failure() -> None:
    try:
        look_up_person()
    except LookupError:
        structlog.get_logger().exception("request_failed", incident="inc-7")


def test_json_exception_has_traceback_without_locals(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    log_failure()
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "request_failed" and event["incident"] == "inc-7"
    assert "Traceback (most recent call last)" in event["exception"]
    assert "look_up_person" in event["exception"] and "LookupError" in event["exception"]
    assert SUBJECT_ID not in line


def test_console_exception_has_traceback_without_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("info", "console")
    log_failure()
    err = capsys.readouterr().err
    assert "request_failed" in err and "Traceback (most recent call last)" in err
    assert "look_up_person" in err
    assert SUBJECT_ID not in err


def test_a_database_error_is_logged_without_its_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # An engine that shows parameters, standing in for PostgreSQL's DETAIL line, which quotes
    # the value of a violated key whatever the engine's settings.
    engine = create_engine(f"sqlite:///{tmp_path / 'people.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (id TEXT PRIMARY KEY)"))
        conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": SUBJECT_ID})
    logs.configure("info", "json")
    try:
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": SUBJECT_ID})
        except IntegrityError as exc:
            assert SUBJECT_ID in str(exc)  # what would have reached the log
            raise RuntimeError("the registration failed") from exc
    except RuntimeError:
        structlog.get_logger().exception("call_failed", incident="inc-8")
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert SUBJECT_ID not in line
    assert "sqlalchemy.exc.IntegrityError" in event["exception"]
    assert "sqlstate=SQLITE_CONSTRAINT_PRIMARYKEY" in event["exception"]
    assert "direct cause" in event["exception"]
    assert event["exception"].rstrip().endswith("RuntimeError: the registration failed")
    engine.dispose()


def test_a_postgresql_error_is_logged_without_the_key_its_detail_names(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (id TEXT PRIMARY KEY)"))
        conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": SUBJECT_ID})
    logs.configure("info", "json")
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": SUBJECT_ID})
    except IntegrityError as exc:
        assert f"Key (id)=({SUBJECT_ID})" in str(exc.orig)  # the server's DETAIL line
        structlog.get_logger().exception("call_failed")
    [line] = capsys.readouterr().err.splitlines()
    assert SUBJECT_ID not in line
    assert "sqlstate=23505 constraint=people_pkey" in json.loads(line)["exception"]
    engine.dispose()
