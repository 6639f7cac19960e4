"""Prometheus metrics of the hub (prometheus-client), documented in docs/operations.md.

Events are counted where they happen, by one call each from the pipeline (a call ends), the
holder router (a holder answers), the ledger writer (a batch commits) and supervision (an alert
is raised). These event metrics are process-wide, as prometheus-client's are; what is read from
a running hub at scrape time (ledger size, checkpoint age, supervision lag, cache hits) comes
from ``HubCollector``, registered by the metrics listener of that hub (exchange.observability.
http). A process serving several hubs (tests) therefore sums their events.

No label or value holds personal data: labels are RPC methods, outcomes, the contract's reason
names, holders' endpoints (host:port, as registered), alert levels and categories, cache names,
witnesses' names (as their keys name them).
The hot path pays a dictionary lookup and a lock-protected add per metric (label children are
cached here rather than looked up through ``labels()`` on every call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exchange.store.cache import CACHES

if TYPE_CHECKING:
    from exchange.hub import Hub

# Buckets in seconds: a hub call is ~1–20 ms at 32 concurrent callers; a holder's answer or a
# PostgreSQL commit can take 100 ms and more, a timeout seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

CALLS = Counter(
    "exchange_calls",
    "Calls the hub answered, by RPC method, outcome (ok, refused, failed, cancelled, internal) "
    "and the contract's reason (empty when ok).",
    ("method", "outcome", "reason"),
    registry=None,
)
CALL_SECONDS = Histogram(
    "exchange_call_seconds",
    "Time from a call's arrival to its answer at the hub, by RPC method.",
    ("method",),
    buckets=LATENCY_BUCKETS,
    registry=None,
)
HOLDER_CALLS = Counter(
    "exchange_holder_calls",
    "Calls from the hub to holders' adapters, by holder endpoint, method (Fetch, Store) and "
    "outcome (ok, refused, unavailable, timeout).",
    ("holder", "method", "outcome"),
    registry=None,
)
HOLDER_SECONDS = Histogram(
    "exchange_holder_call_seconds",
    "Time a holder's adapter took to answer the hub, by holder endpoint and method.",
    ("holder", "method"),
    buckets=LATENCY_BUCKETS,
    registry=None,
)
BATCH_ENTRIES = Histogram(
    "exchange_ledger_batch_entries",
    "Entries appended per ledger commit (group commit batch size).",
    buckets=BATCH_BUCKETS,
    registry=None,
)
COMMIT_SECONDS = Histogram(
    "exchange_ledger_commit_seconds",
    "Time of one ledger batch transaction, from its start to its commit.",
    buckets=LATENCY_BUCKETS,
    registry=None,
)
HEAD_LOCK_WAIT_SECONDS = Histogram(
    "exchange_ledger_head_lock_wait_seconds",
    "Time a ledger batch waited to lock the log's head row (other hubs' batches hold it).",
    buckets=LATENCY_BUCKETS,
    registry=None,
)
COMMIT_FAILURES = Counter(
    "exchange_ledger_commit_failures",
    "Ledger batches that failed to commit (their calls answered UNAVAILABLE).",
    registry=None,
)
ANSWERS_AFTER_COMMIT = Counter(
    "exchange_answers_after_commit",
    "Answers stored after their call's entry committed, not in its transaction (an answer "
    "builder failed on the ledger's writer thread; stays 0): a hub stopped in between leaves "
    "REQUEST_ANSWER_LOST.",
    registry=None,
)
ALERTS = Counter(
    "exchange_alerts",
    "Supervision alerts raised, by level (YELLOW, RED) and category.",
    ("level", "category"),
    registry=None,
)
ALERT_DELIVERIES = Counter(
    "exchange_alert_deliveries",
    "Alert deliveries to configured sinks, by sink (webhook, syslog) and outcome (delivered, "
    "retried: the attempt failed and the alert waits for its next one).",
    ("sink", "outcome"),
    registry=None,
)

WITNESS_SUBMISSIONS = Counter(
    "exchange_witness_submissions",
    "Checkpoints submitted to witnesses, by witness name and outcome (cosigned, refused, "
    "unreachable, invalid).",
    ("witness", "outcome"),
    registry=None,
)
WITNESS_SECONDS = Histogram(
    "exchange_witness_submission_seconds",
    "Time of one add-checkpoint round trip to a witness, by witness name.",
    ("witness",),
    buckets=LATENCY_BUCKETS,
    registry=None,
)

EVENT_METRICS: tuple[Collector, ...] = (
    CALLS,
    CALL_SECONDS,
    HOLDER_CALLS,
    HOLDER_SECONDS,
    BATCH_ENTRIES,
    COMMIT_SECONDS,
    HEAD_LOCK_WAIT_SECONDS,
    COMMIT_FAILURES,
    ANSWERS_AFTER_COMMIT,
    ALERTS,
    ALERT_DELIVERIES,
    WITNESS_SUBMISSIONS,
    WITNESS_SECONDS,
)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# Reasons that mean the exchange could not do the call right now (a retry may succeed), as
# opposed to a refusal: counted as outcome "failed".
FAILED_REASONS = frozenset({"PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT", "LEDGER_UNAVAILABLE"})


def call_outcome(outcome: str) -> str:
    """The ``outcome`` label of a call that ended with the pipeline's outcome string ("OK",
    "CANCELLED", "INTERNAL_ERROR" or the refusal's reason name)."""
    if outcome == "OK":
        return "ok"
    if outcome == "CANCELLED":
        return "cancelled"
    if outcome == "INTERNAL_ERROR":
        return "internal"
    return "failed" if outcome in FAILED_REASONS else "refused"


def observe_call(method: str, outcome: str, seconds: float) -> None:
    """Count one call the hub answered (``outcome``: the pipeline's "OK", "CANCELLED",
    "INTERNAL_ERROR" or the refusal's reason name) and its latency."""
    label = call_outcome(outcome)
    reason = outcome if label in ("refused", "failed") else ""
    _child(CALLS, method, label, reason).inc()
    _child(CALL_SECONDS, method).observe(seconds)


def observe_holder(holder: str, method: str, outcome: str, seconds: float) -> None:
    """Count one call to a holder's adapter (``holder``: its endpoint) and its latency."""
    _child(HOLDER_CALLS, holder, method, outcome).inc()
    _child(HOLDER_SECONDS, holder, method).observe(seconds)


def observe_commit(entries: int, seconds: float, head_lock_wait: float) -> None:
    """Count one committed ledger batch."""
    BATCH_ENTRIES.observe(entries)
    COMMIT_SECONDS.observe(seconds)
    HEAD_LOCK_WAIT_SECONDS.observe(head_lock_wait)


def observe_alert(level: str, category: str) -> None:
    """Count one raised alert."""
    _child(ALERTS, level, category).inc()


def observe_witness(witness: str, outcome: str) -> None:
    """Count one checkpoint submission to the witness named ``witness``."""
    _child(WITNESS_SUBMISSIONS, witness, outcome).inc()


def observe_witness_seconds(witness: str, seconds: float) -> None:
    """Record one add-checkpoint round trip to the witness named ``witness``."""
    _child(WITNESS_SECONDS, witness).observe(seconds)


# ---------------------------------------------------------------- read at scrape time


class HubCollector(Collector):
    """Gauges read from one running hub when scraped: ledger size, checkpoint age and the
    entries it does not cover yet, supervision lag, cache hits and misses, and each
    configured witness's cosigning state."""

    def __init__(self, hub: Hub, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ledger = self.hub.ledger
        size = ledger.known_size
        checkpoint_size, checkpoint_at = ledger.stored_checkpoint
        yield _gauge("exchange_ledger_entries", "Entries in the ledger (as this hub knows).", size)
        yield _gauge(
            "exchange_checkpoint_age_seconds",
            "Seconds since this hub stored its latest checkpoint.",
            max(0.0, self.clock() - checkpoint_at),
        )
        yield _gauge(
            "exchange_checkpoint_uncovered_entries",
            "Entries appended after the latest stored checkpoint.",
            max(0, size - checkpoint_size),
        )
        yield _gauge(
            "exchange_supervision_lag_entries",
            "Ledger entries supervision has not observed yet.",
            max(0, size - self.hub.supervision.position),
        )
        hits = GaugeMetricFamily(
            "exchange_cache_lookups",
            "Lookups in the hub's caches since start, by cache and result (hit, miss).",
            labels=("cache", "result"),
        )
        counts: dict[str, list[int]] = {}
        for cache in list(CACHES):
            total = counts.setdefault(cache.name, [0, 0])
            total[0] += cache.hits
            total[1] += cache.misses
        for name, (hit, miss) in sorted(counts.items()):
            hits.add_metric((name, "hit"), hit)
            hits.add_metric((name, "miss"), miss)
        yield hits
        yield from self._witnesses(size)

    def _witnesses(self, size: int) -> Iterator[GaugeMetricFamily]:
        """Per configured witness (by its name): the size it last cosigned, the entries it has
        not cosigned, the age of its latest cosignature (none before the first) and the
        submissions that failed since."""
        clients = self.hub.witnessing.clients
        if not clients:
            return
        cosigned = GaugeMetricFamily(
            "exchange_witness_cosigned_size",
            "Size of the latest checkpoint each witness cosigned (0: none since start).",
            labels=("witness",),
        )
        uncosigned = GaugeMetricFamily(
            "exchange_witness_uncosigned_entries",
            "Ledger entries after the latest checkpoint each witness cosigned.",
            labels=("witness",),
        )
        age = GaugeMetricFamily(
            "exchange_witness_cosignature_age_seconds",
            "Seconds since each witness's latest cosignature arrived (absent before the first).",
            labels=("witness",),
        )
        failures = GaugeMetricFamily(
            "exchange_witness_consecutive_failures",
            "Submissions to each witness that failed since its latest cosignature.",
            labels=("witness",),
        )
        now = self.clock()
        for client in clients:
            cosigned.add_metric((client.name,), client.cosigned_size)
            uncosigned.add_metric((client.name,), max(0, size - client.cosigned_size))
            if client.cosigned_at is not None:
                age.add_metric((client.name,), max(0.0, now - client.cosigned_at))
            failures.add_metric((client.name,), client.failures)
        yield from (cosigned, uncosigned, age, failures)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry_for(hub: Hub, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry holding the event metrics and ``hub``'s gauges, for one metrics listener."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in (*EVENT_METRICS, HubCollector(hub), *extra):
        registry.register(metric)
    return registry
