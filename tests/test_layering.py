"""Dependencies point one way (docs/architecture.md), checked in a fresh interpreter per module,
since a module already imported by another test would hide a forbidden import: the department
side never loads the hub, and the flows never load the gRPC edge or the composition root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEPARTMENT_SIDE = [
    "adapters.client",
    "adapters.provider",
    "adapters.auditor",
    "adapters.holdings",
    "adapters.web",
    "adapters.identity",
]
FORBIDDEN_PACKAGES = ("exchange.api", "exchange.flows", "exchange.store", "exchange.supervision")
FORBIDDEN_MODULES = ("exchange.hub", "exchange.ledger.writer", "exchange.cli")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def _loaded_by(module: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize("module", DEPARTMENT_SIDE)
def test_the_department_side_loads_nothing_of_the_hub(module: str) -> None:
    loaded = _loaded_by(module)
    forbidden = [
        name
        for name in loaded
        if name in FORBIDDEN_MODULES
        or any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PACKAGES)
    ]
    assert forbidden == [], f"{module} loads the hub's {forbidden}"


def test_the_client_sdk_does_not_load_sqlalchemy() -> None:
    assert not [name for name in _loaded_by("adapters.client") if name.startswith("sqlalchemy")]


def _flow_modules() -> list[str]:
    import exchange.flows

    folder = Path(exchange.flows.__file__).parent
    return sorted(f"exchange.flows.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", _flow_modules())
def test_a_flow_loads_neither_the_grpc_edge_nor_the_composition_root(module: str) -> None:
    loaded = _loaded_by(module)
    upward = [
        name
        for name in loaded
        if name in ("exchange.hub", "exchange.api", "exchange.cli")
        or name.startswith(("exchange.api.", "exchange.cli."))
    ]
    assert upward == [], f"{module} loads {upward}, above it"
