"""The hub's parts, built once from the configuration and shared by every servicer."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from exchange import logs, ownership
from exchange.catalog.repository import CatalogStore
from exchange.clock import now_us
from exchange.config import Config
from exchange.crypto.content import ContentKeys
from exchange.crypto.keys import KeyFileError, SigningKey
from exchange.crypto.keystore import Keystore, TlsIdentity
from exchange.crypto.sealing import AtRest
from exchange.ledger import Ledger, LedgerConfig
from exchange.ledger.export import KeyRecord as ExportKey
from exchange.ledger.feed import EntryFeed
from exchange.policy.grants import GrantStore
from exchange.policy.identity import Authenticator
from exchange.policy.operator import adopt_operator_key, resume_log_key_overlap
from exchange.policy.rates import RateLimiter
from exchange.routing.provider import ProviderRouter
from exchange.store.cache import TtlCache
from exchange.store.consents import Consents
from exchange.store.engines import hold_connections, open_engine
from exchange.store.leadership import Leadership
from exchange.store.log_keys import LogKeys
from exchange.store.loop_connections import AsyncConnections
from exchange.store.materials import MaterialIndex
from exchange.store.objections import Objections
from exchange.store.operator_keys import OperatorKeys
from exchange.store.registry import DepartmentRecord, Registry
from exchange.store.requests import Holder, RequestLog
from exchange.store.schema import upgrade
from exchange.supervision import Supervisor
from exchange.supervision.engine import LEADER_LOCK
from exchange.witness.submitter import WitnessEndpoint, Witnessing

log = structlog.get_logger("exchange.hub")

# The answers kept for retries hold personal data (sealed): they are purged often enough to
# outlive their need (twice the replay window) by at most a tenth of the window, and at least
# once a second.
PURGE_FRACTION = 10


def _moment(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def key_history(registry: Registry, operator_keys: OperatorKeys) -> list[ExportKey]:
    """Every signing key the ledger's entries may be signed with, for auditors' exports: the
    operator's keys and each department's, with their validity. Needs no secret."""
    history: list[ExportKey] = []
    for key in [*operator_keys.all(), *registry.key_history()]:
        history.append(
            ExportKey(
                actor=key.department_id,
                keyid=key.keyid,
                public_key=key.public_key,
                valid_from=_moment(key.valid_from_us),
                valid_until=None if key.valid_until_us is None else _moment(key.valid_until_us),
                revoked_at=None if key.revoked_us is None else _moment(key.revoked_us),
            )
        )
    return history


def _operator_public_key(keystore: Keystore) -> bytes | None:
    """The public half of the operator's key, if the keystore has one (only the public half:
    the hub never loads the operator's private key)."""
    try:
        return keystore.operator_public_key()
    except KeyFileError:
        return None


class Hub:
    """Everything a call needs: configuration, keys, database, ledger, repositories."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        hub_key: SigningKey,
        subject_key: bytes,
        provider_tls: TlsIdentity | None = None,
        write_behind: Engine | None = None,
        operator_key: bytes | None = None,
    ) -> None:
        logs.ensure_configured()  # embedded without the CLI: still no locals in tracebacks
        self.config = config
        self.engine = engine
        # Writes whose loss in a machine crash the ledger makes harmless go through an engine
        # that does not wait for the disk at commit (see open_engine: synchronous NORMAL);
        # the ledger's next commit, which waits, makes them durable too, as they come earlier
        # in the database's write-ahead log. A request-id claim is made before its call's
        # entry, whose transaction stores the call's answer, so an acknowledged call's claim
        # and answer are always durable; a claim lost with the machine committed nothing, and
        # supervision state lost with it is recomputed (supervision replays from its cursor,
        # kept in the same transaction).
        self.write_behind = write_behind or engine
        # Point reads of the embedded database are done on the event loop (lookups.indexed).
        self.reads_inline = engine.dialect.name == "sqlite"
        self.hub_key = hub_key
        self.subject_key = subject_key
        self.registry = Registry(engine)
        # The operator's public keys: the hub verifies operator calls, never signs them.
        self.operator_keys = OperatorKeys(engine, config.hub_id)
        self.log_keys = LogKeys(engine)
        self.operator_key = operator_key
        self._purger: asyncio.Task[None] | None = None
        # Registry reads for authentication, cached briefly: writes through this process
        # invalidate at once; another hub process sees a change (a revoked key, say) within
        # the cache's two seconds.
        self.departments: TtlCache[str, DepartmentRecord | None] = TtlCache(self.registry.get)
        # This process's claims on request ids name it (exchange.store.requests.Holder).
        self.requests = RequestLog(self.write_behind, Holder.of(config.hub_id, config.listen))
        self.ledger = Ledger(
            engine,
            hub_key,
            config.origin,
            LedgerConfig(
                checkpoint_every=config.checkpoint_every,
                checkpoint_interval_ms=config.checkpoint_interval_ms,
            ),
        )
        self.authenticator = Authenticator(
            hub_id=config.hub_id,
            operator_keys=self.operator_keys.all,
            lookup=self.departments.get,
            replay_window_us=config.replay_window_seconds * 1_000_000,
        )
        # The exchange flows (issue 5): catalog, grants, material index, rates, routing.
        self.content_keys = ContentKeys.derive(subject_key)
        self.catalog = CatalogStore(engine)
        self.grants = GrantStore(engine)
        # Personal data the hub keeps a while (objections' reasons and proposed values, answers
        # of calls without a disclosure) is sealed under a key the database never holds.
        self.at_rest = AtRest(subject_key)
        self.index = MaterialIndex(engine, at_rest=self.at_rest)
        # Submissions for one material and subject are decided one at a time by every hub
        # process of a PostgreSQL database (exchange.flows.submit): held on connections of
        # their own, as a submission holds its lock while the owner's adapter stores. A
        # submission bounds its own wait for a connection and the lock (twice the provider
        # timeout and a second, within its deadline), so the pool sets none of its own.
        self.subject_locks = (
            AsyncConnections(engine, "subject_lock", size=8, wait_seconds=None)
            if engine.dialect.name == "postgresql"
            else None
        )
        self.objections = Objections(engine, self.at_rest)
        # The person in the loop (issue 18): consents given through form tools.
        self.consents = Consents(engine)
        self.rates = RateLimiter()
        self.providers = ProviderRouter(
            config.hub_id,
            hub_key,
            None if config.insecure else provider_tls,
            config.provider_timeout_ms / 1000,
        )
        # Witnesses cosign the stored checkpoints (exchange.witness.submitter).
        self.witnessing = Witnessing(
            self.ledger,
            engine,
            WitnessEndpoint.parse_list(config.witnesses),
            config.checkpoint_interval_ms / 1000,
        )
        # Followers of the log (StreamEntries with follow) share one reader.
        self.feed = EntryFeed(self.ledger, config.limits.follow_buffer)
        # Supervision (issue 7): alerts and burden counters, fed by the ledger's commits.
        # Run by one hub process per database (the leader; exchange.supervision.engine).
        self.supervision = Supervisor(
            self.ledger,
            self.write_behind,
            config.supervision,
            leadership=Leadership(engine, "supervision", LEADER_LOCK),
        )

    @classmethod
    def open(cls, config: Config) -> Hub:
        """Load keys from the keystore, open the database and migrate it to the latest schema.

        Raises exchange.crypto.keys.KeyFileError for a missing or unsafe key file,
        exchange.store.schema.SchemaError for a schema newer than this code,
        exchange.ownership.ForeignDatabase for another hub's database.
        """
        keystore = Keystore(config.keys_dir)
        engine = open_engine(config.database_url)
        upgrade(engine)
        write_behind = open_engine(config.database_url, synchronous="NORMAL")
        hub = cls(
            config,
            engine,
            keystore.hub_signing_key(),
            keystore.subject_key(),
            None if config.insecure else keystore.operator_tls(),
            write_behind,
            _operator_public_key(keystore),
        )
        try:
            ownership.check(engine, hub.ledger.verifier_key, hub.subject_key)
        except BaseException:
            engine.dispose()
            write_behind.dispose()
            raise
        return hub

    def key_history(self) -> list[ExportKey]:
        """Every signing key the ledger's entries may be signed with (see ``key_history``)."""
        return key_history(self.registry, self.operator_keys)

    async def start(self) -> None:
        """Start the ledger writer, the request log's writer, supervision and the purge of
        request-id records that have aged out of the replay window."""
        for engine in {self.engine, self.write_behind}:
            await asyncio.to_thread(hold_connections, engine)
        await self.ledger.start()
        await adopt_operator_key(self.ledger, self.operator_keys, self.hub_key, self.operator_key)
        await resume_log_key_overlap(self.ledger, self.log_keys, Keystore(self.config.keys_dir))
        self.witnessing.start()
        # Claims this hub's earlier run left PENDING committed nothing: free them for retries.
        settled = await asyncio.to_thread(self.requests.settle_leftovers)
        if settled:
            log.info("request_claims_settled", count=settled)
        self.requests.start()
        await self.supervision.start()
        self._purger = asyncio.create_task(self._purge_requests(), name="request-purge")

    async def _purge_requests(self) -> None:
        # A request older than the replay window is refused as stale before its id is looked
        # up, so its record can go once it is twice that old.
        horizon_us = 2 * self.config.replay_window_seconds * 1_000_000
        interval = max(1.0, self.config.replay_window_seconds / PURGE_FRACTION)
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await asyncio.to_thread(self.requests.purge, now_us() - horizon_us)
            except SQLAlchemyError as exc:
                log.warning("request_purge_failed", error=type(exc).__name__)
                continue
            if purged:
                log.info("request_records_purged", count=purged)

    async def close(self) -> None:
        """Flush the ledger (final checkpoint) and release the database."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self.feed.close()
        await self.supervision.close()
        await self.requests.close()
        await self.ledger.close()
        held = self.ledger.lock_stats
        # The chain's scale limit as this process saw it (docs/operations.md, "Several hubs").
        log.info(
            "ledger_lock_held",
            batches=held.batches,
            entries=held.entries,
            ms_per_batch=round(held.per_batch_ms, 3),
            guards_ms=round(held.guards * 1000, 1),
            ceiling_entries_per_s=round(held.ceiling),
        )
        await self.witnessing.close()  # after the final checkpoint, which it submits
        await self.providers.close()
        self.index.close()
        await self.index.close_readers()
        if self.subject_locks is not None:
            await self.subject_locks.close()
        self.engine.dispose()
        if self.write_behind is not self.engine:
            self.write_behind.dispose()
