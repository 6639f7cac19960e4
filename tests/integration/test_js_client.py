"""The JavaScript client (clients/js), built from protos/ alone, against a real hub and adapters.

Needs Node.js and the client's packages (``npm ci`` in clients/js, which .ci/run does). Without
them the tests skip with the reason; under ``CI=true`` they fail instead, like PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from exchange.v1 import exchange_pb2
from tests.flows import world as w

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js"


def node() -> str:
    """The node executable, or skip (fail under CI) if node or the client's packages are
    missing."""
    found = shutil.which("node")
    problem = None
    if found is None:
        problem = "the JavaScript client tests need Node.js (node on PATH)"
    elif not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        problem = "the JavaScript client tests need its packages: run npm ci in clients/js"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem + "; CI requires them")
        pytest.skip(problem)
    assert found is not None
    return found


def test_the_javascript_client_checks_the_conformance_vectors() -> None:
    result = subprocess.run(
        [node(), "--test", "test/"], cwd=CLIENT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


def _member(keystore: object, department: str) -> dict[str, str]:
    directory = keystore.department_dir(department)  # type: ignore[attr-defined]
    return {
        "id": department,
        "signing_key": str(directory / "signing.key"),
        "certificate": str(directory / "tls.pem"),
        "tls_key": str(directory / "tls.key"),
    }


async def test_the_javascript_client_works_against_a_real_hub(world: w.World) -> None:
    executable = node()
    hub = world.hub
    store = hub.keystore
    config = {
        "target": hub.target,
        "ca": str(store.ca_certificate),
        "hub_verifier_key": hub.server.hub.ledger.verifier_key,
        "subject_secret_hex": store.subject_key().hex(),
        "consumer": _member(store, w.SOCIAL),
        "collector": _member(store, w.TOWNSHIP),
        "form_tool": _member(store, w.FORM_TOOL),
        "assertion_hex": world.assertion(w.CARL).SerializeToString().hex(),
        "marriage": w.MARRIAGE,
        "household": w.HOUSEHOLD,
        "purpose": w.ASSISTANCE,
        "on_file": w.ANNA,
        "new_subject": w.CARL,
    }
    # The hub runs on this test's event loop: the client runs as a subprocess awaited on it.
    process = await asyncio.create_subprocess_exec(
        executable,
        "scripts/e2e.mjs",
        cwd=CLIENT,
        env={**os.environ, "EXCHANGE_E2E": json.dumps(config)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout.decode().strip().splitlines()[-1])

    assert out["check"]["on_file"] is True and out["check"]["holder"] == w.CIVIL
    assert out["request"]["fields"] == {"name": "张三 (demo)"}
    assert out["request"]["answers"] is True
    assert out["submit"] == {
        "outcome": exchange_pb2.STORED,
        "retry_outcome": exchange_pb2.STORED,
        "same_entry": True,
        "content_hash_matches": True,
        "reference_matches": True,
    }
    without = out["form_tool_submit"]["without"]
    assert (without["code"], without["reason"]) == ("UNAUTHENTICATED", "ASSERTION_REQUIRED")
    assert without["ledger_sequence"] is not None
    assert out["form_tool_submit"]["with"] == exchange_pb2.ALREADY_ON_FILE
    assert out["no_grant"]["code"] == "PERMISSION_DENIED"
    assert out["no_grant"]["reason"] == "NO_GRANT"
    assert out["no_grant"]["ledger_sequence"] is not None
    assert out["bad_subject"]["code"] == "INVALID_ARGUMENT"
    assert out["bad_subject"]["reason"] == "INVALID_ARGUMENT_FIELD"
