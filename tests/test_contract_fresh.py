"""The generated contract code in exchange/v1 is exactly what protos/ compiles to."""

from __future__ import annotations

import importlib.util
import re
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


def _contract(path: Path) -> bytes:
    """A generated file without the grpc plugin's version stamp: pip builds the installed copy
    with the newest grpcio-tools in an isolated environment, while this test generates with the
    one installed beside it, and a patch release between the two changes only that line."""
    return re.sub(rb"(?m)^GRPC_GENERATED_VERSION = .*$", b"", path.read_bytes())


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    fresh = _build_hook().generate(ROOT, tmp_path)
    installed = Path(exchange.v1.__file__).parent
    stale = [
        f.name
        for f in fresh
        if not (installed / f.name).exists() or _contract(installed / f.name) != _contract(f)
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


def test_the_shipped_standard_protos_match_the_ones_the_hub_speaks(tmp_path: Path) -> None:
    """protos/google/rpc and protos/grpc/health (for clients in other languages) define the
    same messages, field numbers and types as the Python packages the hub and adapters use."""
    from google.protobuf import descriptor_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_health.v1 import health_pb2
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "set.pb"
    shipped = [
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/rpc/code.proto",
        "grpc/health/v1/health.proto",
    ]
    args = ["protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, *shipped]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
        messages = {
            m.name: sorted((f.name, f.number, f.type, f.label) for f in m.field)
            for m in file.message_type
        }
        enums = {e.name: sorted((v.name, v.number) for v in e.value) for e in file.enum_type}
        return {"package": file.package, "messages": messages, "enums": enums}

    for module in (status_pb2, error_details_pb2, code_pb2, health_pb2):
        installed = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(installed)
        name = installed.name.rsplit("/", 1)[1]
        mine = next(f for f in files if f.name.endswith("/" + name))
        theirs, ours = shape(installed), shape(mine)
        for name, fields in theirs["messages"].items():  # type: ignore[attr-defined]
            assert ours["messages"][name] == fields, (module.__name__, name)  # type: ignore[index]
        assert theirs["enums"] == ours["enums"], module.__name__
