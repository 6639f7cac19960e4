"""Helpers shared by the ledger tests."""

from __future__ import annotations

from exchange.ledger import EntryDraft
from exchange.v1 import ledger_pb2

ORIGIN = "exchange.test/ledger"


def draft(i: int = 0, actor: str = "js.nj.civil-affairs", **kw: object) -> EntryDraft:
    """A plain CHECK entry for tests."""
    fields: dict[str, object] = {
        "kind": ledger_pb2.CHECK,
        "actor": actor,
        "outcome": ledger_pb2.OK,
        "request_id": f"req-{i}",
        "material_type": "household-registration",
    }
    fields.update(kw)
    return EntryDraft(**fields)  # type: ignore[arg-type]
