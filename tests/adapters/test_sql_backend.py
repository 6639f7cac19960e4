"""The SQL backend against real SQLite and PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from adapters.backends import Holding, open_backend
from adapters.backends.sql import SqlBackend, read_only_engine
from adapters.errors import BackendError, MappingError
from tests.adapters.conftest import MARRIAGE, SUBJECT, civil_database, sql_settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database holding the civil-affairs table: SQLite in tmp_path, or a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield civil_database(f"sqlite:///{tmp_path / 'civil.db'}")
    else:
        yield civil_database(request.getfixturevalue("postgres_url"))


def backend_for(url: str, tmp_path: Path, **kwargs: object) -> SqlBackend:
    backend = open_backend(sql_settings(url, tmp_path / "keys", tmp_path, **kwargs))  # type: ignore[arg-type]
    assert isinstance(backend, SqlBackend)
    backend.validate()
    return backend


def test_fetch_reads_only_the_named_fields(database_url: str, tmp_path: Path) -> None:
    backend = backend_for(database_url, tmp_path)
    holding = backend.fetch(MARRIAGE, SUBJECT, ["marital_status", "registered_on"])
    assert holding == Holding(SUBJECT, {"marital_status": "married", "registered_on": "2018-05-20"})
    backend.close()


def test_fetch_of_unknown_subject_is_none(database_url: str, tmp_path: Path) -> None:
    backend = backend_for(database_url, tmp_path)
    assert backend.fetch(MARRIAGE, "990000000000000000", ["marital_status"]) is None
    backend.close()


def test_null_column_is_an_absent_field(database_url: str, tmp_path: Path) -> None:
    backend = backend_for(database_url, tmp_path)
    holding = backend.fetch(MARRIAGE, "990101199202020029", ["marital_status", "spouse_name"])
    assert holding is not None and holding.fields == {"marital_status": "divorced"}
    backend.close()


def test_parameterized_query_mapping(database_url: str, tmp_path: Path) -> None:
    material = {
        "query": "SELECT status AS st, reg_date AS since FROM marriages "
        "WHERE citizen_id = :subject_id",
        "list_query": "SELECT citizen_id, status AS st, reg_date AS since FROM marriages",
        "subject_column": "citizen_id",
        "fields": {"marital_status": "st", "registered_on": "since"},
    }
    backend = backend_for(database_url, tmp_path, material=material)
    assert backend.fetch(MARRIAGE, SUBJECT, ["marital_status"]) == Holding(
        SUBJECT, {"marital_status": "married"}
    )
    assert [h.subject_id for h in backend.list_holdings(MARRIAGE)] == [
        SUBJECT,
        "990101199202020029",
    ]
    assert backend.store_fields(MARRIAGE) is None  # a query names no place to write
    backend.close()


def test_list_holdings_gives_every_subject_with_every_field(
    database_url: str, tmp_path: Path
) -> None:
    backend = backend_for(database_url, tmp_path)
    holdings = list(backend.list_holdings(MARRIAGE))
    assert holdings == [
        Holding(
            SUBJECT,
            {
                "marital_status": "married",
                "spouse_name": "李四 (demo)",
                "registered_on": "2018-05-20",
            },
        ),
        Holding(
            "990101199202020029", {"marital_status": "divorced", "registered_on": "2015-01-01"}
        ),
    ]
    backend.close()


def test_store_inserts_a_new_subject_and_updates_an_existing_one(
    database_url: str, tmp_path: Path
) -> None:
    backend = backend_for(database_url, tmp_path)
    new = "990101198803030033"
    backend.store(
        MARRIAGE,
        new,
        {"marital_status": "married", "registered_on": "2024-02-14"},
        reference="ref-1",
        version=1,
        submitted_by="demo.township-office",
    )
    assert backend.fetch(MARRIAGE, new, ["marital_status", "registered_on"]) == Holding(
        new, {"marital_status": "married", "registered_on": "2024-02-14"}
    )
    backend.store(
        MARRIAGE,
        SUBJECT,
        {"marital_status": "divorced"},
        reference="ref-2",
        version=2,
        submitted_by="js.nj.civil-affairs",
    )
    assert backend.fetch(MARRIAGE, SUBJECT, ["marital_status"]) == Holding(
        SUBJECT, {"marital_status": "divorced"}
    )
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT citizen_id, hub_ref, collected_by FROM marriages ORDER BY citizen_id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        (new, "ref-1", "demo.township-office"),
        (SUBJECT, "ref-2", "js.nj.civil-affairs"),
        ("990101199202020029", None, None),
    ]
    backend.close()


def test_store_of_an_invalid_date_is_refused(database_url: str, tmp_path: Path) -> None:
    backend = backend_for(database_url, tmp_path)
    with pytest.raises(BackendError, match="reg_date"):
        backend.store(
            MARRIAGE,
            SUBJECT,
            {"registered_on": "yesterday"},
            reference="r",
            version=2,
            submitted_by="x",
        )
    backend.close()


def test_reads_go_through_a_read_only_connection(database_url: str) -> None:
    engine = read_only_engine(database_url)
    with pytest.raises(SQLAlchemyError), engine.begin() as connection:
        connection.execute(text("DELETE FROM marriages"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM marriages")).scalar() == 2
    engine.dispose()


def test_missing_table_is_a_clear_error_at_start(database_url: str, tmp_path: Path) -> None:
    backend = open_backend(sql_settings(database_url, tmp_path / "keys", tmp_path, table="nope"))
    with pytest.raises(MappingError, match=r"\[materials.marriage-record\]: table 'nope' does not"):
        backend.validate()
    backend.close()


def test_missing_column_is_a_clear_error_at_start(database_url: str, tmp_path: Path) -> None:
    material = {
        "table": "marriages",
        "subject_column": "citizen_id",
        "fields": {"marital_status": "status", "spouse_name": "spouse_nm"},
    }
    backend = open_backend(
        sql_settings(database_url, tmp_path / "keys", tmp_path, material=material)
    )
    with pytest.raises(MappingError, match=r"no column 'spouse_nm' \(field 'spouse_name'\)"):
        backend.validate()
    backend.close()


def test_query_missing_a_mapped_column_is_a_clear_error(database_url: str, tmp_path: Path) -> None:
    material = {
        "query": "SELECT status FROM marriages WHERE citizen_id = :subject_id",
        "subject_column": "citizen_id",
        "fields": {"marital_status": "status", "spouse_name": "spouse"},
    }
    backend = open_backend(
        sql_settings(database_url, tmp_path / "keys", tmp_path, material=material)
    )
    with pytest.raises(MappingError, match=r"query returns no column 'spouse'"):
        backend.validate()
    backend.close()


def test_unreachable_database_is_a_backend_error(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    backend = open_backend(sql_settings(url, tmp_path / "keys", tmp_path))
    with pytest.raises(BackendError, match="cannot read the database"):
        backend.validate()
    backend.close()
