"""A material type definition file (TOML or JSON), read for ``exchange catalog publish``.

The shape is the one ``exchange catalog show TYPE --json`` prints, so a published type can be
exported, edited and published again::

    id = "marriage-record"
    name = "Marriage record"
    sharing_class = "CONDITIONAL"        # UNCONDITIONAL | CONDITIONAL | NOT_SHARED
    retention_days = 0                   # optional; 0: kept indefinitely
    owner = "js.nj.civil-affairs"        # optional; default the publishing department
    subject_id_scheme = "CN_RESIDENT_ID" # optional; CN_MAINLAND (default) | CN_RESIDENT_ID |
                                         # CN_USCC | OPAQUE (docs/content-hash.md)

    [[fields]]
    name = "marital_status"
    type = "STRING"                      # STRING | INTEGER | DATE | BOOLEAN
    required = true
    description = "married, unmarried, divorced, widowed"

``version`` may be present (it is what ``show`` prints) and is ignored: the hub assigns it.
The whole may also sit under a ``[material_type]`` table. Only the file's shape is checked
here; identifiers, field names and limits are the hub's to judge (it refuses with the reason).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exchange.v1 import catalog_pb2

TOP_KEYS = frozenset(
    {
        "id",
        "name",
        "owner",
        "sharing_class",
        "retention_days",
        "version",
        "fields",
        "subject_id_scheme",
    }
)
FIELD_KEYS = frozenset({"name", "type", "required", "description"})
SHARING_CLASSES = {v.name: v.number for v in catalog_pb2.SharingClass.DESCRIPTOR.values}
FIELD_TYPES = {v.name: v.number for v in catalog_pb2.FieldType.DESCRIPTOR.values}
ID_SCHEMES = {v.name: v.number for v in catalog_pb2.SubjectIdScheme.DESCRIPTOR.values}


class MaterialFileError(ValueError):
    """The definition file cannot be read or does not have the expected shape; the message
    names the file and the offending key."""


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise MaterialFileError(f"{where} must be a string")
    return value


def _enum(where: str, value: Any, names: Mapping[str, int]) -> int:
    text = _text(where, value).strip().upper().replace("-", "_")
    if text not in names or names[text] == 0:
        choices = ", ".join(n for n, v in names.items() if v)
        raise MaterialFileError(f"{where} must be one of {choices}, not {value!r}")
    return names[text]


def _unknown(where: str, data: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise MaterialFileError(f"{where}: unknown key(s) {', '.join(extra)}")


def _field(where: str, data: Any) -> catalog_pb2.FieldSpec:
    if not isinstance(data, Mapping):
        raise MaterialFileError(f"{where} must be a table")
    _unknown(where, data, FIELD_KEYS)
    required = data.get("required", False)
    if not isinstance(required, bool):
        raise MaterialFileError(f"{where}.required must be true or false")
    return catalog_pb2.FieldSpec(
        name=_text(f"{where}.name", data.get("name")),
        type=_enum(f"{where}.type", data.get("type"), FIELD_TYPES),  # type: ignore[arg-type]
        required=required,
        description=_text(f"{where}.description", data.get("description", "")),
    )


def parse_material_type(
    data: Mapping[str, Any], *, default_owner: str, where: str = "definition"
) -> catalog_pb2.MaterialType:
    """The material type a parsed definition describes. Raises MaterialFileError."""
    body = data.get("material_type", data)
    if not isinstance(body, Mapping):
        raise MaterialFileError(f"{where}: [material_type] must be a table")
    _unknown(where, body, TOP_KEYS)
    for key in ("id", "name", "sharing_class", "fields"):
        if key not in body:
            raise MaterialFileError(f"{where}: {key} is required")
    retention = body.get("retention_days", 0)
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 0:
        raise MaterialFileError(f"{where}: retention_days must be a whole number of days")
    fields = body["fields"]
    if not isinstance(fields, list):
        raise MaterialFileError(f"{where}: fields must be a list of tables")
    return catalog_pb2.MaterialType(
        id=_text(f"{where}: id", body["id"]),
        name=_text(f"{where}: name", body["name"]),
        owner=_text(f"{where}: owner", body.get("owner", default_owner)),
        sharing_class=_enum(  # type: ignore[arg-type]
            f"{where}: sharing_class", body["sharing_class"], SHARING_CLASSES
        ),
        retention_days=retention,
        subject_id_scheme=(
            _enum(  # type: ignore[arg-type]
                f"{where}: subject_id_scheme", body["subject_id_scheme"], ID_SCHEMES
            )
            if "subject_id_scheme" in body
            else catalog_pb2.SUBJECT_ID_SCHEME_UNSPECIFIED
        ),
        fields=[_field(f"{where}: fields[{i}]", f) for i, f in enumerate(fields)],
    )


def read_definition(path: Path) -> Mapping[str, Any]:
    """A ``.toml`` or ``.json`` definition file as a table. Raises MaterialFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MaterialFileError(f"{path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            raise MaterialFileError(f"{path}: a definition file ends in .toml or .json")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MaterialFileError(f"{path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise MaterialFileError(f"{path}: the definition must be a table (an object)")
    return data


def load_material_type(path: Path, *, default_owner: str) -> catalog_pb2.MaterialType:
    """Read a ``.toml`` or ``.json`` definition file. Raises MaterialFileError."""
    return parse_material_type(read_definition(path), default_owner=default_owner, where=str(path))


FORM_KEYS = frozenset({"id", "name", "purpose", "fields", "owner"})
FORM_FIELD_KEYS = frozenset({"name", "label", "material_type", "material_field"})


def parse_form(data: Mapping[str, Any], *, where: str = "definition") -> catalog_pb2.Form:
    """The form a parsed definition describes (``[form]`` with ``[[form.fields]]``, or the same
    keys at the top level). A field without ``material_type`` is one only the person can give.
    The hub sets the owner to the caller. Raises MaterialFileError."""
    body = data.get("form", data)
    if not isinstance(body, Mapping):
        raise MaterialFileError(f"{where}: [form] must be a table")
    _unknown(where, body, FORM_KEYS)
    for key in ("id", "name", "purpose", "fields"):
        if key not in body:
            raise MaterialFileError(f"{where}: {key} is required")
    fields = body["fields"]
    if not isinstance(fields, list) or not fields:
        raise MaterialFileError(f"{where}: fields must be a non-empty list of tables")
    parsed = []
    for i, item in enumerate(fields):
        at = f"{where}: fields[{i}]"
        if not isinstance(item, Mapping):
            raise MaterialFileError(f"{at} must be a table")
        _unknown(at, item, FORM_FIELD_KEYS)
        if "name" not in item:
            raise MaterialFileError(f"{at}: name is required")
        material_type = _text(f"{at}.material_type", item.get("material_type", ""))
        material_field = _text(f"{at}.material_field", item.get("material_field", ""))
        if bool(material_type) != bool(material_field):
            raise MaterialFileError(f"{at}: give both material_type and material_field, or neither")
        parsed.append(
            catalog_pb2.FormField(
                name=_text(f"{at}.name", item["name"]),
                label=_text(f"{at}.label", item.get("label", item["name"])),
                material_type=material_type,
                material_field=material_field,
            )
        )
    return catalog_pb2.Form(
        id=_text(f"{where}: id", body["id"]),
        name=_text(f"{where}: name", body["name"]),
        purpose=_text(f"{where}: purpose", body["purpose"]),
        owner=_text(f"{where}: owner", body.get("owner", "")),
        fields=parsed,
    )


def load_form(path: Path) -> catalog_pb2.Form:
    """Read a ``.toml`` or ``.json`` form definition. Raises MaterialFileError."""
    return parse_form(read_definition(path), where=str(path))
