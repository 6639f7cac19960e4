"""Publishing a department's holdings: material it already holds becomes known to the hub.

The adapter lists every holding of a material type from its backend and sends them to
``Exchange.PublishHoldings`` in batches. The hub keeps only keyed subject references and keyed
hashes; it answers, per holding, whether it was newly indexed (STORED), unchanged
(ALREADY_ON_FILE) or changed (NEW_VERSION), with the reference and version it assigned. Run it
when the adapter first joins and after bulk changes in the department's own systems; a rerun with
unchanged data changes nothing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from adapters.backends import Backend, Holding
from adapters.client import HubClient
from exchange.ledger import Receipt
from exchange.v1 import exchange_pb2

PUBLISH = "/exchange.v1.Exchange/PublishHoldings"
BATCH = 1000  # the hub's per-call limit


@dataclass(frozen=True, slots=True)
class PublishSummary:
    """What one material type's publication did: counts per outcome, and the receipts."""

    material_type: str
    outcomes: Counter[str]
    receipts: tuple[Receipt, ...] = field(default=(), repr=False)

    @property
    def total(self) -> int:
        """How many holdings were published."""
        return sum(self.outcomes.values())


def _next_batch(listing: Iterator[Holding], size: int) -> list[Holding]:
    """Up to ``size`` more holdings from ``listing``; empty when it is exhausted."""
    return [holding for _, holding in zip(range(size), listing, strict=False)]


async def publish_holdings(
    client: HubClient,
    backend: Backend,
    material_type: str,
    *,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> PublishSummary:
    """Publish every holding of ``material_type`` from ``backend`` through ``client``;
    ``progress`` is called with the number of holdings of each batch once the hub took it.

    Raises adapters.client.Refused (e.g. NOT_OWNER, SCHEMA_VIOLATION naming the holding's
    position in its batch), BackendError if the source cannot be listed, KeyError if the type
    is not mapped.
    """
    outcomes: Counter[str] = Counter()
    receipts: list[Receipt] = []
    listing = backend.list_holdings(material_type)
    while True:
        # Listing reads the database or file: pull each batch in a worker thread.
        batch = await asyncio.to_thread(_next_batch, listing, batch_size)
        if not batch:
            break
        answer = await client.call(
            PUBLISH,
            exchange_pb2.PublishHoldingsRequest(
                material_type=material_type,
                holdings=[
                    exchange_pb2.Holding(subject_id=h.subject_id, fields=dict(h.fields))
                    for h in batch
                ],
            ),
            exchange_pb2.PublishHoldingsResponse,
        )
        receipts.append(client.verify_receipt(answer.receipt))
        outcomes.update(exchange_pb2.SubmitOutcome.Name(h.outcome) for h in answer.holdings)
        if progress is not None:
            progress(len(batch))
    return PublishSummary(material_type, outcomes, tuple(receipts))
