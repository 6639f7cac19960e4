"""Supervision (电子监察) and the burden report (一本账).

Rules over the committed entry stream raise yellow and red alerts (timeliness, process, content,
discretion, risk); counters kept from the same stream give, per material type and holding
department, the re-collections avoided, requests served and refused, prefills, last use and
idle ("zombie") catalog entries, with little-used form tools and overlapping forms.
docs/supervision.md lists the rules, their thresholds and the entry conventions they read.
"""

from exchange.supervision.burden import BurdenReport, build_report, form_overlaps
from exchange.supervision.engine import Supervisor
from exchange.supervision.model import Alert, AlertCategory, AlertLevel, Finding, Observation
from exchange.supervision.store import SupervisionStore

__all__ = [
    "Alert",
    "AlertCategory",
    "AlertLevel",
    "BurdenReport",
    "Finding",
    "Observation",
    "SupervisionStore",
    "Supervisor",
    "build_report",
    "form_overlaps",
]
