"""The files backend: CSV and JSON Lines, reads of the current row, Store appends."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from adapters.backends import Holding, open_backend
from adapters.errors import MappingError
from adapters.settings import parse

SUBJECT = "990101199001010019"
OTHER = "990101199202020029"
ROWS = [
    {"id_no": SUBJECT, "name": "张三 (demo)", "birth": "1990-01-01", "addr": "示例路 1 号"},
    {"id_no": OTHER, "name": "李四 (demo)", "birth": "1992-02-02", "addr": ""},
]


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(
            "".join(json.dumps({k: v or None for k, v in r.items()}) + "\n" for r in rows),
            encoding="utf-8",
        )
    return path


def settings_for(tmp_path: Path, file: str, **material: object) -> object:
    return parse(
        {
            "department": {"id": "demo.public-security", "keys_dir": "keys"},
            "backend": {"kind": "files"},
            "materials": {
                "household-registration": {
                    "file": file,
                    "subject_column": "id_no",
                    "fields": {"name": "name", "birth_date": "birth", "address": "addr"},
                    **material,
                }
            },
        },
        tmp_path,
    )


@pytest.fixture(params=["people.csv", "people.jsonl"])
def data_file(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    write(tmp_path / request.param, ROWS)
    return str(request.param)


def test_fetch_returns_only_named_fields(tmp_path: Path, data_file: str) -> None:
    backend = open_backend(settings_for(tmp_path, data_file))  # type: ignore[arg-type]
    backend.validate()
    assert backend.fetch("household-registration", SUBJECT, ["name"]) == Holding(
        SUBJECT, {"name": "张三 (demo)"}
    )
    assert backend.fetch("household-registration", "990000000000000000", ["name"]) is None


def test_empty_value_is_an_absent_field(tmp_path: Path, data_file: str) -> None:
    backend = open_backend(settings_for(tmp_path, data_file))  # type: ignore[arg-type]
    backend.validate()
    holding = backend.fetch("household-registration", OTHER, ["name", "address"])
    assert holding is not None and holding.fields == {"name": "李四 (demo)"}


def test_store_appends_and_the_last_row_is_current(tmp_path: Path, data_file: str) -> None:
    backend = open_backend(settings_for(tmp_path, data_file))  # type: ignore[arg-type]
    backend.validate()
    before = (tmp_path / data_file).read_text(encoding="utf-8")
    backend.store(
        "household-registration",
        SUBJECT,
        {"name": "张三 (demo)", "birth_date": "1990-01-01", "address": "新地址 2 号"},
        reference="r1",
        version=2,
        submitted_by="demo.public-security",
    )
    after = (tmp_path / data_file).read_text(encoding="utf-8")
    assert after.startswith(before) and after.count(SUBJECT) == 2  # appended, not rewritten
    assert backend.fetch("household-registration", SUBJECT, ["address"]) == Holding(
        SUBJECT, {"address": "新地址 2 号"}
    )
    holdings = {h.subject_id: h for h in backend.list_holdings("household-registration")}
    assert set(holdings) == {SUBJECT, OTHER}
    assert holdings[SUBJECT].fields["address"] == "新地址 2 号"


def test_store_into_a_new_file_with_version_column(tmp_path: Path) -> None:
    write(tmp_path / "people.csv", ROWS)
    settings = settings_for(
        tmp_path,
        "people.csv",
        store={"file": "collected.jsonl", "version_column": "v", "reference_column": "ref"},
    )
    backend = open_backend(settings)  # type: ignore[arg-type]
    backend.validate()
    backend.store(
        "household-registration",
        "990101198803030033",
        {"name": "王五 (demo)"},
        reference="ref-9",
        version=1,
        submitted_by="demo.township-office",
    )
    line = json.loads((tmp_path / "collected.jsonl").read_text(encoding="utf-8"))
    assert line == {"id_no": "990101198803030033", "name": "王五 (demo)", "ref": "ref-9", "v": "1"}


def test_missing_csv_column_is_a_clear_error_at_start(tmp_path: Path) -> None:
    write(tmp_path / "people.csv", [{"id_no": SUBJECT, "name": "x", "birth": "y"}])
    backend = open_backend(settings_for(tmp_path, "people.csv"))  # type: ignore[arg-type]
    with pytest.raises(MappingError, match=r"people.csv has no column 'addr' \(field 'address'\)"):
        backend.validate()


def test_missing_file_is_a_clear_error_at_start(tmp_path: Path) -> None:
    backend = open_backend(settings_for(tmp_path, "absent.jsonl"))  # type: ignore[arg-type]
    with pytest.raises(MappingError, match=r"absent\.jsonl does not exist"):
        backend.validate()
