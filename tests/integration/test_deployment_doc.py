"""docs/deployment.md runs as written: its shell blocks (all but the one marked ``your site``),
in order, as one bash script with ``set -e``, against two scratch PostgreSQL databases (the
hub's, and the department's own holding an existing table), on free loopback ports."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from exchange.store.engines import open_engine
from tests.conftest import require_postgres
from tests.postgres import scratch_postgres

ROOT = Path(__file__).resolve().parents[2]


def shell_blocks(document: Path) -> list[str]:
    text_ = document.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"(<!-- your site -->\n)?```sh\n(.*?)```", text_, re.S):
        if match.group(1) is None:
            blocks.append(match.group(2))
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_walkthrough_has_steps() -> None:
    assert len(shell_blocks(ROOT / "docs" / "deployment.md")) >= 8


@pytest.mark.postgres
@pytest.mark.slow
def test_the_deployment_walkthrough_runs_as_written(tmp_path: Path) -> None:
    base = require_postgres()
    with (
        scratch_postgres(base, "exchange_walk_hub") as hub_db,
        scratch_postgres(base, "exchange_walk_civil") as civil_db,
    ):
        civil = open_engine(civil_db)
        with civil.begin() as conn:  # the department's existing table
            conn.execute(
                text(
                    "CREATE TABLE marriage_registrations (citizen_id varchar(18) PRIMARY KEY,"
                    " status varchar(16) NOT NULL, spouse varchar(64), reg_date date)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO marriage_registrations VALUES"
                    " ('110101199003070011', 'married', 'Li Na', '2019-05-20'),"
                    " ('110101198511230021', 'unmarried', NULL, NULL)"
                )
            )
        civil.dispose()
        bin_dir = Path(sys.executable).parent
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "HUB_DB": hub_db,
            "CIVIL_DB": civil_db,
            "HUB_PORT": str(free_port()),
            "ADAPTER_PORT": str(free_port()),
            "METRICS_PORT": str(free_port()),
        }
        script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
        script += "\n".join(shell_blocks(ROOT / "docs" / "deployment.md"))
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        logs = "".join(
            f"\n--- {name}\n{(tmp_path / name).read_text()[-3000:]}"
            for name in ("hub.log", "adapter.log")
            if (tmp_path / name).exists()
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:] + logs
        out = result.stdout
        assert "served: marriage-record v1 signed by js.nj.civil-affairs" in out
        assert "marital_status           married" in out and "Li Na" not in out
        assert re.search(r"phone\s+\(not on file: ask the person\)", out)
        assert "valid: " in out and "ready" in out
        assert "exchange_calls_total{" in out
        assert (tmp_path / "backups" / "hub.pgdump").is_file()
