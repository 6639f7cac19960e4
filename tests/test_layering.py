"""Dependencies point one way (docs/architecture.md, "Direction of dependencies").

Two checks. Every import written in the hub's packages goes down the layers, read from the
source (an import made only for type checking does not count: it loads nothing). And what a
module really loads, in a fresh interpreter per module, since a module already imported by
another test would hide a forbidden import: the department side never loads the hub, and the
flows never load the gRPC edge or the composition root.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import exchange

# The hub's parts, top layer first. A module may import its own part, any part of a lower
# layer and another part of its own layer; never a part above it.
LAYERS: list[tuple[str, ...]] = [
    ("exchange.cli",),
    ("exchange.api",),
    ("exchange.hub",),
    ("exchange.flows",),
    (
        "exchange.policy",
        "exchange.catalog",
        "exchange.routing",
        "exchange.supervision",
        "exchange.witness",
        "exchange.ownership",
        "exchange.audit",
    ),
    ("exchange.ledger",),
    ("exchange.store",),
    ("exchange.crypto", "exchange.rpc"),
    (
        "exchange.errors",
        "exchange.clock",
        "exchange.config",
        "exchange.membership",
        "exchange.logs",
    ),
]
# Beside the layers: hooked in where events happen, from any layer (docs/operations.md). It
# reads the store and supervision's alerts, and nothing of what serves a call.
BESIDE = "exchange.observability"
ABOVE_OBSERVABILITY = ("exchange.cli", "exchange.api", "exchange.hub", "exchange.flows")
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}

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


def _part(name: str) -> str:
    """``exchange.store.requests`` -> ``exchange.store``; ``adapters.client`` -> ``adapters``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "exchange" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` outside ``if TYPE_CHECKING:`` blocks,
    including those made inside functions (they load when the function runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "exchange":  # from exchange import errors, ownership
                found += [(node.lineno, f"exchange.{alias.name}") for alias in node.names]
    return found


def _upward(path: Path, importer: str, imported: str) -> bool:
    if imported in ("exchange", "exchange.v1", importer):
        return False
    if imported == "adapters":
        return importer != "exchange.cli"  # only the command line drives the department side
    if importer == BESIDE:
        return imported in ABOVE_OBSERVABILITY
    if imported == BESIDE:
        return False
    assert importer in RANK and imported in RANK, (
        f"{path} ({importer} imports {imported}): give every part a place in LAYERS"
    )
    return RANK[imported] < RANK[importer]


def test_every_import_of_the_hub_goes_down_the_layers() -> None:
    root = Path(exchange.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        if {"v1", "migrations"} & set(relative.parts) or relative == Path("exchange/__init__.py"):
            continue
        importer = _part(".".join(relative.with_suffix("").parts))
        for line, module in _imports(path):
            imported = _part(module)
            if imported.startswith(("exchange", "adapters")) and _upward(path, importer, imported):
                upward.append(f"{relative}:{line} imports {module}")
    assert upward == [], "imports against the layers: " + "; ".join(upward)


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
