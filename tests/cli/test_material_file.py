"""Material type definition files (TOML / JSON) read by ``exchange catalog publish``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exchange.cli.material_file import MaterialFileError, load_material_type
from exchange.v1 import catalog_pb2

OWNER = "js.nj.civil-affairs"

TOML = """
[material_type]
id = "marriage-record"
name = "Marriage record"
sharing_class = "conditional"

[[material_type.fields]]
name = "marital_status"
type = "STRING"
required = true
description = "married, unmarried"

[[material_type.fields]]
name = "registered_on"
type = "date"
"""


def test_toml_definition_under_a_material_type_table_becomes_the_contract_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "marriage.toml"
    path.write_text(TOML, encoding="utf-8")
    value = load_material_type(path, default_owner=OWNER)
    assert (value.id, value.owner, value.sharing_class) == (
        "marriage-record",
        OWNER,
        catalog_pb2.CONDITIONAL,
    )
    assert [(f.name, f.type, f.required) for f in value.fields] == [
        ("marital_status", catalog_pb2.STRING, True),
        ("registered_on", catalog_pb2.DATE, False),
    ]
    assert value.fields[0].description == "married, unmarried"


def test_json_definition_keeps_its_owner_and_ignores_the_version(tmp_path: Path) -> None:
    path = tmp_path / "licence.json"
    path.write_text(
        json.dumps(
            {
                "id": "business-licence",
                "owner": "js.nj.market-regulation",
                "name": "Business licence",
                "sharing_class": "UNCONDITIONAL",
                "retention_days": 30,
                "version": 7,
                "fields": [{"name": "licence_no", "type": "STRING", "required": True}],
            }
        ),
        encoding="utf-8",
    )
    value = load_material_type(path, default_owner=OWNER)
    assert value.owner == "js.nj.market-regulation"
    assert value.retention_days == 30 and value.version == 0


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "id: x", "ends in .toml or .json"),
        ("a.toml", "id = ", "a.toml:"),
        ("a.json", "[]", "must be a table"),
        ("a.toml", 'id = "x"\nname = "X"\nsharing_class = "CONDITIONAL"', "fields is required"),
        (
            "a.toml",
            'id = "x"\nname = "X"\nsharing_class = "CONDITIONAL"\ncolour = "red"\nfields = []',
            "unknown key(s) colour",
        ),
        (
            "a.toml",
            'id = "x"\nname = "X"\nsharing_class = "CONDITIONAL"\n'
            '[[fields]]\nname = "a"\ntype = "FLOAT"',
            "fields[0].type must be one of STRING, INTEGER, DATE, BOOLEAN",
        ),
        (
            "a.toml",
            'id = "x"\nname = "X"\nsharing_class = "CONDITIONAL"\n'
            '[[fields]]\nname = "a"\ntype = "STRING"\nrequired = "yes"',
            "fields[0].required must be true or false",
        ),
        (
            "a.toml",
            'id = "x"\nname = "X"\nsharing_class = "CONDITIONAL"\nretention_days = -1\nfields = []',
            "retention_days must be a whole number of days",
        ),
    ],
)
def test_malformed_definitions_are_refused_naming_the_problem(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MaterialFileError, match=re.escape(message)):
        load_material_type(path, default_owner=OWNER)
