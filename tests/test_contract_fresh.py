"""The generated contract code in exchange/v1 is exactly what protos/ compiles to."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import exchange.v1
from exchange.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[1]


def _build_hook():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_hook", ROOT / "protos" / "build_hook.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    fresh = _build_hook().generate(ROOT, tmp_path)
    installed = Path(exchange.v1.__file__).parent
    stale = [
        f.name
        for f in fresh
        if not (installed / f.name).exists() or (installed / f.name).read_bytes() != f.read_bytes()
    ]
    assert not stale, f"exchange/v1 is stale for {stale}: reinstall (pip install -e .)"


def test_every_message_field_service_and_method_is_commented() -> None:
    undocumented: list[str] = []
    for proto in sorted((ROOT / "protos" / "exchange" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            declares = stripped.startswith(("message ", "service ", "rpc ", "enum ")) or (
                stripped.endswith(";")
                and "=" in stripped
                and not stripped.startswith(("option", "syntax", "package", "import", "//"))
            )
            if declares:
                previous = lines[number - 1].strip() if number else ""
                if not previous.startswith("//"):
                    undocumented.append(f"{proto.name}:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


def test_refusal_reasons_are_an_enum_of_the_contract() -> None:
    names = set(common_pb2.Reason.keys())
    assert {"BAD_SIGNATURE", "STALE_REQUEST", "REQUEST_ID_REUSED", "NO_GRANT"} <= names
