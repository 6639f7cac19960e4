from __future__ import annotations

from pathlib import Path

import pytest

from exchange.config import ConfigError, load


def test_precedence_is_defaults_then_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "hub.toml"
    file.write_text(
        '[hub]\nlisten = "0.0.0.0:9000"\ndatabase_url = "sqlite:///f.db"\nhub_id = "file-hub"\n'
        "[hub.supervision]\nbulk_subjects_per_window = 7\n"
    )
    config = load(
        file,
        {"EXCHANGE_DATABASE_URL": "sqlite:///env.db", "EXCHANGE_HUB_ID": "env-hub", "HOME": "/x"},
        {"hub_id": "flag-hub", "listen": None},
    )
    assert config.listen == "0.0.0.0:9000"  # file (flag None ignored)
    assert config.database_url == "sqlite:///env.db"  # environment over file
    assert config.hub_id == "flag-hub"  # flag over environment
    assert config.supervision.bulk_subjects_per_window == 7
    assert config.replay_window_seconds == 300  # default


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    file = tmp_path / "hub.toml"
    file.write_text("listne = 'x'\n")
    with pytest.raises(ConfigError, match="unknown setting 'listne'"):
        load(file)


def test_wrong_type_from_environment_is_named() -> None:
    with pytest.raises(ConfigError, match="environment: replay_window_seconds"):
        load(None, {"EXCHANGE_REPLAY_WINDOW_SECONDS": "soon"})


def test_boolean_flags_from_environment() -> None:
    assert load(None, {"EXCHANGE_INSECURE": "true"}).insecure is True
