"""Engines from open_engine keep statement parameters (personal data) out of error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from exchange.store.engines import open_engine


def test_database_errors_do_not_show_the_statements_values(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (id TEXT PRIMARY KEY)"))
        conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": "990101199001010019"})
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO people (id) VALUES (:id)"), {"id": "990101199001010019"})
    assert "990101199001010019" not in str(caught.value)
    assert "hidden due to hide_parameters" in str(caught.value)
    engine.dispose()
