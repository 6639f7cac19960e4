"""``exchange adapter check``: the mapping is checked against the real database before serving."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from adapters import demo_data
from exchange.cli.main import main


def test_adapter_check_accepts_a_good_mapping(tmp_path: Path) -> None:
    departments = demo_data.write_departments(tmp_path, tmp_path / "keys", {})
    for department in departments:
        result = CliRunner().invoke(main, ["adapter", "check", "--config", str(department.config)])
        assert result.exit_code == 0, result.output
        assert "mapping OK" in result.output


def test_adapter_check_names_the_missing_column(tmp_path: Path) -> None:
    departments = demo_data.write_departments(tmp_path, tmp_path / "keys", {})
    civil = next(d for d in departments if d.department_id == demo_data.CIVIL_AFFAIRS)
    civil.config.write_text(
        civil.config.read_text(encoding="utf-8").replace('"spouse"', '"spouse_nm"'),
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["adapter", "check", "--config", str(civil.config)])
    assert result.exit_code == 1
    assert "table 'marriage_registrations' has no column 'spouse_nm'" in result.output


def test_adapter_serve_refuses_an_unknown_setting(tmp_path: Path) -> None:
    config = tmp_path / "dept.toml"
    config.write_text('[department]\nid = "x"\nlisten_on = "1"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["adapter", "serve", "--config", str(config)])
    assert result.exit_code == 1
    assert "unknown setting(s) 'listen_on'" in result.output
