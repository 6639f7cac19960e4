"""The burden report (一本账): what each entry adds to the counters, and the report built from
them with the catalog, the forms and the form tools.

The counters are kept per material type, on the side of the department that holds it (the
catalog owner): how often its material was stored, found already on file, served, refused,
failed and prefilled, and when it was last used. Definitions are in docs/supervision.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from exchange.catalog.model import Form, MaterialType
from exchange.config import SupervisionConfig
from exchange.membership import MemberState
from exchange.supervision.model import Observation
from exchange.supervision.rules import DAY_US
from exchange.v1 import ledger_pb2

STORED = frozenset({"STORED", "NEW_VERSION"})


@dataclass(frozen=True, slots=True)
class CounterChange:
    """What one entry adds to one material type's counters. ``used_us`` / ``listed_us`` are 0
    when the entry is not a use / not a publication."""

    material_type: str
    holder: str = ""
    stored: int = 0
    avoided: int = 0
    served: int = 0
    refused: int = 0
    failed: int = 0
    prefills: int = 0
    used_us: int = 0
    listed_us: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """One successful prefill or submission by a department (form tool use), by UTC day."""

    department: str
    day: int
    time_us: int


def counter_changes(obs: Observation) -> list[CounterChange]:
    """What ``obs`` adds to the burden counters (see the module docstring)."""
    kind, ok = obs.kind, obs.outcome == ledger_pb2.OK
    if kind == ledger_pb2.MATERIAL_TYPE_PUBLICATION and ok and obs.material_type:
        return [CounterChange(obs.material_type, holder=obs.actor, listed_us=obs.time_us)]
    if not obs.material_type and kind != ledger_pb2.PREFILL:
        return []
    if kind == ledger_pb2.SUBMIT and ok:
        outcome = obs.attributes.get("submit", "")
        return [
            CounterChange(
                obs.material_type,
                holder=obs.counterparty,
                stored=int(outcome in STORED),
                avoided=int(outcome == "ALREADY_ON_FILE"),
                used_us=obs.time_us,
            )
        ]
    if kind == ledger_pb2.REQUEST:
        return [
            CounterChange(
                obs.material_type,
                holder=obs.counterparty,
                served=int(ok),
                refused=int(obs.outcome == ledger_pb2.REFUSED),
                failed=int(obs.outcome == ledger_pb2.FAILED),
                used_us=obs.time_us if ok else 0,
            )
        ]
    if kind == ledger_pb2.PREFILL and ok:
        types = obs.material_types()
        holder = obs.counterparty if len(types) == 1 else ""
        return [CounterChange(t, holder=holder, prefills=1, used_us=obs.time_us) for t in types]
    if kind == ledger_pb2.CHECK and ok:
        return [CounterChange(obs.material_type, holder=obs.counterparty, used_us=obs.time_us)]
    return []


def usage_of(obs: Observation) -> Usage | None:
    """The form-tool use ``obs`` records: a successful PREFILL or SUBMIT by its actor."""
    if (
        obs.kind in (ledger_pb2.PREFILL, ledger_pb2.SUBMIT)
        and obs.outcome == ledger_pb2.OK
        and obs.actor
    ):
        return Usage(obs.actor, obs.time_us // DAY_US, obs.time_us)
    return None


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True, slots=True)
class Counters:
    """The stored counters of one material type."""

    material_type: str
    holder: str
    stored: int = 0
    avoided: int = 0
    served: int = 0
    refused: int = 0
    failed: int = 0
    prefills: int = 0
    last_use_us: int | None = None
    listed_us: int | None = None


@dataclass(frozen=True, slots=True)
class FormToolRecord:
    """What the report needs of a registered form tool."""

    department: str
    state: str
    registered_us: int


@dataclass(frozen=True, slots=True)
class ToolUse:
    """Totals of one form tool over the idle window (counts) and overall (last use)."""

    uses: int
    last_use_us: int | None


@dataclass(frozen=True, slots=True)
class BurdenRow:
    """One row: a material type and the department holding it."""

    department: str
    material_type: str
    stored: int
    avoided: int
    served: int
    refused: int
    failed: int
    prefills: int
    last_use_us: int | None
    zombie: bool
    listed: bool


@dataclass(frozen=True, slots=True)
class FormToolRow:
    """A form tool's use in the idle window; ``idle`` marks a zombie candidate."""

    department: str
    state: str
    uses: int
    last_use_us: int | None
    idle: bool


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two forms asking largely for the same material fields (a consolidation candidate)."""

    form_a: str
    form_b: str
    shared_fields: tuple[str, ...]
    overlap: float


@dataclass(frozen=True, slots=True)
class BurdenReport:
    """The burden report as of ``as_of_us`` with an idle window of ``idle_days``."""

    rows: tuple[BurdenRow, ...]
    form_tools: tuple[FormToolRow, ...]
    overlaps: tuple[Overlap, ...]
    idle_days: int
    as_of_us: int

    @property
    def idle_form_tools(self) -> tuple[str, ...]:
        """The form tools flagged as little used."""
        return tuple(t.department for t in self.form_tools if t.idle)


def form_fields(form: Form) -> frozenset[str]:
    """The material fields a form asks for, as "type.field" (fields only the person gives are
    left out: they are not on file anywhere)."""
    return frozenset(
        f"{f.material_type}.{f.material_field or f.name}" for f in form.fields if f.material_type
    )


def form_overlaps(forms: Iterable[Form], threshold: float) -> list[Overlap]:
    """Pairs of forms sharing at least ``threshold`` of the smaller form's material fields,
    most overlapping first. Only pairs sharing a field are compared (an inverted index)."""
    fields = {form.id: form_fields(form) for form in forms}
    by_field: dict[str, list[str]] = defaultdict(list)
    for form_id in sorted(fields):
        for name in fields[form_id]:
            by_field[name].append(form_id)
    pairs: set[tuple[str, str]] = set()
    for holders in by_field.values():
        for i, a in enumerate(holders):
            pairs.update((a, b) for b in holders[i + 1 :])
    found = []
    for a, b in pairs:
        shared = fields[a] & fields[b]
        overlap = len(shared) / min(len(fields[a]), len(fields[b]))
        if overlap >= threshold:
            found.append(Overlap(a, b, tuple(sorted(shared)), round(overlap, 4)))
    found.sort(key=lambda o: (-o.overlap, o.form_a, o.form_b))
    return found


def build_report(
    counters: Iterable[Counters],
    catalog: Sequence[MaterialType],
    forms: Iterable[Form],
    tools: Iterable[FormToolRecord],
    usage: Mapping[str, ToolUse],
    *,
    now_us: int,
    idle_days: int,
    config: SupervisionConfig,
) -> BurdenReport:
    """The burden report.

    ``counters`` are the stored counters, ``catalog`` the listed material types (their owner is
    the row's department), ``usage`` each form tool's uses within the last ``idle_days`` UTC
    days. A material type is a zombie candidate if it was neither used nor listed within
    ``idle_days`` (never-used types listed before the window included); a form tool if it is
    ACTIVE, registered before the window and has fewer than ``form_tool_min_uses`` uses in it.
    """
    horizon = now_us - idle_days * DAY_US
    owners = {t.id: t.owner for t in catalog}
    by_type = {c.material_type: c for c in counters}
    rows = []
    for type_id in sorted(set(by_type) | set(owners)):
        c = by_type.get(type_id) or Counters(type_id, holder="")
        recent = c.last_use_us if c.last_use_us is not None else c.listed_us
        rows.append(
            BurdenRow(
                department=owners.get(type_id) or c.holder,
                material_type=type_id,
                stored=c.stored,
                avoided=c.avoided,
                served=c.served,
                refused=c.refused,
                failed=c.failed,
                prefills=c.prefills,
                last_use_us=c.last_use_us,
                zombie=recent is None or recent <= horizon,
                listed=type_id in owners,
            )
        )
    rows.sort(key=lambda r: (r.department, r.material_type))
    tool_rows = []
    for tool in sorted(tools, key=lambda t: t.department):
        use = usage.get(tool.department, ToolUse(0, None))
        idle = (
            tool.state == MemberState.ACTIVE
            and tool.registered_us <= horizon
            and use.uses < config.form_tool_min_uses
        )
        tool_rows.append(FormToolRow(tool.department, tool.state, use.uses, use.last_use_us, idle))
    return BurdenReport(
        rows=tuple(rows),
        form_tools=tuple(tool_rows),
        overlaps=tuple(form_overlaps(forms, config.form_overlap)),
        idle_days=idle_days,
        as_of_us=now_us,
    )
