"""README's first command: `exchange demo` tells the whole story and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_tells_every_step_and_exits_zero(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    out = result.stdout
    print(out, result.stderr[-5000:])  # shown by pytest if an assertion below fails
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    # 王五 authenticates at the counter; without him the form tool is refused.
    assert "without him, the form tool gets nothing: UNAUTHENTICATED ASSERTION_REQUIRED" in out
    assert "not even whether his marriage record is on file: ASSERTION_REQUIRED" in out
    assert 'nor by submitting it ("already on file" would tell): ASSERTION_REQUIRED' in out
    # A form prefilled with each field's source; the missing fields listed.
    assert re.search(r"applicant_name\s+= 王五 \(demo\)\s+← demo\.public-security", out)
    assert re.search(r"credit_code\s+= 91990000DEMO00002X\s+← demo\.market-regulation", out)
    assert re.search(r"marital_status\s+= \(not on file: ask the person\)", out)
    assert "5 fields prefilled from signed sources, 2 missing" in out
    # Collected once, then the same submission again.
    assert "STORED: stored at demo.civil-affairs" in out
    assert "ALREADY_ON_FILE: nothing stored" in out
    # The preview shows the collected value as person-provided; he confirms.
    assert re.search(r"marital_status\s+= unmarried\s+← person_provided", out)
    assert "confirmation recorded as ledger entry #" in out
    # A legal-basis request, then consent given, used, revoked, and the next request refused.
    assert "for licence-review (a legal basis" in out
    assert "without his consent: PERMISSION_DENIED CONSENT_REQUIRED" in out
    assert re.search(r"served \{'marital_status': 'unmarried'\} under c-", out)
    assert "after the revocation: PERMISSION_DENIED CONSENT_REQUIRED" in out
    # Conditional: refused, granted, served; NOT_SHARED refused.
    assert "PERMISSION_DENIED NO_GRANT" in out
    assert "served {'marital_status': 'married'} signed by demo.civil-affairs" in out
    assert "PERMISSION_DENIED MATERIAL_NOT_SHARED" in out
    # The person's access history shows the prefill, the refused submission and both others.
    history = out.split("who has used his material", 1)[1].split("[", 1)[0]
    submits = re.findall(r"demo\.township-office\s+SUBMIT\s+marriage-record\s+-\s+(\S+)", history)
    assert submits == ["REFUSED", "OK", "OK"]  # without him, then collected once and again
    assert re.search(
        r"demo\.township-office\s+PREFILL\s+business-licence,household-registration", history
    )
    assert re.search(r"PREFILL .*REFUSED \(ASSERTION_REQUIRED\)", history)
    assert re.search(r"demo\.township-office\s+FORM_CONFIRMATION", history)
    assert re.search(
        r"demo\.market-regulation\s+REQUEST\s+marriage-record\s+licence-review", history
    )
    for kind in ("CONSENT_GIVEN", "CONSENT_REVOCATION"):
        assert kind in history
    assert len(re.findall(r"REFUSED \(CONSENT_REQUIRED\)", history)) == 2
    # Supervision shows an alert and the burden report.
    assert re.search(r"YELLOW PROCESS\s+repeated-refusals", out)
    assert re.search(r"demo\.civil-affairs\s+marriage-record\s+1\s+1\s+3\s+3\s+1", out)
    # The ledger exported and verified offline; everything stopped.
    assert re.search(r"verified: \d+ entries, \d+ envelope signatures, \d+ checkpoints", out)
    assert "Demo complete: everything it started has stopped." in out
    # Wording: the fields asked, the counter, labelled times, why an off-hours alert shows.
    assert "Only the missing fields are asked of 王五" in out
    assert "Another counter of the township office" in out
    assert re.search(r"#\d+\s+\d\d:\d\d:\d\d UTC demo\.township-office", history)
    assert re.search(r"\(it is \w{3} \d\d:\d\d UTC\+8: (within|outside) office hours", out)


def test_off_hours_note_says_why_the_alert_shows_or_not() -> None:
    from datetime import UTC, datetime

    from exchange.cli.demo import off_hours_note
    from exchange.config import Config

    monday_10_cst = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    monday_22_cst = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    assert "within office hours 08:00–18:00" in off_hours_note(Config(), monday_10_cst)
    assert "outside office hours" in off_hours_note(Config(), monday_22_cst)
    assert "Mon 10:00 UTC+8" in off_hours_note(Config(), monday_10_cst)


def test_the_demo_prints_the_ids_it_uses() -> None:
    from adapters import demo_data
    from exchange.cli.demo import demo_ids

    text = "\n".join(demo_ids())
    for value in (demo_data.TOWNSHIP, demo_data.ZHANG_SAN, demo_data.FORM_ID, "licence-review"):
        assert value in text
