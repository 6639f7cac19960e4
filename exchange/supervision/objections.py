"""Objection deadlines (TIMELINESS): past the deadline YELLOW, twice past it RED.

An objection may stay open for months, far beyond any replay window, so open objections are
persisted (``exchange.supervision.store``) rather than rebuilt from the log: an
OBJECTION_FILING entry opens one, an OBJECTION_RESOLUTION entry closes it, and the periodic
tick compares the open ones with the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.config import SupervisionConfig
from exchange.supervision.model import AlertCategory, AlertLevel, Finding, Observation
from exchange.supervision.rules import DAY_US
from exchange.v1 import ledger_pb2

RULE = "objection-overdue"


@dataclass(frozen=True, slots=True)
class ObjectionOpened:
    """An objection to watch: its holder must answer by ``deadline_us``."""

    objection_id: str
    owner: str
    material_type: str
    filed_us: int
    deadline_us: int
    sequence: int


@dataclass(frozen=True, slots=True)
class ObjectionClosed:
    """An objection was resolved; its deadline no longer runs."""

    objection_id: str


def objection_change(
    obs: Observation, config: SupervisionConfig
) -> ObjectionOpened | ObjectionClosed | None:
    """What ``obs`` changes in the open objections.

    A successful OBJECTION_FILING with attribute ``objection_id`` opens one, due at attribute
    ``deadline_us`` (else ``objection_deadline_days`` after filing); so does a SUBMIT whose
    outcome was a correction proposal (``submit=CORRECTION_PROPOSED``, with ``objection_id``).
    Its holder is the entry's counterparty. A successful OBJECTION_RESOLUTION closes the one
    named.
    """
    if obs.outcome != ledger_pb2.OK:
        return None
    objection_id = obs.attributes.get("objection_id", "")
    if not objection_id:
        return None
    if obs.kind == ledger_pb2.OBJECTION_RESOLUTION:
        return ObjectionClosed(objection_id)
    proposal = (
        obs.kind == ledger_pb2.SUBMIT and obs.attributes.get("submit") == "CORRECTION_PROPOSED"
    )
    if obs.kind != ledger_pb2.OBJECTION_FILING and not proposal:
        return None
    deadline = obs.attribute_int("deadline_us")
    if deadline is None or deadline <= obs.time_us:
        deadline = obs.time_us + config.objection_deadline_days * DAY_US
    return ObjectionOpened(
        objection_id=objection_id,
        owner=obs.counterparty,
        material_type=obs.material_type,
        filed_us=obs.time_us,
        deadline_us=deadline,
        sequence=obs.sequence,
    )


def level_due(filed_us: int, deadline_us: int, now_us: int) -> AlertLevel | None:
    """The level an open objection has reached at ``now_us``: YELLOW once past its deadline,
    RED once the time allowed has passed twice over (``now >= deadline + (deadline - filed)``),
    None before the deadline."""
    if now_us >= deadline_us + (deadline_us - filed_us):
        return AlertLevel.RED
    if now_us > deadline_us:
        return AlertLevel.YELLOW
    return None


def overdue_finding(opened: ObjectionOpened, level: AlertLevel, now_us: int) -> Finding:
    """The alert for an objection that reached ``level``."""
    days = (now_us - opened.deadline_us) / DAY_US
    allowed = (opened.deadline_us - opened.filed_us) / DAY_US
    twice = " (twice the time allowed)" if level is AlertLevel.RED else ""
    return Finding(
        level=level,
        category=AlertCategory.TIMELINESS,
        rule=RULE,
        department=opened.owner,
        material_type=opened.material_type,
        message=(
            f"objection {opened.objection_id} unanswered {days:.1f} days past its deadline of "
            f"{allowed:.1f} days{twice}"
        ),
        sequence=opened.sequence,
        raised_us=now_us,
        key=f"{opened.objection_id}:{level.name}",
    )
