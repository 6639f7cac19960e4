"""Submit: material collected from a person, stored once.

- the same content as the current version: ALREADY_ON_FILE with the existing reference, nothing
  stored, counted as a re-collection avoided (entry attribute ``submit=ALREADY_ON_FILE``);
- nothing on file: stored at the owner's adapter (Provider.Store) and indexed (``STORED``);
- changed content from the owner: a new version superseding the old (``NEW_VERSION``);
- changed content from another department: a correction proposal to the owner, never an
  overwrite (``CORRECTION_PROPOSED``).

Which of these happened tells the caller whether material was on file for the subject, so a
person-facing member (a form tool, ``exchange.policy.roles.PERSON_FACING``, whatever else it
holds) submits only for a person who authenticated to it: with their subject assertion, checked
by ``exchange.flows.person.require_person`` before anything on file is looked at, so a refusal is
the same whether or not anything is. There is no legal-basis way round it, unlike Check: what a
form tool submits was collected from the person at its counter, so the person is there. A
collector or an owner submitting on its own account needs no assertion (it may Check anyway);
an assertion, when sent, is always verified. The entry's ``submitted_for`` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
import weakref
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import IntegrityError

from exchange import errors
from exchange.catalog.model import MaterialType
from exchange.catalog.schema import canonical_fields
from exchange.clock import now_us
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.material import mismatch, open_record
from exchange.flows.person import require_person
from exchange.flows.record import record, with_receipt
from exchange.flows.settle import HeldStore, settle_after, settle_quietly
from exchange.ledger import Effect
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.policy.roles import person_facing
from exchange.routing.deadline import call_deadline
from exchange.routing.provider import MARGIN_SECONDS, forwarded_id
from exchange.store.materials import IndexedMaterial
from exchange.store.objections import ObjectionRecord
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

log = structlog.get_logger("exchange.submit")

SUBMIT_ROLES = (Role.COLLECTOR, Role.FORM_TOOL)
DAY_US = 86_400 * 1_000_000

# Submissions for one (material type, subject) are decided one at a time, so two concurrent
# submissions give one STORED and then an ALREADY_ON_FILE, a NEW_VERSION or a correction
# proposal: never two version 1s, whose stores at the owner's adapter would overwrite each other.
# In this process an asyncio lock orders them; on PostgreSQL, where several hub processes may
# share the database, a session advisory lock per (type, subject) orders the processes too.
# (Hub processes sharing one SQLite file are not ordered: the index's unique version then makes
# the later one fail with UNAVAILABLE, and its retry is answered from the index.)
_locks: weakref.WeakValueDictionary[tuple[int, str, bytes], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def submission_lock_key(material_type: str, subject_ref: bytes) -> int:
    """The PostgreSQL advisory lock key of submissions for one material type and subject."""
    digest = hashlib.sha256(f"submit\0{material_type}\0".encode() + subject_ref).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def _decided_alone(hub: Hub, material_type: str, subject_ref: bytes) -> AsyncIterator[None]:
    """Hold the submission lock of (``material_type``, ``subject_ref``) for the block.

    The lock's holder stores at the owner's adapter within the provider timeout, so a caller
    waits at most twice that plus a second (and never past its own deadline) before it is
    refused with UNAVAILABLE, to retry.
    """
    key = (id(hub), material_type, subject_ref)
    lock = _locks.get(key)
    if lock is None:
        lock = _locks[key] = asyncio.Lock()
    wait = 2 * hub.providers.timeout_seconds + 1
    remaining = call_deadline()
    if remaining is not None:
        wait = min(wait, max(remaining - min(MARGIN_SECONDS, remaining / 2), 0.001))
    async with contextlib.AsyncExitStack() as held:
        try:
            async with asyncio.timeout(wait):
                await held.enter_async_context(lock)
                if hub.subject_locks is not None:
                    shared = hub.subject_locks.advisory_lock(
                        submission_lock_key(material_type, subject_ref)
                    )
                    await held.enter_async_context(shared)
        except TimeoutError:
            raise errors.Unavailable(
                common_pb2.INTERNAL_ERROR,
                f"another submission of this {material_type!r} for this subject is still being "
                "decided (or the database is slow to answer); retry",
            ) from None
        yield


async def submit(
    hub: Hub, caller: Caller, body: exchange_pb2.SubmitRequest
) -> exchange_pb2.SubmitResponse:
    """Submit a material; see the module docstring for the four outcomes.

    Raises PermissionDenied (ROLE_REQUIRED), the refusals of ``require_person`` (for a form
    tool, or whenever an assertion is sent), InvalidArgument (SCHEMA_VIOLATION or a missing
    subject), NotFound (UNKNOWN_MATERIAL_TYPE), Unavailable / DeadlineExceeded (the owner's
    adapter is down or slow: nothing stored), FailedPrecondition (CONTENT_MISMATCH: the adapter
    confirmed other content than submitted).
    """
    subject_ref = hub.content_keys.subject_ref(body.subject_id) if body.subject_id else b""
    with lookups.facts(
        EntryFacts(material_type=body.material_type[:128], subject_ref=subject_ref)
    ) as known:
        lookups.require_text(body.subject_id, "subject_id", 128)
        material_type = await lookups.material_type(hub, body.material_type)
        known.counterparty = material_type.owner
        subject_id = lookups.subject_id(body.subject_id, material_type.subject_id_scheme)
        is_owner = caller.department_id == material_type.owner
        if not is_owner:
            lookups.require_role(caller, *SUBMIT_ROLES, what="Submit")
        # Before anything on file is looked at (see the module docstring).
        if body.HasField("assertion") or person_facing(caller):
            await require_person(hub, caller, body.assertion, body.subject_id, known)
            known.attributes["submitted_for"] = "person"
        else:
            known.attributes["submitted_for"] = "department"
        fields = canonical_fields(material_type, body.fields, complete=True)
        content_hash = hub.content_keys.content_hash(material_type.id, subject_id, fields)
        known.content_hash = content_hash
        async with _decided_alone(hub, material_type.id, subject_ref):
            current = await lookups.indexed(hub, material_type.id, subject_ref)
            effect: Effect | None = None  # what the entry commits with it (nothing on file)
            held: HeldStore | None = None  # the Store the owner's adapter holds pending
            if current is not None and current.content_hash == content_hash:
                outcome = exchange_pb2.ALREADY_ON_FILE
                reference, version, objection_id = current.reference, current.version, ""
            elif current is not None and not is_owner:
                outcome = exchange_pb2.CORRECTION_PROPOSED
                reference, version = current.reference, current.version
                proposal = _proposal(hub, caller, material_type, current, fields)
                objection_id = proposal.id
                effect = partial(hub.index.add_proposal, proposal=proposal)
            else:
                outcome = exchange_pb2.STORED if current is None else exchange_pb2.NEW_VERSION
                version = 1 if current is None else current.version + 1
                reference = hub.content_keys.reference(material_type.id, subject_ref, version)
                objection_id = ""
                known.reference, known.version = reference, version
                # No entry, no access, at the holder too: nothing is stored while the hub knows
                # its ledger cannot commit.
                await hub.ledger.ensure_writable()
                held = await _store(
                    hub,
                    caller,
                    material_type,
                    subject_id,
                    subject_ref,
                    fields,
                    content_hash,
                    reference,
                    version,
                )
                indexed = IndexedMaterial(
                    reference=reference,
                    material_type=material_type.id,
                    subject_ref=subject_ref,
                    version=version,
                    content_hash=content_hash,
                    holder=material_type.owner,
                    submitted_by=caller.department_id,
                    field_hashes=hub.content_keys.field_hashes(
                        material_type.id, subject_id, fields
                    ),
                )
                effect = partial(
                    hub.index.put_version,
                    material=indexed,
                    superseded=current.reference if current else None,
                    now_us=now_us(),
                )
            name = exchange_pb2.SubmitOutcome.Name(outcome)
            # The entry names the version on file too when nothing is stored (a refusal after
            # this point names only what the call stored).
            said = known.copy(submit=name)
            said.reference, said.version = reference, version
            if objection_id:
                said.attributes["objection_id"] = objection_id
            answer = exchange_pb2.SubmitResponse(
                outcome=outcome,
                reference=reference,
                version=version,
                content_hash=content_hash,
                objection_id=objection_id,
            )
            entry = record(
                hub.ledger,
                caller,
                ledger_pb2.SUBMIT,
                effect=effect,
                answer=with_receipt(answer),
                facts=said,
            )
            try:
                if held is None:
                    receipt = await entry
                else:
                    # The pending Store is committed once the entry is, aborted if it is not.
                    receipt = await settle_after(hub, held, asyncio.ensure_future(entry))
            except IntegrityError as exc:
                # Another hub process on the same SQLite file indexed this version first (see
                # _decided_alone); the caller's retry gets the material on file.
                raise errors.Unavailable(
                    common_pb2.INTERNAL_ERROR,
                    "the same material was submitted concurrently through another hub; retry",
                ) from exc
    return with_receipt(answer)(receipt)


async def _store(
    hub: Hub,
    caller: Caller,
    material_type: MaterialType,
    subject_id: str,
    subject_ref: bytes,
    fields: dict[str, str],
    content_hash: bytes,
    reference: str,
    version: int,
) -> HeldStore | None:
    """Store at the owner's adapter, pending, and check its signed confirmation; the pending
    Store to settle, or None when an adapter of provider contract 1 stored at once."""
    owner = await lookups.holder(hub, material_type.owner)
    request_id = forwarded_id(caller.request_id, "store")
    try:
        answer = await hub.providers.store(
            owner.provider_endpoint,
            request_id=request_id,
            material_type=material_type.id,
            subject_id=subject_id,
            fields=fields,
            reference=reference,
            version=version,
            submitted_by=caller.department_id,
        )
    except errors.InvalidArgument as exc:
        if exc.reason != common_pb2.UNKNOWN_FIELD:
            raise
        # An adapter of provider contract 1 that refuses what it does not know refuses the
        # pending flag: nothing was stored (docs/adapters.md, "Provider contract versions").
        raise errors.FailedPrecondition(
            common_pb2.PROVIDER_UNAVAILABLE,
            f"the owner's adapter ({material_type.owner!r}) predates provider contract 2 "
            "(two-phase Store) and must be upgraded before it can store submissions",
        ) from exc
    stored = open_record(
        answer.material,
        owner,
        request_id=request_id,
        material_type=material_type.id,
        subject_id=subject_id,
    )
    held = None
    if answer.pending:
        held = HeldStore(
            owner.provider_endpoint,
            request_id,
            caller.request_id,
            material_type.id,
            subject_ref,
            reference,
            content_hash,
        )
    else:
        log.warning("store_not_two_phase", holder=material_type.owner)
    confirmed = canonical_fields(material_type, stored.fields, complete=False)
    if hub.content_keys.content_hash(material_type.id, subject_id, confirmed) != content_hash:
        if held is not None:
            await settle_quietly(hub, held, commit=False)
        raise mismatch("the holder confirmed other content than was submitted")
    return held


def _proposal(
    hub: Hub,
    caller: Caller,
    material_type: MaterialType,
    current: IndexedMaterial,
    fields: dict[str, str],
) -> ObjectionRecord:
    """A correction proposal to the owner (filed with the submission's entry)."""
    proposal = ObjectionRecord(
        id="o-" + uuid.uuid4().hex[:24],
        material_type=material_type.id,
        reference=current.reference,
        subject_ref=current.subject_ref,
        filed_by=caller.department_id,
        owner=material_type.owner,
        reason="submitted content differs from the material on file",
        proposed_fields=fields,
        filed_us=now_us(),
        deadline_us=now_us() + hub.config.supervision.objection_deadline_days * DAY_US,
    )
    return proposal
