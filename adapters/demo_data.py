"""Synthetic departments for the demo: three SQLite databases and their adapter mappings.

Everything here is invented. Names are the stock placeholder names (张三, 李四 …) and every ID
number starts with region code 99, which no real region has, and carries ``DEMO`` or a run of
zeros, so nobody can mistake it for a person:

- **public security** (``demo.public-security``): household registration (户籍) in a ``hukou``
  table, mapped by table; and a biometric archive that the catalog marks NOT_SHARED.
- **civil affairs** (``demo.civil-affairs``): marriage records in ``marriage_registrations``,
  mapped by table, and the store target of collected marital status. 王五 has no record on
  file: the demo collects it once.
- **market regulation** (``demo.market-regulation``): business licences over two tables
  (``enterprises`` and ``legal_representatives``), mapped by a parameterized SELECT, to show a
  query mapping.

``CATALOG`` and ``FORM`` describe the catalog entries and the township's form that match these
mappings, for whoever registers them at the hub (the demo command).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.crypto.keystore import Keystore
from exchange.v1 import catalog_pb2

if TYPE_CHECKING:
    from adapters.provider import ProviderServer

PUBLIC_SECURITY = "demo.public-security"
CIVIL_AFFAIRS = "demo.civil-affairs"
MARKET_REGULATION = "demo.market-regulation"
TOWNSHIP = "demo.township-office"

HOUSEHOLD = "household-registration"
BIOMETRICS = "biometric-archive"
MARRIAGE = "marriage-record"
LICENCE = "business-licence"

ZHANG_SAN = "990101199001010019"  # married, runs a shop
LI_SI = "990101199202020029"  # married to 张三
WANG_WU = "990101198803030033"  # no marriage record on file: collected in the demo


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A material type as the demo publishes it: owner, fields, sharing class name."""

    material_type: str
    owner: str
    name: str
    fields: tuple[str, ...]
    sharing_class: str  # "UNCONDITIONAL" | "CONDITIONAL" | "NOT_SHARED"
    required: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()  # fields of type DATE; the others are STRING

    def to_proto(self) -> catalog_pb2.MaterialType:
        """The catalog entry to publish (``Catalog.PublishMaterialType``, by its owner)."""
        return catalog_pb2.MaterialType(
            id=self.material_type,
            owner=self.owner,
            name=self.name,
            sharing_class=catalog_pb2.SharingClass.Value(self.sharing_class),
            fields=[
                catalog_pb2.FieldSpec(
                    name=name,
                    type=catalog_pb2.DATE if name in self.dates else catalog_pb2.STRING,
                    required=name in self.required,
                )
                for name in self.fields
            ],
        )


@dataclass(frozen=True, slots=True)
class FormField:
    """One field of the township's form and the material field it is filled from."""

    name: str
    material_type: str
    material_field: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class DemoDepartment:
    """One synthetic department: id, name, its database and its adapter's TOML mapping."""

    department_id: str
    name: str
    database: Path
    config: Path
    port: int
    material_types: tuple[str, ...]


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        HOUSEHOLD,
        PUBLIC_SECURITY,
        "户籍信息 Household registration",
        ("name", "gender", "birth_date", "address", "household_head"),
        "UNCONDITIONAL",
        required=("name", "birth_date"),
        dates=("birth_date",),
    ),
    CatalogEntry(
        BIOMETRICS,
        PUBLIC_SECURITY,
        "生物特征档案 Biometric archive",
        ("fingerprint_class",),
        "NOT_SHARED",
    ),
    CatalogEntry(
        MARRIAGE,
        CIVIL_AFFAIRS,
        "婚姻登记 Marriage record",
        ("marital_status", "spouse_name", "registered_on"),
        "CONDITIONAL",
        required=("marital_status",),
        dates=("registered_on",),
    ),
    CatalogEntry(
        LICENCE,
        MARKET_REGULATION,
        "营业执照 Business licence",
        ("enterprise_name", "credit_code", "business_scope", "established_on"),
        "UNCONDITIONAL",
        required=("enterprise_name", "credit_code"),
        dates=("established_on",),
    ),
)

FORM_ID = "township-small-business-subsidy"
FORM_NAME = "小微经营户补贴申请表 Small business subsidy application"
FORM: tuple[FormField, ...] = (
    FormField("applicant_name", HOUSEHOLD, "name", "申请人姓名 Applicant"),
    FormField("birth_date", HOUSEHOLD, "birth_date", "出生日期 Date of birth"),
    FormField("address", HOUSEHOLD, "address", "户籍地址 Registered address"),
    FormField("marital_status", MARRIAGE, "marital_status", "婚姻状况 Marital status"),
    FormField("spouse_name", MARRIAGE, "spouse_name", "配偶姓名 Spouse"),
    FormField("enterprise_name", LICENCE, "enterprise_name", "经营主体名称 Business name"),
    FormField("credit_code", LICENCE, "credit_code", "统一社会信用代码 Credit code"),
)

_HUKOU = (
    (ZHANG_SAN, "张三 (demo)", "M", "1990-01-01", "示例省示例市幸福路 1 号 (demo)", "张三 (demo)"),
    (LI_SI, "李四 (demo)", "F", "1992-02-02", "示例省示例市幸福路 1 号 (demo)", "张三 (demo)"),
    (WANG_WU, "王五 (demo)", "M", "1988-03-03", "示例省示例县和平村 8 号 (demo)", "王五 (demo)"),
)
_MARRIAGES = (
    (ZHANG_SAN, "married", "李四 (demo)", "2018-05-20", "示例市民政局 (demo)"),
    (LI_SI, "married", "张三 (demo)", "2018-05-20", "示例市民政局 (demo)"),
)
_ENTERPRISES = (
    ("91990000DEMO00001X", "张三示例小卖部 (demo)", "日用百货零售 retail", "2019-09-09"),
    ("91990000DEMO00002X", "王五示例农家乐 (demo)", "餐饮服务 catering", "2021-04-01"),
)
_REPRESENTATIVES = ((ZHANG_SAN, "91990000DEMO00001X"), (WANG_WU, "91990000DEMO00002X"))


def _public_security(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE hukou (id_no TEXT PRIMARY KEY, full_name TEXT NOT NULL, sex TEXT, "
        "date_of_birth DATE, domicile TEXT, head_of_household TEXT)"
    )
    db.executemany("INSERT INTO hukou VALUES (?, ?, ?, ?, ?, ?)", _HUKOU)
    db.execute("CREATE TABLE biometrics (id_no TEXT PRIMARY KEY, fingerprint_class TEXT)")
    db.executemany(
        "INSERT INTO biometrics VALUES (?, ?)", [(row[0], "whorl (demo)") for row in _HUKOU]
    )


def _civil_affairs(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE marriage_registrations (citizen_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "spouse TEXT, reg_date DATE, office TEXT, hub_reference TEXT, hub_version INTEGER, "
        "collected_by TEXT)"
    )
    db.executemany(
        "INSERT INTO marriage_registrations (citizen_id, status, spouse, reg_date, office) "
        "VALUES (?, ?, ?, ?, ?)",
        _MARRIAGES,
    )


def _market_regulation(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE enterprises (credit_code TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "scope TEXT, established DATE)"
    )
    db.executemany("INSERT INTO enterprises VALUES (?, ?, ?, ?)", _ENTERPRISES)
    db.execute(
        "CREATE TABLE legal_representatives (id_no TEXT NOT NULL, credit_code TEXT NOT NULL "
        "REFERENCES enterprises(credit_code))"
    )
    db.executemany("INSERT INTO legal_representatives VALUES (?, ?)", _REPRESENTATIVES)


_LICENCE_SELECT = (
    "SELECT r.id_no AS id_no, e.name AS enterprise_name, e.credit_code AS credit_code, "
    "e.scope AS business_scope, e.established AS established_on "
    "FROM legal_representatives r JOIN enterprises e ON e.credit_code = r.credit_code"
)

_MAPPINGS: Mapping[str, str] = {
    PUBLIC_SECURITY: f"""
[materials.{HOUSEHOLD}]
table = "hukou"
subject_column = "id_no"

[materials.{HOUSEHOLD}.fields]  # material field = column
name = "full_name"
gender = "sex"
birth_date = "date_of_birth"
address = "domicile"
household_head = "head_of_household"

[materials.{BIOMETRICS}]
table = "biometrics"
subject_column = "id_no"
fields = {{ fingerprint_class = "fingerprint_class" }}
""",
    CIVIL_AFFAIRS: f"""
[materials.{MARRIAGE}]
table = "marriage_registrations"
subject_column = "citizen_id"
reference_column = "hub_reference"
version_column = "hub_version"
fields = {{ marital_status = "status", spouse_name = "spouse", registered_on = "reg_date" }}

# Collected marital status is written back into the same table, with the hub's reference,
# version and the collecting department.
[materials.{MARRIAGE}.store]
table = "marriage_registrations"
reference_column = "hub_reference"
version_column = "hub_version"
submitted_by_column = "collected_by"
""",
    MARKET_REGULATION: f"""
# A parameterized SELECT over two tables; list_query lists every licence for publishing.
[materials.{LICENCE}]
query = "{_LICENCE_SELECT} WHERE r.id_no = :subject_id"
list_query = "{_LICENCE_SELECT}"
subject_column = "id_no"

[materials.{LICENCE}.fields]  # material field = result column
enterprise_name = "enterprise_name"
credit_code = "credit_code"
business_scope = "business_scope"
established_on = "established_on"
""",
}

_BUILDERS = {
    PUBLIC_SECURITY: ("公安局 Public Security Bureau (demo)", _public_security),
    CIVIL_AFFAIRS: ("民政局 Civil Affairs Bureau (demo)", _civil_affairs),
    MARKET_REGULATION: ("市场监管局 Market Regulation Bureau (demo)", _market_regulation),
}


def write_departments(
    root: Path,
    keys_dir: Path,
    ports: Mapping[str, int],
    *,
    hub_id: str = "hub",
    hub_target: str = "127.0.0.1:7443",
) -> Sequence[DemoDepartment]:
    """Create each department's SQLite database and adapter TOML under ``root/<department>/``.

    ``ports`` gives each department's adapter port (0 lets the system choose). Existing
    databases are replaced, so the demo always starts from the same data. Keys are not created
    here (``Keystore.add_department(id, server_names=("localhost", "127.0.0.1"))`` does that).
    """
    created = []
    for department_id, (name, build) in _BUILDERS.items():
        directory = root / department_id
        directory.mkdir(parents=True, exist_ok=True)
        database = directory / "data.db"
        database.unlink(missing_ok=True)
        with sqlite3.connect(database) as db:
            build(db)
        db.close()
        port = ports.get(department_id, 0)
        config = directory / "adapter.toml"
        config.write_text(
            f"""# Adapter of {name}: synthetic demo data.
[department]
id = "{department_id}"
listen = "127.0.0.1:{port}"
keys_dir = "{keys_dir.resolve()}"
hub_id = "{hub_id}"
hub_target = "{hub_target}"

[backend]
kind = "sql"
url = "sqlite:///data.db"
{_MAPPINGS[department_id]}""",
            encoding="utf-8",
        )
        types = tuple(entry.material_type for entry in CATALOG if entry.owner == department_id)
        created.append(DemoDepartment(department_id, name, database, config, port, types))
    return created


def create_keys(
    keystore: Keystore, *, server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> None:
    """Create the demo departments' and the township form tool's keys, unless they exist.

    The provider departments' certificates double as their adapters' server certificates.
    """
    for department_id in (*_BUILDERS, TOWNSHIP):
        if not (keystore.department_dir(department_id) / "signing.key").exists():
            names = server_names if department_id in _BUILDERS else ()
            keystore.add_department(department_id, server_names=names)


async def start_adapters(departments: Sequence[DemoDepartment]) -> list[ProviderServer]:
    """Start each department's adapter; their ``port`` attributes say where they listen.

    Stop them with ``await server.stop(grace)``. Raises MappingError, KeyFileError.
    """
    from adapters.backends import open_backend
    from adapters.provider import ProviderServer
    from adapters.settings import load

    servers: list[ProviderServer] = []
    try:
        for department in departments:
            settings = load(department.config)
            server = ProviderServer(settings, open_backend(settings))
            await server.start()
            servers.append(server)
    except BaseException:
        for server in servers:
            await server.stop(0)
        raise
    return servers
