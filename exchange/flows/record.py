"""The one place a call's ledger entry is built from its caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from exchange.ledger import Effect, EntryDraft, Ledger
from exchange.policy.identity import Caller, Claim
from exchange.v1 import common_pb2, ledger_pb2

T = TypeVar("T")


class ReadBack(Generic[T]):
    """An entry's effect that writes, then reads back in the same transaction what the call
    answers with: no read after the commit can then fail a change that was made.

    If the ledger runs the batch again on a new connection (the first was lost before its
    commit was sent), the effect runs again; ``value`` is what the last run read, the one that
    was committed.
    """

    def __init__(self, write: Effect, read: Callable[[Connection], T]) -> None:
        self._write = write
        self._read = read
        self._values: list[T] = []

    def __call__(self, conn: Connection) -> None:
        self._write(conn)
        self._values.append(self._read(conn))

    @property
    def value(self) -> T:
        """What the committed run read (only after ``record`` returned)."""
        return self._values[-1]


async def record(
    ledger: Ledger,
    caller: Caller | Claim,
    kind: ledger_pb2.EntryKind.ValueType,
    *,
    outcome: ledger_pb2.Outcome.ValueType = ledger_pb2.OK,
    reason: common_pb2.Reason.ValueType = common_pb2.REASON_UNSPECIFIED,
    effect: Effect | None = None,
    on_commit: Callable[[], None] | None = None,
    **fields: Any,
) -> common_pb2.Receipt:
    """Append the entry of one call, with the caller's envelope beside it; return its receipt.

    ``fields`` are further ``EntryDraft`` fields (material_type, subject_ref, purpose…).
    ``effect`` is the change the call makes, written in the entry's transaction
    (``Ledger.append``): both are stored, or neither. ``on_commit`` refreshes what caches it.
    Raises exchange.errors.Unavailable (LEDGER_UNAVAILABLE) if the ledger cannot commit: the
    caller must then not serve or store anything; an effect's IntegrityError as it is.
    """
    draft = EntryDraft(
        kind=kind,
        actor=caller.department_id,
        outcome=outcome,
        reason=reason,
        request_id=caller.request_id,
        **fields,
    )
    receipt = await ledger.append(draft, caller.envelope_bytes, effect=effect, on_commit=on_commit)
    return receipt.to_proto()
