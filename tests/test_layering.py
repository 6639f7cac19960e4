"""Dependencies point one way (docs/architecture.md), checked in a fresh interpreter per module,
since a module already imported by another test would hide a forbidden import: the department
side never loads the hub, and the flows never load the gRPC edge or the composition root."""

from __future__ import annotations

import importlib.util
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


def _modules_of(package: str) -> list[str]:
    """The package's modules (not the package itself), from its folder."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, package
    folder = Path(spec.origin).parent
    return sorted(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", _modules_of("exchange.flows"))
def test_a_flow_loads_neither_the_grpc_edge_nor_the_composition_root(module: str) -> None:
    loaded = _loaded_by(module)
    upward = [
        name
        for name in loaded
        if name in ("exchange.hub", "exchange.api", "exchange.cli")
        or name.startswith(("exchange.api.", "exchange.cli."))
    ]
    assert upward == [], f"{module} loads {upward}, above it"


def _ledger_modules() -> list[str]:
    return ["exchange.ledger", *_modules_of("exchange.ledger")]


def test_the_ledger_package_has_modules_to_probe() -> None:
    # The probe below must see the writer and the export, or it would pass on an empty list.
    assert {"exchange.ledger.writer", "exchange.ledger.export"} <= set(_ledger_modules())


@pytest.mark.parametrize("module", _ledger_modules())
def test_the_ledger_knows_nothing_of_departments(module: str) -> None:
    loaded = _loaded_by(module)
    beside = [
        name
        for name in loaded
        if name == "exchange.v1.registry_pb2"
        or any(
            name == p or name.startswith(p + ".")
            for p in ("exchange.audit", "exchange.flows", "exchange.api")
        )
    ]
    assert beside == [], f"{module} loads {beside}: the ledger is the log alone"
