"""The entry-driven supervision rules (电子监察). Each sees every committed entry once, in order.

A rule keeps only what its window needs in memory (``window_us``), so after a restart the
engine rebuilds it by replaying that window of the log; stateless rules have a window of 0.
Rules use the entry's time, never the wall clock, so the same entries always raise the same
alerts. The objection deadlines, which need the clock, are in ``exchange.supervision.objections``.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict, deque
from typing import Protocol

from exchange.config import SupervisionConfig
from exchange.supervision.model import AlertCategory, AlertLevel, Finding, Observation
from exchange.v1 import common_pb2, ledger_pb2

_US = 1_000_000
DAY_US = 86_400 * _US

# Calls that reach a provider.
PROVIDER_KINDS = frozenset({ledger_pb2.REQUEST, ledger_pb2.PREFILL})
# Calls that touch a person's material; their refusals count towards repeated refusals.
# CALL_REFUSAL is left out: its actor is only what an unauthenticated caller claimed to be.
DATA_KINDS = frozenset(
    {
        ledger_pb2.CHECK,
        ledger_pb2.SUBMIT,
        ledger_pb2.REQUEST,
        ledger_pb2.PREFILL,
        ledger_pb2.ACCESS_HISTORY,
    }
)
# Calls that reveal something about a subject; distinct subjects count towards bulk access.
# ACCESS_HISTORY is one: it tells the caller who touched a person's material, so a form tool
# reading many people's histories is enumerating people like any bulk reader.
ACCESS_KINDS = frozenset(
    {ledger_pb2.CHECK, ledger_pb2.REQUEST, ledger_pb2.PREFILL, ledger_pb2.ACCESS_HISTORY}
)


class Rule(Protocol):
    """One rule over the entry stream."""

    name: str
    # How far back (in entry time) the rule's state reaches; 0 for a stateless rule.
    window_us: int

    def observe(self, obs: Observation) -> list[Finding]:
        """The alerts ``obs`` raises (usually none)."""
        ...

    def expire(self, now_us: int) -> None:
        """Forget state older than the window as of ``now_us`` (bounded memory)."""
        ...


def prefill_failures(obs: Observation, reason: common_pb2.Reason.ValueType) -> list[str]:
    """Material types whose holder failed a PREFILL with ``reason``: a prefill does not fail for
    one holder, it records ``failures="type:REASON,…"`` on its entry."""
    if obs.kind != ledger_pb2.PREFILL:
        return []
    failed = []
    name = common_pb2.Reason.Name(reason)
    for item in obs.attributes.get("failures", "").split(","):
        material_type, _, why = item.rpartition(":")
        if material_type and why == name:
            failed.append(material_type)
    return failed


def _finding(
    rule: str,
    level: AlertLevel,
    category: AlertCategory,
    obs: Observation,
    department: str,
    message: str,
    material_type: str | None = None,
) -> Finding:
    return Finding(
        level=level,
        category=category,
        rule=rule,
        department=department,
        material_type=obs.material_type if material_type is None else material_type,
        message=message,
        sequence=obs.sequence,
        raised_us=obs.time_us,
        key=str(obs.sequence) if material_type is None else f"{obs.sequence}:{material_type}",
    )


class ProviderLateness:
    """TIMELINESS: a provider answered beyond its time limit (YELLOW) or not at all (RED).

    Reads REQUEST and PREFILL entries: attribute ``provider_latency_ms`` above
    ``provider_time_limit_ms`` is late; reason PROVIDER_TIMEOUT is a timeout. The department is
    the provider (the entry's counterparty).
    """

    name = "provider-late"
    window_us = 0

    def __init__(self, config: SupervisionConfig) -> None:
        self.limit_ms = config.provider_time_limit_ms

    def observe(self, obs: Observation) -> list[Finding]:
        if obs.kind not in PROVIDER_KINDS:
            return []
        timeouts = prefill_failures(obs, common_pb2.PROVIDER_TIMEOUT)
        if timeouts:
            message = f"a holder did not answer a prefill within the {self.limit_ms} ms limit"
            return [
                _finding(
                    self.name,
                    AlertLevel.RED,
                    AlertCategory.TIMELINESS,
                    obs,
                    obs.counterparty,
                    message,
                    material_type,
                )
                for material_type in timeouts
            ]
        if obs.reason == common_pb2.PROVIDER_TIMEOUT:
            message = f"the provider did not answer within the {self.limit_ms} ms limit (timeout)"
            level = AlertLevel.RED
        else:
            latency = obs.attribute_int("provider_latency_ms")
            if latency is None or latency <= self.limit_ms:
                return []
            message = f"the provider answered in {latency} ms, beyond its {self.limit_ms} ms limit"
            level = AlertLevel.YELLOW
        return [
            _finding(self.name, level, AlertCategory.TIMELINESS, obs, obs.counterparty, message)
        ]

    def expire(self, now_us: int) -> None:
        return None


class ContentMismatch:
    """CONTENT, RED: material delivered by a provider did not match the content hash in the
    index (REQUEST or PREFILL entries with reason CONTENT_MISMATCH, whatever the outcome)."""

    name = "content-mismatch"
    window_us = 0

    def observe(self, obs: Observation) -> list[Finding]:
        message = "material from the provider does not match the content hash in the index"
        mismatched = prefill_failures(obs, common_pb2.CONTENT_MISMATCH)
        if mismatched:
            return [
                _finding(
                    self.name,
                    AlertLevel.RED,
                    AlertCategory.CONTENT,
                    obs,
                    obs.counterparty,
                    message,
                    material_type,
                )
                for material_type in mismatched
            ]
        if obs.kind not in PROVIDER_KINDS or obs.reason != common_pb2.CONTENT_MISMATCH:
            return []
        return [
            _finding(
                self.name, AlertLevel.RED, AlertCategory.CONTENT, obs, obs.counterparty, message
            )
        ]

    def expire(self, now_us: int) -> None:
        return None


class OffHoursConditional:
    """DISCRETION, YELLOW: conditional material requested outside office hours.

    Reads REQUEST entries with attribute ``sharing_class`` = CONDITIONAL, at their entry time
    in local time (``utc_offset_minutes``). One alert per consumer, material type and local day
    (the message says so), so a night batch raises one alert, not thousands.
    """

    name = "off-hours-conditional"
    window_us = DAY_US

    def __init__(self, config: SupervisionConfig) -> None:
        self.start = config.office_hours_start
        self.end = config.office_hours_end
        self.weekends_off = config.weekends_off
        self.zone = dt.timezone(dt.timedelta(minutes=config.utc_offset_minutes))
        self._raised: dict[tuple[str, str], dt.date] = {}

    def local_time(self, time_us: int) -> dt.datetime:
        """``time_us`` in the configured local time zone."""
        return dt.datetime.fromtimestamp(time_us / _US, tz=self.zone)

    def outside_hours(self, time_us: int) -> bool:
        """True if ``time_us`` is outside office hours."""
        local = self.local_time(time_us)
        if self.weekends_off and local.weekday() >= 5:
            return True
        return not self.start <= local.hour < self.end

    def observe(self, obs: Observation) -> list[Finding]:
        if obs.kind != ledger_pb2.REQUEST or obs.attributes.get("sharing_class") != "CONDITIONAL":
            return []
        if not self.outside_hours(obs.time_us):
            return []
        local = self.local_time(obs.time_us)
        key = (obs.actor, obs.material_type)
        if self._raised.get(key) == local.date():
            return []
        self._raised[key] = local.date()
        message = (
            f"conditional material requested at {local:%Y-%m-%d %H:%M} local time, outside "
            f"office hours {self.start:02d}:00-{self.end:02d}:00"
            f"{' on weekdays' if self.weekends_off else ''}; first such request of the day"
        )
        return [
            _finding(
                self.name, AlertLevel.YELLOW, AlertCategory.DISCRETION, obs, obs.actor, message
            )
        ]

    def expire(self, now_us: int) -> None:
        today = self.local_time(now_us).date()
        for key in [k for k, day in self._raised.items() if day < today]:
            del self._raised[key]


class RepeatedRefusals:
    """PROCESS: one consumer refused ``refusals_per_window`` times within the window (YELLOW),
    or twice that many (RED).

    Counts REFUSED entries of data calls (check, submit, request, prefill, access history) by
    their actor. Raised once per level per window and consumer.
    """

    name = "repeated-refusals"

    def __init__(self, config: SupervisionConfig) -> None:
        self.threshold = max(1, config.refusals_per_window)
        self.window_us = config.refusal_window_seconds * _US
        self._times: dict[str, deque[int]] = {}
        self._raised: dict[str, tuple[AlertLevel, int]] = {}

    def observe(self, obs: Observation) -> list[Finding]:
        if obs.kind not in DATA_KINDS or obs.outcome != ledger_pb2.REFUSED:
            return []
        times = self._times.setdefault(obs.actor, deque())
        times.append(obs.time_us)
        while times and times[0] <= obs.time_us - self.window_us:
            times.popleft()
        count = len(times)
        if count >= 2 * self.threshold:
            level = AlertLevel.RED
        elif count >= self.threshold:
            level = AlertLevel.YELLOW
        else:
            return []
        raised = self._raised.get(obs.actor)
        if raised is not None and raised[0] >= level and obs.time_us - raised[1] < self.window_us:
            return []
        self._raised[obs.actor] = (level, obs.time_us)
        seconds = self.window_us // _US
        message = (
            f"{count} refused calls within {seconds} s (threshold {self.threshold}); "
            f"latest: {obs.kind_name} refused with {obs.reason_name or 'no reason'}"
        )
        return [_finding(self.name, level, AlertCategory.PROCESS, obs, obs.actor, message)]

    def expire(self, now_us: int) -> None:
        cutoff = now_us - self.window_us
        for actor in [a for a, t in self._times.items() if not t or t[-1] <= cutoff]:
            del self._times[actor]
        for actor in [a for a, r in self._raised.items() if r[1] <= cutoff]:
            del self._raised[actor]


class BulkAccess:
    """RISK, RED: one consumer touched more than ``bulk_subjects_per_window`` distinct subjects
    within the window (successful checks, requests, prefills and access-history reads).

    The subject refs (keyed hashes) stay in memory for the window only; the alert counts them.
    Raised at most once per window and consumer.
    """

    name = "bulk-access"

    def __init__(self, config: SupervisionConfig) -> None:
        self.threshold = config.bulk_subjects_per_window
        self.window_us = config.bulk_window_seconds * _US
        # Per consumer: subject ref -> last time seen, oldest first.
        self._seen: dict[str, OrderedDict[bytes, int]] = {}
        self._raised: dict[str, int] = {}

    def observe(self, obs: Observation) -> list[Finding]:
        if obs.kind not in ACCESS_KINDS or obs.outcome != ledger_pb2.OK or not obs.subject_ref:
            return []
        seen = self._seen.setdefault(obs.actor, OrderedDict())
        seen.pop(obs.subject_ref, None)
        seen[obs.subject_ref] = obs.time_us
        cutoff = obs.time_us - self.window_us
        while seen:
            oldest = next(iter(seen.values()))
            if oldest > cutoff:
                break
            seen.popitem(last=False)
        count = len(seen)
        if count <= self.threshold:
            return []
        raised = self._raised.get(obs.actor)
        if raised is not None and obs.time_us - raised < self.window_us:
            return []
        self._raised[obs.actor] = obs.time_us
        message = (
            f"{count} distinct subjects accessed within {self.window_us // _US} s "
            f"(threshold {self.threshold})"
        )
        return [_finding(self.name, AlertLevel.RED, AlertCategory.RISK, obs, obs.actor, message)]

    def expire(self, now_us: int) -> None:
        cutoff = now_us - self.window_us
        for actor in [
            a for a, s in self._seen.items() if not s or next(reversed(s.values())) <= cutoff
        ]:
            del self._seen[actor]
        for actor in [a for a, t in self._raised.items() if t <= cutoff]:
            del self._raised[actor]


def default_rules(config: SupervisionConfig) -> list[Rule]:
    """Every entry-driven rule, configured."""
    return [
        ProviderLateness(config),
        ContentMismatch(),
        OffHoursConditional(config),
        RepeatedRefusals(config),
        BulkAccess(config),
    ]
