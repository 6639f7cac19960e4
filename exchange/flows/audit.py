"""Audit flows: checkpoints, proofs and the entry stream, for auditor departments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from exchange import errors
from exchange.flows.record import record
from exchange.ledger import Checkpoint
from exchange.policy.identity import Caller
from exchange.policy.roles import require_auditor
from exchange.v1 import audit_pb2, common_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

PAGE = 500
FOLLOW_POLL_SECONDS = 1.0


async def _latest(hub: Hub) -> Checkpoint:
    checkpoint = await asyncio.to_thread(hub.ledger.latest_checkpoint)
    if checkpoint is None:
        raise errors.FailedPrecondition(
            common_pb2.BEYOND_LOG, "no checkpoint has been made yet; retry in a moment"
        )
    return checkpoint


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
        checkpoint = await _latest(hub)
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        attributes={"what": "checkpoint", "size": str(checkpoint.size)},
    )
    return audit_pb2.CheckpointResponse(
        checkpoint=checkpoint.note,
        size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        receipt=receipt,
    )


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
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        attributes={"what": "inclusion", "sequence": str(body.sequence), "size": str(tree_size)},
    )
    return audit_pb2.InclusionProofResponse(
        leaf_hash=stored.leaf_hash, tree_size=tree_size, proof=proof, receipt=receipt
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
    receipt = await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        attributes={"what": "consistency", "old": str(body.old_size), "new": str(new_size)},
    )
    return audit_pb2.ConsistencyProofResponse(
        old_size=body.old_size, new_size=new_size, proof=proof, receipt=receipt
    )


async def stream_entries(
    hub: Hub, caller: Caller, body: audit_pb2.StreamEntriesRequest
) -> AsyncIterator[audit_pb2.EntryRecord]:
    """Stored entries from ``from_sequence`` on, in pages; with ``follow``, new ones as they
    commit (in this process or another sharing the database) until the caller goes away.

    Raises PermissionDenied before the first item.
    """
    require_auditor(caller, "the ledger")
    await record(
        hub.ledger,
        caller,
        ledger_pb2.READ,
        attributes={"what": "stream", "from": str(body.from_sequence)},
    )
    position = body.from_sequence
    while True:
        page = await asyncio.to_thread(hub.ledger.entries, position, PAGE)
        for stored in page:
            yield audit_pb2.EntryRecord(
                sequence=stored.sequence,
                entry=stored.entry_bytes,
                envelope=stored.envelope_bytes,
                leaf_hash=stored.leaf_hash,
            )
            position = stored.sequence + 1
        if len(page) == PAGE:
            continue
        if not body.follow:
            return
        # Woken at once by this process's commits; the timeout picks up other processes'.
        await hub.ledger.wait_beyond(position, timeout=FOLLOW_POLL_SECONDS)
