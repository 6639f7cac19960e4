"""Settling a two-phase Store at the owner's adapter (provider contract 2; docs/api.md, Submit).

Submit asks the owner's adapter to hold the material pending (invisible to Fetch), commits its
ledger entry and index row, then settles: commit when the entry committed, abort when it did
not. When the entry's outcome is unknown (the ledger failed, the call was cancelled), the
hub's index decides, as it is written in the entry's transaction: the reference indexed with
the same content means committed. When nothing can be decided or the adapter cannot be reached,
the Store stays pending, invisible, until ``exchange reconcile`` settles it
(exchange.flows.reconcile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from exchange import errors
from exchange.routing.deadline import set_call_deadline
from exchange.routing.provider import forwarded_id
from exchange.v1.common_pb2 import Receipt

if TYPE_CHECKING:
    from exchange.hub import Hub

log = structlog.get_logger("exchange.settle")

# Delays of the background retries of a commit the caller's own call could not deliver.
RETRY_DELAYS_SECONDS = (0.5, 2.0, 8.0, 30.0)
_background: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class HeldStore:
    """A Store an adapter holds pending: where, under which id, and what its entry indexes."""

    endpoint: str
    store_request_id: str
    caller_request_id: str
    material_type: str
    subject_ref: bytes
    reference: str
    content_hash: bytes


async def settle(hub: Hub, store: HeldStore, *, commit: bool) -> bool:
    """Commit or abort ``store`` at its adapter; whether the adapter held it.

    Raises the router's errors (Unavailable, DeadlineExceeded, the holder's refusal).
    """
    return await hub.providers.settle(
        store.endpoint,
        request_id=forwarded_id(store.caller_request_id, "settle"),
        store_request_id=store.store_request_id,
        commit=commit,
    )


async def settle_quietly(hub: Hub, store: HeldStore, *, commit: bool) -> None:
    """``settle``, a failure logged (the Store stays pending for exchange reconcile)."""
    try:
        await settle(hub, store, commit=commit)
    except errors.ExchangeError as exc:
        log.warning(
            "store_settle_failed",
            material_type=store.material_type,
            commit=commit,
            reason=exc.reason_name,
        )


async def indexed(hub: Hub, store: HeldStore) -> bool:
    """Whether the hub's index holds ``store``'s reference with its content (its entry
    committed). Raises the database's errors."""
    current = await asyncio.to_thread(hub.index.current, store.material_type, store.subject_ref)
    return (
        current is not None
        and current.reference == store.reference
        and current.content_hash == store.content_hash
    )


async def settle_after(hub: Hub, store: HeldStore, recording: asyncio.Future[Receipt]) -> Receipt:
    """Await the entry of a pending Store, settle the Store accordingly and return the receipt.

    The entry's own error is raised after the Store was aborted (or left pending, see the
    module docstring). A caller cancelled while the entry commits leaves the settlement to a
    background task, which waits for the entry's outcome.
    """
    try:
        receipt = await asyncio.shield(recording)
    except asyncio.CancelledError:
        _in_background(_settle_when_done(hub, store, recording))
        raise
    except Exception:
        await _settle_per_index(hub, store)
        raise
    await _commit(hub, store)
    return receipt


async def _commit(hub: Hub, store: HeldStore) -> None:
    """Commit now, within the caller's deadline; if that fails, retry in the background."""
    try:
        found = await settle(hub, store, commit=True)
    except errors.ExchangeError as exc:
        log.warning(
            "store_commit_deferred", material_type=store.material_type, reason=exc.reason_name
        )
        _in_background(_commit_later(hub, store))
        return
    if not found:
        # The adapter forgot it (a restart): the entry stands, the holder lacks the material;
        # exchange reconcile reports it.
        log.error("store_commit_lost", material_type=store.material_type)


async def _commit_later(hub: Hub, store: HeldStore) -> None:
    set_call_deadline(None)  # the caller's deadline is over; the provider timeout applies
    for delay in RETRY_DELAYS_SECONDS:
        await asyncio.sleep(delay)
        try:
            await settle(hub, store, commit=True)
        except errors.ExchangeError as exc:
            log.warning(
                "store_commit_retry_failed",
                material_type=store.material_type,
                reason=exc.reason_name,
            )
            continue
        return
    log.error("store_commit_left_pending", material_type=store.material_type)


async def _settle_per_index(hub: Hub, store: HeldStore) -> None:
    """Settle a Store whose entry failed or whose outcome is unknown, as the index says."""
    try:
        committed = await indexed(hub, store)
    except Exception as exc:  # the database is down too: leave it pending, invisible
        log.warning(
            "store_left_pending", material_type=store.material_type, error=type(exc).__name__
        )
        return
    if committed:
        await _commit(hub, store)
        return
    await settle_quietly(hub, store, commit=False)


async def _settle_when_done(hub: Hub, store: HeldStore, recording: asyncio.Future[Receipt]) -> None:
    set_call_deadline(None)
    try:
        await recording
    except Exception:
        await _settle_per_index(hub, store)
        return
    await _commit(hub, store)


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
