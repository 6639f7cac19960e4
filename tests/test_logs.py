"""Logged exceptions carry their traceback, never the values of local variables."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from exchange import logs

SUBJECT_ID = "990101199001010011"


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
