"""Audit flows: checkpoints, proofs and the entry stream, for auditor departments.

Reads of checkpoints and proofs are summarised per interval (``read_summary``): a watcher's
polls do not grow the ledger by an entry each. A stream is one entry per session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from exchange import errors
from exchange.errors import EntryFacts
from exchange.flows.read_summary import summary_of
from exchange.flows.record import record, with_receipt
from exchange.ledger import Checkpoint, StoredEntry
from exchange.policy.identity import Caller
from exchange.policy.roles import require_auditor
from exchange.v1 import audit_pb2, common_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

PAGE = 500


async def _latest(hub: Hub) -> Checkpoint:
    checkpoint = await asyncio.to_thread(hub.ledger.latest_checkpoint)
    if checkpoint is None:
        raise errors.FailedPrecondition(
            common_pb2.BEYOND_LOG, "no checkpoint has been made yet; retry in a moment"
        )
    return checkpoint


Answer = TypeVar(
    "Answer",
    audit_pb2.CheckpointResponse,
    audit_pb2.InclusionProofResponse,
    audit_pb2.ConsistencyProofResponse,
)


async def _read(hub: Hub, caller: Caller, response: Answer, what: str, **attributes: str) -> Answer:
    """Record a read of ``what`` if the read summary admits it (see read_summary) and return
    ``response``: with its entry's receipt, the answer a retry gets committed in the entry's
    transaction; without one for a read only counted (no entry: the pipeline stores the answer
    before it leaves)."""
    summary = summary_of(hub)
    admission = summary.admit(caller.department_id, what)
    if not admission.record:
        return response
    if admission.unrecorded:
        attributes["unrecorded_reads"] = str(admission.unrecorded)
    try:
        receipt = await record(
            hub.ledger,
            caller,
            ledger_pb2.READ,
            facts=EntryFacts(attributes={"what": what, **attributes}),
            answer=with_receipt(response),
        )
    except BaseException:
        summary.forget(caller.department_id, what)
        raise
    return with_receipt(response)(receipt)


async def get_checkpoint(
    hub: Hub, caller: Caller, body: audit_pb2.GetCheckpointRequest
) -> audit_pb2.CheckpointResponse:
    """The latest stored checkpoint (size 0) or the one stored at ``size``.

    Raises PermissionDenied, OutOfRange (BEYOND_LOG) beyond the log, NotFound if no checkpoint
    was stored at that size, FailedPrecondition before the first checkpoint.
    """
    require_auditor(caller, "the ledger")
    if body.size:
        checkpoint = await asyncio.to_thread(hub.ledger.checkpoint_at, body.size)
    else:
        # With witnesses, the latest checkpoint they cosigned: the one a policy accepts.
        checkpoint = hub.witnessing.latest_cosigned or await _latest(hub)
    response = audit_pb2.CheckpointResponse(
        checkpoint=checkpoint.note, size=checkpoint.size, root_hash=checkpoint.root_hash
    )
    return await _read(hub, caller, response, "checkpoint", size=str(checkpoint.size))


async def get_inclusion_proof(
    hub: Hub, caller: Caller, body: audit_pb2.InclusionProofRequest
) -> audit_pb2.InclusionProofResponse:
    """The inclusion proof of entry ``sequence`` in ``tree_size`` (0: latest checkpoint's).

    Raises PermissionDenied, OutOfRange (BEYOND_LOG).
    """
    require_auditor(caller, "the ledger")
    tree_size = body.tree_size or (await _latest(hub)).size
    proof = await asyncio.to_thread(hub.ledger.inclusion_proof, body.sequence, tree_size)
    (stored,) = await asyncio.to_thread(hub.ledger.entries, body.sequence, 1)
    response = audit_pb2.InclusionProofResponse(
        leaf_hash=stored.leaf_hash, tree_size=tree_size, proof=proof
    )
    return await _read(
        hub, caller, response, "inclusion", sequence=str(body.sequence), size=str(tree_size)
    )


async def get_consistency_proof(
    hub: Hub, caller: Caller, body: audit_pb2.ConsistencyProofRequest
) -> audit_pb2.ConsistencyProofResponse:
    """The consistency proof from ``old_size`` to ``new_size`` (0: latest checkpoint's).

    Raises PermissionDenied, OutOfRange (BEYOND_LOG).
    """
    require_auditor(caller, "the ledger")
    new_size = body.new_size or (await _latest(hub)).size
    proof = await asyncio.to_thread(hub.ledger.consistency_proof, body.old_size, new_size)
    response = audit_pb2.ConsistencyProofResponse(
        old_size=body.old_size, new_size=new_size, proof=proof
    )
    return await _read(
        hub, caller, response, "consistency", old=str(body.old_size), new=str(new_size)
    )


async def stream_entries(
    hub: Hub, caller: Caller, body: audit_pb2.StreamEntriesRequest
) -> AsyncIterator[audit_pb2.EntryRecord]:
    """Stored entries from ``from_sequence`` on, in pages; with ``follow``, new ones as they
    commit (in this process or another sharing the database) until the caller goes away.

    Raises PermissionDenied before the first item; with ``follow``, FollowerTooSlow
    (FOLLOWER_TOO_SLOW) if the caller reads more slowly than the log grows.
    """
    require_auditor(caller, "the ledger")
    await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        facts=EntryFacts(attributes={"what": "stream", "from": str(body.from_sequence)}),
    )
    if body.follow:
        # One reader for all followers (exchange.ledger.feed); a slow one is dropped with
        # FOLLOWER_TOO_SLOW and resumes from its cursor.
        async for stored in hub.feed.follow(body.from_sequence):
            yield _record(stored)
        return
    position = body.from_sequence
    while True:
        page = await asyncio.to_thread(hub.ledger.entries, position, PAGE)
        for stored in page:
            yield _record(stored)
            position = stored.sequence + 1
        if len(page) < PAGE:
            return


def _record(stored: StoredEntry) -> audit_pb2.EntryRecord:
    return audit_pb2.EntryRecord(
        sequence=stored.sequence,
        entry=stored.entry_bytes,
        envelope=stored.envelope_bytes,
        leaf_hash=stored.leaf_hash,
    )
