"""The department TOML: defaults, relative paths, and refusals that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.errors import SettingsError
from adapters.settings import BackendKind, load

GOOD = """
[department]
id = "js.nj.civil-affairs"
listen = "127.0.0.1:7601"
keys_dir = "keys"

[backend]
kind = "sql"
url = "sqlite:///civil.db"

[materials.marriage-record]
table = "marriages"
subject_column = "citizen_id"
fields = { marital_status = "status" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dept.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    settings = load(write(tmp_path, GOOD))
    assert settings.department_id == "js.nj.civil-affairs"
    assert settings.backend.kind is BackendKind.SQL
    assert settings.backend.url == f"sqlite:///{tmp_path.resolve() / 'civil.db'}"
    assert settings.keys_dir == tmp_path.resolve() / "keys"
    assert settings.hub_public_key == tmp_path.resolve() / "keys" / "hub" / "signing.pub"
    mapping = settings.materials["marriage-record"]
    assert mapping.fields == {"marital_status": "status"}
    assert mapping.store is not None and mapping.store.table == "marriages"  # stored where read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("listen =", "lisen ="), "unknown setting(s) 'lisen'"),
        (('table = "marriages"', 'table = "m"\nquery = "SELECT 1"'), "exactly one source"),
        (('table = "marriages"', 'query = "SELECT * FROM m"'), ":subject_id"),
        (('kind = "sql"', 'kind = "excel"'), 'kind must be "sql" or "files"'),
        (('id = "js.nj.civil-affairs"', 'id = "Civil Affairs"'), "invalid department id"),
        (('fields = { marital_status = "status" }', ""), "fields (material field -> column)"),
    ],
)
def test_invalid_settings_are_refused_naming_the_setting(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(write(tmp_path, GOOD.replace(*change)))
    assert message in str(caught.value)


def test_missing_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "name", ["civil-affairs.toml", "market-regulation.toml", "township-files.toml"]
)
def test_shipped_examples_load(name: str) -> None:
    path = Path(__file__).parents[2] / "adapters" / "examples" / name
    settings = load(path)
    assert settings.materials
    for mapping in settings.materials.values():
        assert mapping.fields
