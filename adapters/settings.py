"""The department's adapter configuration: one TOML file, loaded once, passed down.

A worked example with every setting is in docs/adapters.md and adapters/examples/. In short::

    [department]
    id = "js.nj.civil-affairs"          # the department id (its certificate's CN)
    listen = "127.0.0.1:7601"           # where the adapter serves the hub
    keys_dir = "keys"                   # keystore root (keys/departments/<id>/…, keys/ca/ca.pem)
    hub_id = "hub"                      # the only peer allowed to call (its client cert CN)
    hub_public_key = "keys/hub/signing.pub"   # hex Ed25519 key that signs every request
    hub_target = "127.0.0.1:7443"       # the hub, for `exchange adapter publish`
    pending_stores = "js.nj.civil-affairs.pending-stores.db"   # the default: <id>.pending-stores.db

    [backend]
    kind = "sql"                        # "sql" (any SQLAlchemy URL) or "files" (CSV, JSON Lines)
    url = "sqlite:///civil.db"

    [materials.marriage-record]
    table = "marriages"                 # or query = "SELECT … WHERE id_no = :subject_id"
    subject_column = "id_no"
    fields = { status = "marital_status", spouse_name = "spouse" }

Relative paths (keys, the hub key, files, SQLite database files) are resolved against the TOML
file's directory, so a department directory can be moved as a whole. Unknown settings are
refused with a message naming them: a typo must not silently disable a mapping.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import SettingsError
from exchange.crypto.keystore import Keystore, check_department_id

DEFAULT_LISTEN = "127.0.0.1:7601"
FILE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class BackendKind(enum.Enum):
    """Where a department's material lives."""

    SQL = "sql"
    FILES = "files"


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """Where Provider.Store writes a material: a table (SQL) or a file (files), and columns.

    ``fields`` maps material field names to column names. The optional columns receive the
    hub-assigned reference, the version and the collecting department.
    """

    subject_column: str
    fields: Mapping[str, str]
    table: str | None = None
    schema: str | None = None
    file: Path | None = None
    reference_column: str | None = None
    version_column: str | None = None
    submitted_by_column: str | None = None


@dataclass(frozen=True, slots=True)
class MaterialMapping:
    """How one material type is read from the department's own data.

    Exactly one source: ``table`` (SQL), ``query`` (SQL: a parameterized SELECT with a
    ``:subject_id`` parameter) or ``file`` (files). ``fields`` maps material field names to
    column names (for a query: result column labels). ``list_query`` lists every holding of a
    query-mapped type for publishing; a table or file lists itself.
    """

    material_type: str
    subject_column: str
    fields: Mapping[str, str]
    table: str | None = None
    schema: str | None = None
    query: str | None = None
    list_query: str | None = None
    file: Path | None = None
    reference_column: str | None = None
    version_column: str | None = None
    store: StoreTarget | None = None

    @property
    def source(self) -> str:
        """A short description of the source for messages (never data)."""
        if self.table:
            return f"table {self.qualified_table}"
        if self.file:
            return f"file {self.file}"
        return "query"

    @property
    def qualified_table(self) -> str:
        """``schema.table`` or ``table``."""
        return f"{self.schema}.{self.table}" if self.schema else str(self.table)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """The backend kind and, for SQL, its SQLAlchemy URL."""

    kind: BackendKind
    url: str = ""


@dataclass(frozen=True, slots=True)
class DepartmentSettings:
    """Everything a department's adapter (and its publish command) needs to know at start."""

    department_id: str
    backend: BackendSettings
    materials: Mapping[str, MaterialMapping]
    listen: str = DEFAULT_LISTEN
    keys_dir: Path = Path("keys")
    hub_id: str = "hub"
    hub_public_key: Path = Path("keys/hub/signing.pub")
    hub_target: str = "127.0.0.1:7443"
    hub_server_name: str = "localhost"
    replay_window_seconds: int = 300
    shutdown_grace_seconds: float = 5.0
    # The adapter's pending Stores file (adapters.pending); None keeps them in memory only.
    pending_stores: Path | None = None

    @property
    def keystore(self) -> Keystore:
        """The department's keystore."""
        return Keystore(self.keys_dir)


_DEPARTMENT_KEYS = {
    "id",
    "listen",
    "keys_dir",
    "hub_id",
    "hub_public_key",
    "hub_target",
    "hub_server_name",
    "replay_window_seconds",
    "shutdown_grace_seconds",
    "pending_stores",
}
_MATERIAL_KEYS = {
    "table",
    "schema",
    "query",
    "list_query",
    "file",
    "subject_column",
    "fields",
    "reference_column",
    "version_column",
    "store",
}
_STORE_KEYS = {
    "table",
    "schema",
    "file",
    "subject_column",
    "fields",
    "reference_column",
    "version_column",
    "submitted_by_column",
}


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where} must be a table")
    return value


def _only(values: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(
            f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def _str(values: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = values.get(key, default)
    if value is None:
        raise SettingsError(f"{where}: {key} is required")
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{where}: {key} must be a non-empty string")
    return value


def _opt(values: Mapping[str, Any], key: str, where: str) -> str | None:
    return _str(values, key, where) if key in values else None


def _int(values: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingsError(f"{where}: {key} must be a positive integer")
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _fields(value: Any, where: str) -> dict[str, str]:
    table = _table(value, f"{where}.fields")
    if not table:
        raise SettingsError(f"{where}.fields maps no field")
    out: dict[str, str] = {}
    for name, column in table.items():
        if not isinstance(column, str) or not column:
            raise SettingsError(f"{where}.fields.{name} must name a column")
        out[str(name)] = column
    return out


def sqlite_url_relative_to(url: str, base: Path) -> str:
    """Resolve a relative SQLite database path in ``url`` against ``base``; other URLs as is."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith((":memory:", "file:")):
        return url
    return prefix + str((base / rest).resolve())


def _file(base: Path, values: Mapping[str, Any], where: str) -> Path:
    path = _path(base, _str(values, "file", where))
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise SettingsError(f"{where}: file must end in .csv, .jsonl or .ndjson, got {path.name}")
    return path


def _store(
    raw: Any,
    mapping_fields: Mapping[str, str],
    subject: str,
    base: Path,
    kind: BackendKind,
    where: str,
) -> StoreTarget:
    values = _table(raw, where)
    _only(values, _STORE_KEYS, where)
    fields = _fields(values["fields"], where) if "fields" in values else dict(mapping_fields)
    common: dict[str, Any] = {
        "subject_column": _str(values, "subject_column", where, subject),
        "fields": fields,
        "reference_column": _opt(values, "reference_column", where),
        "version_column": _opt(values, "version_column", where),
        "submitted_by_column": _opt(values, "submitted_by_column", where),
    }
    if kind is BackendKind.SQL:
        if "file" in values:
            raise SettingsError(f"{where}: a SQL backend stores into a table, not a file")
        return StoreTarget(
            table=_str(values, "table", where), schema=_opt(values, "schema", where), **common
        )
    if "table" in values or "schema" in values:
        raise SettingsError(f"{where}: a files backend stores into a file, not a table")
    return StoreTarget(file=_file(base, values, where), **common)


def _material(material_type: str, raw: Any, base: Path, kind: BackendKind) -> MaterialMapping:
    where = f"[materials.{material_type}]"
    values = _table(raw, where)
    _only(values, _MATERIAL_KEYS, where)
    if "fields" not in values:
        raise SettingsError(f"{where}: fields (material field -> column) is required")
    fields = _fields(values["fields"], where)
    subject = _str(values, "subject_column", where)
    sources = [key for key in ("table", "query", "file") if key in values]
    if len(sources) != 1:
        raise SettingsError(f"{where}: name exactly one source: table, query or file")
    if kind is BackendKind.SQL and "file" in values:
        raise SettingsError(f"{where}: a SQL backend reads a table or query, not a file")
    if kind is BackendKind.FILES and "file" not in values:
        raise SettingsError(f'{where}: a files backend reads a file (file = "….csv")')
    query = _opt(values, "query", where)
    if query is not None and ":subject_id" not in query:
        raise SettingsError(f"{where}: query must take the subject as the :subject_id parameter")
    if "list_query" in values and query is None:
        raise SettingsError(f"{where}: list_query only goes with query")
    table = _opt(values, "table", where)
    schema = _opt(values, "schema", where)
    file = _file(base, values, where) if "file" in values else None
    if "store" in values:
        store: StoreTarget | None = _store(
            values["store"], fields, subject, base, kind, f"{where}.store"
        )
    elif table is not None or file is not None:
        # A material read from a table or file is stored where it is read.
        store = StoreTarget(
            subject_column=subject, fields=fields, table=table, schema=schema, file=file
        )
    else:
        store = None  # a query has no obvious place to write; Store is refused
    return MaterialMapping(
        material_type=material_type,
        subject_column=subject,
        fields=fields,
        table=table,
        schema=schema,
        query=query,
        list_query=_opt(values, "list_query", where),
        file=file,
        reference_column=_opt(values, "reference_column", where),
        version_column=_opt(values, "version_column", where),
        store=store,
    )


def parse(data: Mapping[str, Any], base: Path, source: str = "settings") -> DepartmentSettings:
    """Build settings from parsed TOML ``data``; relative paths are resolved against ``base``.

    Raises SettingsError naming the offending setting.
    """
    _only(data, {"department", "backend", "materials"}, source)
    department = _table(data.get("department"), f"{source} [department]")
    _only(department, _DEPARTMENT_KEYS, f"{source} [department]")
    where = f"{source} [department]"
    department_id = _str(department, "id", where)
    try:
        check_department_id(department_id)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    keys_dir = _path(base, _str(department, "keys_dir", where, "keys"))
    hub_key = department.get("hub_public_key")
    backend_raw = _table(data.get("backend"), f"{source} [backend]")
    _only(backend_raw, {"kind", "url"}, f"{source} [backend]")
    try:
        kind = BackendKind(_str(backend_raw, "kind", f"{source} [backend]"))
    except ValueError as exc:
        raise SettingsError(f'{source} [backend]: kind must be "sql" or "files"') from exc
    url = ""
    if kind is BackendKind.SQL:
        url = sqlite_url_relative_to(_str(backend_raw, "url", f"{source} [backend]"), base)
    elif "url" in backend_raw:
        raise SettingsError(f"{source} [backend]: a files backend takes no url")
    materials_raw = _table(data.get("materials", {}), f"{source} [materials]")
    if not materials_raw:
        raise SettingsError(
            f"{source}: no [materials.<type>] mapping; the adapter would hold nothing"
        )
    materials = {
        str(name): _material(str(name), raw, base, kind) for name, raw in materials_raw.items()
    }
    grace = department.get("shutdown_grace_seconds", 5.0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
        raise SettingsError(f"{where}: shutdown_grace_seconds must be a number >= 0")
    return DepartmentSettings(
        department_id=department_id,
        backend=BackendSettings(kind=kind, url=url),
        materials=materials,
        listen=_str(department, "listen", where, DEFAULT_LISTEN),
        keys_dir=keys_dir,
        hub_id=_str(department, "hub_id", where, "hub"),
        hub_public_key=(
            _path(base, _str(department, "hub_public_key", where))
            if hub_key is not None
            else keys_dir / "hub" / "signing.pub"
        ),
        hub_target=_str(department, "hub_target", where, "127.0.0.1:7443"),
        hub_server_name=_str(department, "hub_server_name", where, "localhost"),
        replay_window_seconds=_int(department, "replay_window_seconds", where, 300),
        shutdown_grace_seconds=float(grace),
        pending_stores=_path(
            base,
            _str(department, "pending_stores", where, f"{department_id}.pending-stores.db"),
        ),
    )


def load(path: Path) -> DepartmentSettings:
    """Load a department's TOML file. Raises SettingsError if it is missing or invalid."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"adapter configuration {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    return parse(data, path.resolve().parent, str(path))
