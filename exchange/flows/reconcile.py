"""``exchange reconcile``: a holder's adapter, the hub's index and the ledger, compared.

For every material type a department owns, the hub asks its adapter (Provider.Inventory,
contract 2) what it holds and which Stores it holds pending, reads the index's current versions
held by the department, and the ledger's entries of each subject concerned. Differences:

- ``PENDING_WITH_ENTRY``: a pending Store whose entry committed (its reference is indexed with
  its content) -> committed at the adapter (Settle commit);
- ``PENDING_WITHOUT_ENTRY``: a pending Store with no committed entry -> aborted (Settle abort);
- ``ENTRY_WITHOUT_INDEX_ROW``: material the holder holds, with an OK entry of that content, but
  no current index row -> the index row is added as the entry says;
- ``HELD_WITHOUT_ENTRY``: material the holder holds that no entry records (stored around the
  exchange) -> indexed as the holder's own (a new version when the index holds other content),
  as PublishHoldings would;
- ``INDEXED_NOT_HELD``: a current index row whose material the holder does not hold -> reported
  only (the hub keeps no content to restore it);
- ``HELD_NOT_CONFORMING``: held material that does not fit the type's schema -> reported only.

Every repair is one RECONCILIATION entry (actor: the operator, whose signed
ReconciliationRequest is stored beside it), attributes ``difference`` and
``repair``, with the subject's keyed ref, type, content hash, reference and version; an index
repair is written in the entry's transaction. ``dry_run`` reports and changes nothing. No
subject id or value leaves this module: differences name keyed refs and references.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from exchange import errors
from exchange.catalog.model import MaterialType
from exchange.catalog.schema import canonical_fields
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.record import record
from exchange.flows.settle import HeldStore, indexed, settle
from exchange.ledger import Effect
from exchange.policy.identity import Claim
from exchange.routing.provider import forwarded_id
from exchange.store.materials import IndexedMaterial
from exchange.v1 import common_pb2, ledger_pb2, provider_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

# Entries that put a version on the index (exchange.flows.submit, holdings, this module).
INDEXING_KINDS = frozenset({ledger_pb2.SUBMIT, ledger_pb2.RECONCILIATION})


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference found, and what was (or, in a dry run, would be) done about it."""

    kind: str
    material_type: str
    subject_ref: bytes
    reference: str
    version: int
    repair: str  # "" when nothing can be repaired
    repaired: bool = False
    sequence: int | None = None  # the repair's ledger entry
    error: str = ""  # why a repair failed


@dataclass(slots=True)
class Report:
    """What reconcile compared and found."""

    department: str
    material_types: list[str] = field(default_factory=list)
    held: int = 0
    pending: int = 0
    indexed: int = 0
    differences: list[Difference] = field(default_factory=list)


async def reconcile(
    hub: Hub, department_id: str, operator_key: SigningKey, *, dry_run: bool = False
) -> Report:
    """Compare and repair one department's holdings; see the module docstring. Each repair's
    entry carries a ReconciliationRequest signed with ``operator_key`` (the operator's key:
    every OK entry vouches for a signed request of its actor).

    Raises Unavailable (PROVIDER_UNAVAILABLE: the department has no adapter registered, or it
    cannot be reached or predates Inventory), NotFound (UNKNOWN_DEPARTMENT).
    """
    holder = await lookups.department(hub, department_id)
    if holder is None:
        raise errors.NotFound(common_pb2.UNKNOWN_DEPARTMENT, f"no department {department_id!r}")
    holder = await lookups.holder(hub, department_id)
    types = [t for t in await asyncio.to_thread(hub.catalog.material_types) if t.owner == holder.id]
    report = Report(holder.id)
    run = _Run(hub, holder.id, holder.provider_endpoint, operator_key, dry_run)
    for material_type in sorted(types, key=lambda t: t.id):
        report.material_types.append(material_type.id)
        await run.material_type(material_type, report)
    return report


class _Run:
    def __init__(
        self, hub: Hub, holder: str, endpoint: str, operator_key: SigningKey, dry_run: bool
    ) -> None:
        self.hub = hub
        self.holder = holder
        self.endpoint = endpoint
        self.operator_key = operator_key
        self.dry_run = dry_run
        self.run_id = f"reconcile-{uuid.uuid4().hex}"
        self.repairs = 0

    async def material_type(self, material_type: MaterialType, report: Report) -> None:
        hub = self.hub
        inventory: provider_pb2.InventoryResponse = await hub.providers.inventory(
            self.endpoint,
            request_id=forwarded_id(self.run_id, "inventory"),
            material_type=material_type.id,
        )
        rows = await asyncio.to_thread(hub.index.currents_held_by, material_type.id, self.holder)
        report.held += len(inventory.held)
        report.pending += len(inventory.pending)
        report.indexed += len(rows)
        on_index = {row.subject_ref: row for row in rows}
        held_refs: set[bytes] = set()
        for item in inventory.pending:
            settled = await self.pending(material_type, item)
            report.differences.append(settled)
            if settled.kind == "PENDING_WITH_ENTRY" and (self.dry_run or settled.repaired):
                held_refs.add(settled.subject_ref)  # held now (or once the repair is made)
        for item in inventory.held:
            subject_ref = hub.content_keys.subject_ref(item.subject_id)
            held_refs.add(subject_ref)
            found = await self.held(material_type, item, subject_ref, on_index.get(subject_ref))
            if found is not None:
                report.differences.append(found)
        for row in rows:
            if row.subject_ref not in held_refs:
                report.differences.append(
                    Difference(
                        "INDEXED_NOT_HELD",
                        material_type.id,
                        row.subject_ref,
                        row.reference,
                        row.version,
                        "",
                    )
                )

    async def pending(
        self, material_type: MaterialType, item: provider_pb2.InventoryItem
    ) -> Difference:
        hub = self.hub
        subject_ref = hub.content_keys.subject_ref(item.subject_id)
        try:
            fields = canonical_fields(material_type, item.fields, complete=False)
            content_hash = hub.content_keys.content_hash(material_type.id, item.subject_id, fields)
        except errors.InvalidArgument:
            content_hash = b""
        store = HeldStore(
            self.endpoint,
            item.store_request_id,
            self.run_id,
            material_type.id,
            subject_ref,
            item.reference,
            content_hash,
        )
        commit = bool(content_hash) and await indexed(hub, store)
        kind = "PENDING_WITH_ENTRY" if commit else "PENDING_WITHOUT_ENTRY"
        difference = Difference(
            kind,
            material_type.id,
            subject_ref,
            item.reference,
            item.version,
            "committed at the holder" if commit else "aborted at the holder",
        )
        if self.dry_run:
            return difference
        try:
            await settle(hub, store, commit=commit)
        except errors.ExchangeError as exc:
            return _failed(difference, exc)
        return await self.entry(difference, content_hash, None)

    async def held(
        self,
        material_type: MaterialType,
        item: provider_pb2.InventoryItem,
        subject_ref: bytes,
        current: IndexedMaterial | None,
    ) -> Difference | None:
        hub = self.hub
        keys = hub.content_keys
        try:
            fields = canonical_fields(material_type, item.fields, complete=True)
        except errors.InvalidArgument:
            return Difference(
                "HELD_NOT_CONFORMING",
                material_type.id,
                subject_ref,
                item.reference,
                item.version,
                "",
            )
        content_hash = keys.content_hash(material_type.id, item.subject_id, fields)
        if current is not None and current.content_hash == content_hash:
            return None
        entry = None
        if current is None:
            entry = await asyncio.to_thread(
                _last_indexing_entry, hub, material_type.id, subject_ref, content_hash
            )
        if entry is not None:
            kind, version, reference = "ENTRY_WITHOUT_INDEX_ROW", entry.version, entry.reference
            submitted_by = entry.actor
            repair = f"index row added as entry {entry.sequence} says"
        else:
            kind = "HELD_WITHOUT_ENTRY"
            version = 1 if current is None else current.version + 1
            reference = keys.reference(material_type.id, subject_ref, version)
            submitted_by = self.holder
            repair = "indexed as the holder's own material"
        difference = Difference(kind, material_type.id, subject_ref, reference, version, repair)
        if self.dry_run:
            return difference
        material = IndexedMaterial(
            reference=reference,
            material_type=material_type.id,
            subject_ref=subject_ref,
            version=version,
            content_hash=content_hash,
            holder=self.holder,
            submitted_by=submitted_by,
            field_hashes=keys.field_hashes(material_type.id, item.subject_id, fields),
        )
        effect = partial(
            hub.index.put_version,
            material=material,
            superseded=current.reference if current else None,
            now_us=now_us(),
        )
        return await self.entry(difference, content_hash, effect)

    async def entry(
        self, difference: Difference, content_hash: bytes, effect: Effect | None
    ) -> Difference:
        """Record the repair (with its index change); the difference as repaired, or failed."""
        self.repairs += 1
        operator = self.hub.config.hub_id
        body = ledger_pb2.ReconciliationRequest(
            header=common_pb2.RequestHeader(
                request_id=f"{self.run_id}-{self.repairs}",
                department_id=operator,
                issued_at=to_timestamp(now_us()),
            ),
            holder=self.holder,
            material_type=difference.material_type,
            reference=difference.reference,
            version=difference.version,
            difference=difference.kind,
            repair=difference.repair,
        )
        envelope = sign(
            body.SerializeToString(deterministic=True),
            body.DESCRIPTOR.full_name,
            self.operator_key,
        )
        who = Claim(operator, body.header.request_id, envelope.SerializeToString())
        try:
            receipt = await record(
                self.hub.ledger,
                who,
                ledger_pb2.RECONCILIATION,
                effect=effect,
                facts=EntryFacts(
                    subject_ref=difference.subject_ref,
                    material_type=difference.material_type,
                    content_hash=content_hash,
                    counterparty=self.holder,
                    reference=difference.reference,
                    version=difference.version,
                    attributes={"difference": difference.kind, "repair": difference.repair},
                ),
            )
        except errors.ExchangeError as exc:
            return _failed(difference, exc)
        except Exception as exc:  # an index change refused by the database (IntegrityError)
            return _failed(
                difference, errors.Unavailable(common_pb2.INTERNAL_ERROR, type(exc).__name__)
            )
        return _done(difference, receipt.sequence)


@dataclass(frozen=True, slots=True)
class _Indexing:
    sequence: int
    actor: str
    reference: str
    version: int


def _last_indexing_entry(
    hub: Hub, material_type: str, subject_ref: bytes, content_hash: bytes
) -> _Indexing | None:
    """The newest OK entry that indexed this content for the subject, if any (worker thread)."""
    found = None
    for stored in hub.ledger.entries_for_subject(subject_ref):
        entry = stored.decode()
        if (
            entry.kind in INDEXING_KINDS
            and entry.outcome == ledger_pb2.OK
            and entry.material_type == material_type
            and entry.content_hash == content_hash
            and entry.reference
        ):
            found = _Indexing(stored.sequence, entry.actor, entry.reference, entry.version)
    return found


def _done(difference: Difference, sequence: int) -> Difference:
    return replace(difference, repaired=True, sequence=sequence)


def _failed(difference: Difference, error: errors.ExchangeError) -> Difference:
    return replace(difference, error=f"{error.reason_name}: {error.message}")
