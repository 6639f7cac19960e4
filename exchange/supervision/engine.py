"""The supervision engine: follows the ledger as entries commit and keeps alerts and the burden
counters up to date, incrementally.

How it keeps its state, and why:

- **Windowed rule state is in memory** (refusals and subjects per consumer in the last
  window, off-hours alerts of the day). It is cheap to rebuild and too hot to write on every
  entry, so on start the engine replays only the window before its cursor: it finds the
  window's first entry by binary search over entry times (O(log n) reads) and replays from
  there, which is bounded by the traffic of one window, not by the size of the log.
- **Everything that must outlive a window is persisted** (``exchange.supervision.store``): the
  alerts, the burden counters (all-time counts cannot be rebuilt without a full rescan), the
  open objections (deadlines run for weeks) and a cursor, all written in one transaction per
  batch of entries. The cursor makes the effects of every entry stored exactly once across
  restarts and across several hub processes on one database.

Supervision runs once per database: with several hub processes on one PostgreSQL database,
only the one that leads (``exchange.store.leadership``: a session advisory lock) follows the
log; the others try to take the lead every ``LEAD_SECONDS`` and take over within that period
(warming from the stored cursor) once the leader is gone. A follower answers ListAlerts and
BurdenReport from what the leader stored. A leader that lost its session steps down; if it
processed an entry the new leader processes too, the cursor stored with every write makes the
second write store nothing.

Entries arrive through ``Ledger.subscribe`` (this process's commits, with the decoded entries,
so no read is needed). Any gap, the catch-up after a restart and entries committed by other hub
processes are read from the ledger by sequence. A periodic tick runs the deadline rules against
the clock, which is injectable (``clock``) so tests are deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence

import structlog
from sqlalchemy import Engine

from exchange.clock import now_us
from exchange.config import SupervisionConfig
from exchange.ledger import Ledger
from exchange.observability import metrics
from exchange.store.leadership import Leadership
from exchange.supervision.burden import counter_changes, usage_of
from exchange.supervision.model import AlertLevel, Finding, Observation
from exchange.supervision.objections import objection_change
from exchange.supervision.rules import Rule, default_rules
from exchange.supervision.store import Effects, SupervisionStore
from exchange.v1 import ledger_pb2

log = structlog.get_logger("exchange.supervision")

Committed = Sequence[tuple[int, ledger_pb2.LedgerEntry]]

READ_CHUNK = 1000
RETRY_MAX_SECONDS = 5.0
# Commits are gathered this long before they are observed and stored, so that under load the
# engine writes a few transactions a second, not one per ledger commit (each would compete
# with the ledger writer for the database). Alerts are raised that much later.
COALESCE_SECONDS = 0.05
# How often a follower tries to take the lead, and a leader checks it still holds it.
LEAD_SECONDS = 2.0
# pg_try_advisory_lock key of supervision's leader: "exsuperv" as a big-endian int64.
LEADER_LOCK = int.from_bytes(b"exsuperv", "big") & 0x7FFF_FFFF_FFFF_FFFF


class Supervisor:
    """Runs the supervision rules and the burden counters over the committed entry stream."""

    def __init__(
        self,
        ledger: Ledger,
        engine: Engine,
        config: SupervisionConfig,
        *,
        clock: Callable[[], int] = now_us,
        rules: Sequence[Rule] | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.ledger = ledger
        self.leadership = leadership
        self.config = config
        self.store = SupervisionStore(engine)
        self.clock = clock
        self.rules: list[Rule] = list(default_rules(config) if rules is None else rules)
        self._default_rules = rules is None
        self._led = False
        self._next = 0  # the next sequence to observe
        self._target = 0  # the log size this process knows of
        self._pending: deque[tuple[int, ledger_pb2.LedgerEntry]] = deque()
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._lead_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- life cycle

    @property
    def leading(self) -> bool:
        """Whether this process runs supervision for the database (see the module)."""
        return bool(self._tasks)

    async def start(self) -> None:
        """Warm the windowed rules, subscribe to commits, catch up and start ticking; or, if
        another hub process leads supervision for the database, follow it (see the module).

        Call after the ledger has started. Raises sqlalchemy errors if the database cannot be
        read (the hub then does not start).
        """
        if self._tasks or self._lead_task is not None:
            return
        if self.leadership is None or await self.leadership.try_lead():
            await self._lead()
        else:
            log.info("supervision_following")
        self._lead_task = asyncio.create_task(self._keep_lead(), name="supervision-lead")

    async def _keep_lead(self) -> None:
        """Take the lead when it is free; step down when this process's lead is lost."""
        if self.leadership is None:
            return
        while True:
            await asyncio.sleep(LEAD_SECONDS)
            try:
                if self._tasks and not await self.leadership.still_leading():
                    await self._stop_tasks()
                    log.warning("supervision_stepped_down")
                elif not self._tasks and await self.leadership.try_lead():
                    await self._lead()
            except Exception as exc:  # the next period tries again
                log.error("supervision_lead_failed", error=type(exc).__name__)

    async def _lead(self) -> None:
        if self._led and self._default_rules:
            # Leading again after stepping down: the windowed state is rebuilt from the cursor.
            self.rules = list(default_rules(self.config))
        self._led = True
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        await asyncio.to_thread(self.store.ensure_cursor)
        cursor = await asyncio.to_thread(self.store.cursor)
        await asyncio.to_thread(self._warm, cursor)
        self._next = cursor
        self._target = max(cursor, await asyncio.to_thread(self.ledger.size))
        self._unsubscribe = self.ledger.subscribe(self._on_commit)
        self._tasks = [
            asyncio.create_task(self._run(), name="supervision"),
            asyncio.create_task(self._tick_loop(), name="supervision-tick"),
        ]
        self._wake.set()
        log.info("supervision_started", cursor=cursor, size=self._target)

    async def close(self, timeout: float = 5.0) -> None:
        """Process what was announced (for up to ``timeout`` seconds), then stop and give up
        the lead. Entries left unprocessed are caught up at the next start."""
        if self._lead_task is not None:
            self._lead_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lead_task
            self._lead_task = None
        if self._tasks:
            try:
                await self.settle(timeout)
            except Exception as exc:  # database gone at shutdown: the next start catches up
                log.warning("supervision_close_unsettled", error=type(exc).__name__)
        await self._stop_tasks()
        if self.leadership is not None:
            await self.leadership.close()

    async def _stop_tasks(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._pending.clear()

    @property
    def position(self) -> int:
        """The number of entries observed (the next sequence to observe)."""
        return self._next

    async def settle(self, timeout: float = 2.0) -> bool:
        """Wait until every entry committed so far (by any hub process) has been processed.

        Returns False if that did not happen within ``timeout`` seconds (answers may then lag
        the log slightly), and at once in a process that does not lead supervision (its
        answers are what the leader stored, at most a moment behind the log).
        """
        loop = asyncio.get_running_loop()
        # The commit announcement may still be on its way to the loop (and other processes do
        # not announce at all): the database's head is the target.
        self._extend(await asyncio.to_thread(self.ledger.size))
        if self._next < self._target and self._wake is not None:
            self._wake.set()  # also retries a read that failed earlier
        deadline = loop.time() + timeout
        while self._next < self._target and self._tasks:
            progress = self._progress
            remaining = deadline - loop.time()
            if progress is None or remaining <= 0:
                return False
            try:
                await asyncio.wait_for(progress.wait(), remaining)
            except TimeoutError:
                return False
        return self._next >= self._target

    # ---------------------------------------------------------------- entry stream

    def _on_commit(self, committed: Committed) -> None:
        # Called on the event loop by the ledger after each commit: queue and wake, no work.
        if not committed:
            return
        self._pending.extend(committed)
        self._target = max(self._target, committed[-1][0] + 1)
        if self._wake is not None:
            self._wake.set()

    def _contiguous(self) -> list[tuple[int, ledger_pb2.LedgerEntry]]:
        """Announced entries that continue exactly at ``_next`` (empty on a gap)."""
        while self._pending and self._pending[0][0] < self._next:
            self._pending.popleft()
        taken: list[tuple[int, ledger_pb2.LedgerEntry]] = []
        while self._pending and self._pending[0][0] == self._next + len(taken):
            taken.append(self._pending.popleft())
            if len(taken) >= READ_CHUNK:
                break
        return taken

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            while True:
                batch = self._contiguous()
                if not batch:
                    if self._next >= self._target:
                        break
                    try:
                        stored = await asyncio.to_thread(
                            self.ledger.entries, self._next, READ_CHUNK
                        )
                    except Exception as exc:  # database down: the next tick wakes us again
                        log.error("supervision_read_failed", error=type(exc).__name__)
                        break
                    if not stored:
                        break
                    batch = [(s.sequence, s.decode()) for s in stored]
                await self._process(batch)

    async def _process(self, batch: Committed) -> None:
        # Observing is pure in-memory work of a few microseconds per entry, so it runs on the
        # loop; only the (blocking) database write goes to a thread.
        effects = self.observe(batch)
        end = batch[-1][0] + 1
        delay = 0.1
        stored: list[Finding] = []
        # Most entries (reads, registrations) change nothing: skip the write, which on SQLite
        # would compete with the ledger writer for the database lock. The stored cursor then
        # lags over effect-free entries only, and replaying those after a restart stores
        # nothing.
        while effects:
            try:
                stored = await asyncio.to_thread(self.store.apply, effects, end)
                break
            except Exception as exc:  # database down: keep the effects and retry, in order
                log.error("supervision_store_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        self._next = end
        self._target = max(self._target, end)
        self._announce(stored)
        if self._progress is not None:
            self._progress.set()
            self._progress = asyncio.Event()

    def observe(self, batch: Committed) -> list[Effects]:
        """Run every rule and the burden tally over ``batch`` (in order) and return the effects
        to store. Advances the rules' in-memory state; stores nothing."""
        effects = []
        for sequence, entry in batch:
            obs = Observation.of(sequence, entry)
            findings = tuple(f for rule in self.rules for f in self._run_rule(rule, obs))
            effect = Effects(
                sequence=sequence,
                findings=findings,
                counters=tuple(counter_changes(obs)),
                usage=usage_of(obs),
                objection=objection_change(obs, self.config),
            )
            if not effect.empty:
                effects.append(effect)
        return effects

    @staticmethod
    def _run_rule(rule: Rule, obs: Observation) -> list[Finding]:
        try:
            return rule.observe(obs)
        except Exception:  # one faulty rule must not stop the others or the counters
            log.exception("supervision_rule_failed", rule=rule.name, sequence=obs.sequence)
            return []

    async def feed(self, batch: Committed) -> list[Finding]:
        """Observe and store ``batch`` now, as if it had just been committed (for tools and
        tests that hold entries rather than a running ledger). Returns the alerts stored."""
        effects = self.observe(batch)
        if not batch:
            return []
        end = max(self._next, batch[-1][0] + 1)
        stored = await asyncio.to_thread(self.store.apply, effects, end)
        self._next = end
        self._announce(stored)
        return stored

    @staticmethod
    def _announce(findings: Sequence[Finding]) -> None:
        for f in findings:
            metrics.observe_alert(f.level.name, f.category.name)
            # The log level follows the alert's: a RED alert is an error for log-based paging.
            # Its own level is ``alert_level``: a ``level`` key would be overwritten by the log
            # level (structlog's add_log_level), which made YELLOW and RED look alike.
            emit = log.error if f.level >= AlertLevel.RED else log.warning
            emit(
                "alert_raised",
                rule=f.rule,
                alert_level=f.level.name,
                category=f.category.value,
                department=f.department,
                material_type=f.material_type,
                sequence=f.sequence,
            )

    # ---------------------------------------------------------------- restart

    def _warm(self, cursor: int) -> None:
        """Replay the rules' window before ``cursor`` (discarding findings: they were stored
        when those entries were first processed)."""
        window = max((rule.window_us for rule in self.rules), default=0)
        if cursor == 0 or window == 0:
            return
        last = self.ledger.entries(cursor - 1, 1)
        if not last:
            return
        since = Observation.of(cursor - 1, last[0].decode()).time_us - window
        lo, hi = 0, cursor - 1  # first entry with time >= since: binary search on time
        while lo < hi:
            mid = (lo + hi) // 2
            probe = self.ledger.entries(mid, 1)
            if probe and Observation.of(mid, probe[0].decode()).time_us < since:
                lo = mid + 1
            else:
                hi = mid
        replayed = 0
        sequence = lo
        while sequence < cursor:
            stored = self.ledger.entries(sequence, min(READ_CHUNK, cursor - sequence))
            if not stored:
                break
            for s in stored:
                obs = Observation.of(s.sequence, s.decode())
                for rule in self.rules:
                    rule.observe(obs)
            sequence = stored[-1].sequence + 1
            replayed += len(stored)
        log.info("supervision_warmed", replayed=replayed, window_seconds=window // 1_000_000)

    # ---------------------------------------------------------------- the clock

    async def tick(self, now: int | None = None) -> list[Finding]:
        """Run the deadline rules at ``now`` (default: the clock) and forget expired window
        state. Also catches up with entries other hub processes committed. Returns the alerts
        raised."""
        at = self.clock() if now is None else now
        for rule in self.rules:
            rule.expire(at)
        raised = await asyncio.to_thread(self.store.tick, at)
        self._announce(raised)
        self._extend(await asyncio.to_thread(self.ledger.size))
        return raised

    def _extend(self, size: int) -> None:
        """Know the log to be ``size`` entries long; wake the reader if that is news."""
        if size > self._target:
            self._target = size
            if self._wake is not None:
                self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_seconds)
            try:
                await self.tick()
            except Exception as exc:  # a failed tick is retried at the next one
                log.error("supervision_tick_failed", error=type(exc).__name__)
