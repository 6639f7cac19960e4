"""Hatch build hook: compile protos/exchange/v1/*.proto into the package ``exchange.v1``.

The generated modules (``*_pb2.py``, ``*_pb2_grpc.py``) and their type stubs (``*.pyi``, from
mypy-protobuf) are build products: git ignores them and nobody edits them.
``tests/test_contract_fresh.py`` regenerates them into a temporary directory and fails if the
installed copies differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:  # hatchling is only present inside a build
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # pragma: no cover - imported by the freshness test without hatchling
    BuildHookInterface = object  # type: ignore[assignment,misc]


def generate(root: Path, out: Path) -> list[Path]:
    """Compile every .proto under ``root/protos`` into ``out``; return the files written.

    Raises RuntimeError naming protoc's complaint if compilation fails.
    """
    import shutil

    from grpc_tools import protoc

    proto_root = root / "protos"
    # Only the exchange's own contract is generated: protos/google and protos/grpc ship the
    # standard protos for clients in other languages; Python takes them from its packages.
    protos = sorted(
        str(p.relative_to(proto_root)) for p in (proto_root / "exchange").rglob("*.proto")
    )
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-mypy"
    )
    grpc_plugin = shutil.which(
        "protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent)
    ) or shutil.which("protoc-gen-mypy_grpc")
    if plugin is None or grpc_plugin is None:
        raise RuntimeError("mypy-protobuf is not installed: protoc-gen-mypy not found")
    include = Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    package = out / "exchange" / "v1"
    (package / "__init__.py").write_text(
        '"""Generated from protos/exchange/v1 at build time; do not edit."""\n'
    )
    return sorted(package.iterdir())


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type]
    """Runs ``generate`` before every wheel, sdist and editable build."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        generate(root, root)
