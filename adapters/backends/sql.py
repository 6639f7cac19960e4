"""The SQL backend: any database SQLAlchemy can reach, mapped by table or parameterized query.

Reads go through a separate engine whose connections are read-only at the database (SQLite
``PRAGMA query_only``, PostgreSQL ``default_transaction_read_only``, MySQL ``SESSION TRANSACTION
READ ONLY``), so a mapping's query cannot change the department's data even if it tried. Store
writes through a second engine, only into the tables the mappings name as store targets.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    exists,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchTableError,
    SQLAlchemyError,
)

from adapters.backends import Holding, MappedBackend, canonical_value
from adapters.errors import BackendError, BackendRefused, MappingError
from adapters.settings import MaterialMapping, StoreTarget

log = structlog.get_logger("adapters.sql")

_PROBE = "SELECT * FROM ({query}) AS mapping_probe WHERE 1 = 0"


def read_only_engine(url: str) -> Engine:
    """An engine whose every connection refuses writes, where the database can enforce it.

    Raises BackendError for a URL SQLAlchemy cannot use, or a SQLite file that does not exist
    (SQLite would create it empty: an adapter only ever reads and writes a database it has).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BackendError(f"invalid database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    database = parsed.database or ""
    if (
        backend == "sqlite"
        and database not in ("", ":memory:")
        and "uri" not in parsed.query
        and not Path(database).is_file()
    ):
        raise BackendError(f"no SQLite database at {database}; check the backend's url")
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["options"] = "-c default_transaction_read_only=on"
    if backend == "sqlite":
        connect_args["check_same_thread"] = False
    try:
        # Parameters (subject ids, field values) are kept out of error messages, which are logged.
        engine = create_engine(
            parsed, connect_args=connect_args, pool_pre_ping=True, hide_parameters=True
        )
    except (ArgumentError, ImportError) as exc:
        raise BackendError(f"cannot open database URL for {backend}: {exc}") from exc
    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()

    elif backend in ("mysql", "mariadb"):

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
            cursor.close()

    elif backend != "postgresql":
        log.warning("read_only_not_enforced", backend=backend)
    return engine


def _python_value(column: Column[Any], value: str) -> object:
    """Convert a canonical string back to the column's Python type for writing."""
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return value
    try:
        if kind is bool:
            return value.lower() in ("true", "1", "yes")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is decimal.Decimal:
            return decimal.Decimal(value)
        if kind is dt.datetime:
            return dt.datetime.fromisoformat(value)
        if kind is dt.date:
            return dt.date.fromisoformat(value)
        if kind is dt.time:
            return dt.time.fromisoformat(value)
    except (ValueError, decimal.InvalidOperation) as exc:
        raise BackendError(
            f"value for column {column.name} is not a valid {kind.__name__}"
        ) from exc
    return value


class SqlBackend(MappedBackend):
    """Material in a SQL database. Construct, ``validate()``, then serve."""

    def __init__(self, url: str, materials: Mapping[str, MaterialMapping]) -> None:
        super().__init__(materials)
        self.url = url
        self.reader = read_only_engine(url)
        self._writer: Engine | None = None
        self._tables: dict[str, Table] = {}  # material type -> reflected read table
        self._stores: dict[str, Table] = {}  # material type -> reflected store table

    # ------------------------------------------------------------------ start-up checks

    def validate(self) -> None:
        """Reflect every mapped table and probe every query; see ``Backend.validate``."""
        try:
            with self.reader.connect() as connection:
                for mapping in self.materials.values():
                    if mapping.table is not None:
                        self._tables[mapping.material_type] = self._reflect(
                            connection,
                            mapping.material_type,
                            mapping.table,
                            mapping.schema,
                            self._read_columns(mapping),
                        )
                    else:
                        self._probe(connection, mapping)
                    if mapping.store is not None:
                        self._stores[mapping.material_type] = self._reflect(
                            connection,
                            mapping.material_type,
                            str(mapping.store.table),
                            mapping.store.schema,
                            self._store_columns(mapping.store),
                            "store",
                        )
        except SQLAlchemyError as exc:
            raise BackendError(
                f"cannot read the database: {type(exc).__name__}: {exc.args[0] if exc.args else ''}"
            ) from exc

    @staticmethod
    def _read_columns(mapping: MaterialMapping) -> dict[str, str]:
        columns = {"subject_column": mapping.subject_column}
        columns.update({f"field {name!r}": column for name, column in mapping.fields.items()})
        if mapping.reference_column:
            columns["reference_column"] = mapping.reference_column
        if mapping.version_column:
            columns["version_column"] = mapping.version_column
        return columns

    @staticmethod
    def _store_columns(store: StoreTarget) -> dict[str, str]:
        columns = {"subject_column": store.subject_column}
        columns.update({f"field {name!r}": column for name, column in store.fields.items()})
        for role in ("reference_column", "version_column", "submitted_by_column"):
            value = getattr(store, role)
            if value:
                columns[role] = value
        return columns

    @staticmethod
    def _reflect(
        connection: Any,
        material_type: str,
        table: str,
        schema: str | None,
        columns: Mapping[str, str],
        role: str = "",
    ) -> Table:
        where = f"[materials.{material_type}{'.' + role if role else ''}]"
        name = f"{schema}.{table}" if schema else table
        try:
            reflected = Table(table, MetaData(), schema=schema, autoload_with=connection)
        except NoSuchTableError as exc:
            available = inspect(connection).get_table_names(schema=schema)
            raise MappingError(
                f"{where}: table {name!r} does not exist; the database has "
                f"{', '.join(sorted(available)) or 'no tables'}"
            ) from exc
        missing = {
            what: column for what, column in columns.items() if column not in reflected.columns
        }
        if missing:
            listed = ", ".join(f"{column!r} ({what})" for what, column in missing.items())
            raise MappingError(
                f"{where}: table {name!r} has no column {listed}; it has "
                f"{', '.join(reflected.columns.keys())}"
            )
        return reflected

    def _probe(self, connection: Any, mapping: MaterialMapping) -> None:
        where = f"[materials.{mapping.material_type}]"
        for label, query, needed in (
            (
                "query",
                mapping.query,
                {k: v for k, v in self._read_columns(mapping).items() if k != "subject_column"},
            ),
            ("list_query", mapping.list_query, self._read_columns(mapping)),
        ):
            if query is None:
                continue
            try:
                params = {"subject_id": ""} if ":subject_id" in query else {}
                result = connection.execute(text(_PROBE.format(query=query)), params)
                labels = set(result.keys())
                result.close()
            except SQLAlchemyError as exc:
                cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                raise MappingError(f"{where}: {label} does not run: {cause}") from exc
            missing = {what: column for what, column in needed.items() if column not in labels}
            if missing:
                listed = ", ".join(f"{column!r} ({what})" for what, column in missing.items())
                raise MappingError(
                    f"{where}: {label} returns no column {listed}; it returns "
                    f"{', '.join(sorted(labels))}"
                )

    # ------------------------------------------------------------------ reads

    def fetch(self, material_type: str, subject_id: str, fields: Sequence[str]) -> Holding | None:
        mapping = self.materials[material_type]
        wanted = {name: mapping.fields[name] for name in fields}  # KeyError: unmapped field
        try:
            with self.reader.connect() as connection:
                if mapping.query is not None:
                    row = (
                        connection.execute(text(mapping.query), {"subject_id": subject_id})
                        .mappings()
                        .first()
                    )
                else:
                    table = self._tables[material_type]
                    columns = [table.c[column] for column in dict.fromkeys(wanted.values())]
                    for extra in (mapping.reference_column, mapping.version_column):
                        if extra:
                            columns.append(table.c[extra])
                    statement = select(*dict.fromkeys(columns)).where(
                        table.c[mapping.subject_column] == subject_id
                    )
                    if mapping.version_column:
                        statement = statement.order_by(table.c[mapping.version_column].desc())
                    row = connection.execute(statement.limit(1)).mappings().first()
        except SQLAlchemyError as exc:
            raise BackendError(f"reading {mapping.source} failed: {type(exc).__name__}") from exc
        if row is None:
            return None
        return self._holding(mapping, subject_id, row, wanted)

    @staticmethod
    def _holding(
        mapping: MaterialMapping,
        subject_id: str,
        row: Mapping[Any, Any],
        wanted: Mapping[str, str],
    ) -> Holding:
        values = {name: canonical_value(row[column]) for name, column in wanted.items()}
        reference = (
            canonical_value(row[mapping.reference_column]) if mapping.reference_column else None
        )
        version = row[mapping.version_column] if mapping.version_column else None
        return Holding(
            subject_id=subject_id,
            fields={name: value for name, value in values.items() if value is not None},
            reference=reference,
            version=int(version) if version is not None else None,
        )

    def list_holdings(self, material_type: str) -> Iterator[Holding]:
        mapping = self.materials[material_type]
        if mapping.query is not None:
            if mapping.list_query is None:
                raise BackendError(
                    f"[materials.{material_type}] is mapped by query and has no list_query, "
                    "so its holdings cannot be listed"
                )
            # Ordered by subject, so that the rows of one subject arrive together.
            quoted = self.reader.dialect.identifier_preparer.quote(mapping.subject_column)
            statement: Any = text(
                f"SELECT * FROM ({mapping.list_query}) AS holdings ORDER BY {quoted}"
            )
        else:
            table = self._tables[material_type]
            statement = select(table)
            if mapping.version_column:
                # Ascending, so the last row seen for a subject is its current version.
                statement = statement.order_by(
                    table.c[mapping.subject_column], table.c[mapping.version_column]
                )
            else:
                statement = statement.order_by(table.c[mapping.subject_column])
        try:
            with self.reader.connect() as connection:
                result = connection.execution_options(yield_per=500).execute(statement)
                current: Holding | None = None
                for row in result.mappings():
                    subject = canonical_value(row[mapping.subject_column])
                    if subject is None:
                        continue
                    holding = self._holding(mapping, subject, row, mapping.fields)
                    if current is not None and current.subject_id != subject:
                        yield current
                    current = holding
                if current is not None:
                    yield current
        except SQLAlchemyError as exc:
            raise BackendError(f"listing {mapping.source} failed: {type(exc).__name__}") from exc

    # ------------------------------------------------------------------ writes

    @property
    def writer(self) -> Engine:
        """The engine Store writes through (created on first use)."""
        if self._writer is None:
            connect_args = {"check_same_thread": False} if self.url.startswith("sqlite") else {}
            self._writer = create_engine(
                self.url, connect_args=connect_args, pool_pre_ping=True, hide_parameters=True
            )
        return self._writer

    def store(
        self,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        *,
        reference: str,
        version: int,
        submitted_by: str,
        rehearse: bool = False,
    ) -> None:
        mapping = self.materials[material_type]
        target = mapping.store
        if target is None or material_type not in self._stores:
            raise BackendError(f"[materials.{material_type}] has no store target")
        table = self._stores[material_type]
        values: dict[str, object] = {}
        for name, value in fields.items():
            column = table.c[target.fields[name]]  # KeyError: unmapped field
            values[column.name] = _python_value(column, value)
        for column_name, value in (
            (target.reference_column, reference),
            (target.version_column, str(version)),
            (target.submitted_by_column, submitted_by),
        ):
            if column_name:
                values[column_name] = _python_value(table.c[column_name], value)
        subject_column = table.c[target.subject_column]
        subject_value = _python_value(subject_column, subject_id)
        try:
            with self.writer.connect() as connection, connection.begin() as transaction:
                present = connection.execute(
                    select(exists().where(subject_column == subject_value))
                ).scalar()
                if present and not target.version_column:
                    # One row per subject: the new version replaces the old in place.
                    connection.execute(
                        table.update().where(subject_column == subject_value).values(**values)
                    )
                else:
                    # New subject, or a versioned table that keeps every version as a row.
                    connection.execute(
                        table.insert().values(**{target.subject_column: subject_value, **values})
                    )
                if rehearse:  # the source has decided; nothing is kept
                    transaction.rollback()
        except (DataError, IntegrityError) as exc:
            raise BackendRefused(
                f"table {table.fullname} refused the values: {_database_refusal(exc)}",
                invalid=isinstance(exc, DataError),
            ) from exc
        except SQLAlchemyError as exc:
            raise BackendError(
                f"writing to table {table.fullname} failed: {type(exc).__name__}"
            ) from exc

    def close(self) -> None:
        self.reader.dispose()
        if self._writer is not None:
            self._writer.dispose()


def _database_refusal(error: DBAPIError) -> str:
    """A database's refusal named without its message, which can quote the values (MySQL's
    "Duplicate entry '…'", PostgreSQL's DETAIL line): driver error class, SQLSTATE or SQLite
    error name, and the constraint when the driver reports it."""
    driver = error.orig
    state = getattr(driver, "sqlstate", None) or getattr(driver, "sqlite_errorname", None)
    if state is None and driver is not None and getattr(driver, "args", None):
        first = driver.args[0]
        state = first if isinstance(first, int) else None  # MySQL's error number
    constraint = getattr(getattr(driver, "diag", None), "constraint_name", None)
    text = type(driver).__name__ if driver is not None else type(error).__name__
    if state:
        text += f" ({state})"
    if constraint:
        text += f", constraint {constraint}"
    return text
