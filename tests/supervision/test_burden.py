"""The burden report: counters from the entry stream, zombie candidates, form tools, overlaps."""

from __future__ import annotations

from exchange.catalog.model import FieldSpec, FieldType, Form, FormField, MaterialType, SharingClass
from exchange.supervision import Supervisor, build_report, form_overlaps
from exchange.supervision.burden import FormToolRecord
from exchange.v1 import common_pb2, ledger_pb2

from .support import CONFIG, DAY, OFFICE_TIME, SECOND, Stream, entry

CIVIL, POLICE, MARKET = "js.nj.civil-affairs", "js.nj.public-security", "js.nj.market"
TOOL = "js.nj.township-form"


def material_type(type_id: str, owner: str) -> MaterialType:
    return MaterialType(
        id=type_id,
        owner=owner,
        name=type_id,
        fields=(FieldSpec("name", FieldType.STRING),),
        sharing_class=SharingClass.CONDITIONAL,
    )


CATALOG = [
    material_type("marriage-record", CIVIL),
    material_type("household", POLICE),
    material_type("business-licence", MARKET),
]


def publication(type_id: str, owner: str) -> ledger_pb2.LedgerEntry:
    return entry(
        ledger_pb2.MATERIAL_TYPE_PUBLICATION,
        OFFICE_TIME,
        actor=owner,
        counterparty="",
        material_type=type_id,
    )


async def test_counters_follow_the_entry_stream_and_flag_idle_types(
    supervisor: Supervisor,
) -> None:
    stream = Stream()
    later = OFFICE_TIME + 8 * DAY
    await supervisor.feed(
        stream(
            *(publication(t.id, t.owner) for t in CATALOG),
            entry(ledger_pb2.SUBMIT, later, actor=TOOL, submit="STORED"),
            entry(ledger_pb2.SUBMIT, later, actor=TOOL, submit="ALREADY_ON_FILE"),
            entry(ledger_pb2.SUBMIT, later, actor=TOOL, submit="ALREADY_ON_FILE"),
            entry(ledger_pb2.SUBMIT, later, submit="NEW_VERSION"),
            entry(ledger_pb2.SUBMIT, later, submit="CORRECTION_PROPOSED"),
            entry(ledger_pb2.REQUEST, later),
            entry(
                ledger_pb2.REQUEST, later, outcome=ledger_pb2.REFUSED, reason=common_pb2.NO_GRANT
            ),
            entry(
                ledger_pb2.REQUEST,
                later,
                outcome=ledger_pb2.FAILED,
                reason=common_pb2.PROVIDER_TIMEOUT,
            ),
            entry(
                ledger_pb2.PREFILL,
                later + SECOND,
                actor=TOOL,
                material_type="",
                counterparty=f"{CIVIL},{POLICE}",
                material_types="household,marriage-record",
            ),
            entry(ledger_pb2.REQUEST, later, material_type="unlisted-type", counterparty="js.x"),
        )
    )
    report = build_report(
        supervisor.store.counters(),
        CATALOG,
        [],
        [],
        {},
        now_us=OFFICE_TIME + 10 * DAY,
        idle_days=7,
        config=CONFIG,
    )
    rows = {r.material_type: r for r in report.rows}
    marriage = rows["marriage-record"]
    assert (marriage.department, marriage.stored, marriage.avoided) == (CIVIL, 2, 2)
    assert (marriage.served, marriage.refused, marriage.failed, marriage.prefills) == (1, 1, 1, 1)
    assert marriage.last_use_us == later + SECOND and not marriage.zombie and marriage.listed
    household = rows["household"]
    assert (household.department, household.prefills, household.zombie) == (POLICE, 1, False)
    licence = rows["business-licence"]  # listed 10 days ago, never used: a zombie candidate
    assert (licence.department, licence.served, licence.zombie) == (MARKET, 0, True)
    unlisted = rows["unlisted-type"]  # seen in entries only: its holder from the entries
    assert (unlisted.department, unlisted.listed, unlisted.served) == ("js.x", False, 1)

    # With a longer idle window the licence, listed 10 days ago, is not idle yet.
    wider = build_report(
        supervisor.store.counters(),
        CATALOG,
        [],
        [],
        {},
        now_us=OFFICE_TIME + 10 * DAY,
        idle_days=30,
        config=CONFIG,
    )
    assert not any(r.zombie for r in wider.rows)


async def test_little_used_form_tools_are_flagged(supervisor: Supervisor) -> None:
    now = OFFICE_TIME + 40 * DAY
    stream = Stream()
    await supervisor.feed(
        stream(
            entry(ledger_pb2.PREFILL, now - DAY, actor="js.busy", material_types="household"),
            entry(ledger_pb2.SUBMIT, now - 2 * DAY, actor="js.busy", submit="STORED"),
            entry(ledger_pb2.PREFILL, now - 35 * DAY, actor="js.idle", material_types="household"),
            entry(ledger_pb2.PREFILL, now - DAY, actor="js.idle", outcome=ledger_pb2.REFUSED),
        )
    )
    tools = [
        FormToolRecord("js.busy", "ACTIVE", OFFICE_TIME),
        FormToolRecord("js.idle", "ACTIVE", OFFICE_TIME),
        FormToolRecord("js.new", "ACTIVE", now - DAY),  # too new to judge
        FormToolRecord("js.retired", "RETIRED", OFFICE_TIME),  # already out of use
    ]
    since_day = (now - 30 * DAY) // DAY
    report = build_report(
        [],
        [],
        [],
        tools,
        supervisor.store.usage(since_day),
        now_us=now,
        idle_days=30,
        config=CONFIG,
    )
    assert report.idle_form_tools == ("js.idle",)
    by_id = {t.department: t for t in report.form_tools}
    assert by_id["js.busy"].uses == 2 and by_id["js.idle"].uses == 0
    assert by_id["js.idle"].last_use_us == now - 35 * DAY


def form(form_id: str, *fields: str) -> Form:
    return Form(
        id=form_id,
        name=form_id,
        owner=TOOL,
        purpose="p",
        fields=tuple(
            FormField(
                name=f.replace(".", "_"),
                material_type=f.split(".")[0],
                material_field=f.split(".")[1],
            )
            if "." in f
            else FormField(name=f)
            for f in fields
        ),
    )


def test_forms_asking_for_the_same_fields_are_consolidation_candidates() -> None:
    forms = [
        form("marriage-benefit", "marriage.name", "marriage.date", "household.address", "phone"),
        form("housing-subsidy", "marriage.name", "marriage.date", "household.address", "income"),
        form("licence-renewal", "business.code", "marriage.name", "business.address"),
        form("free-text", "phone", "income"),  # nothing on file: never compared
    ]
    [overlap] = form_overlaps(forms, 0.6)
    assert (overlap.form_a, overlap.form_b) == ("housing-subsidy", "marriage-benefit")
    assert overlap.shared_fields == ("household.address", "marriage.date", "marriage.name")
    assert overlap.overlap == 1.0
    # licence-renewal shares one of its three mapped fields (1/3): below the threshold.
    assert [(o.form_a, o.form_b) for o in form_overlaps(forms, 0.3)] == [
        ("housing-subsidy", "marriage-benefit"),
        ("housing-subsidy", "licence-renewal"),
        ("licence-renewal", "marriage-benefit"),
    ]
