"""The one place a call's ledger entry is built from its caller."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Connection

from exchange import errors
from exchange.errors import EntryFacts
from exchange.flows.validity import Share, guard
from exchange.ledger import Effect, EntryDraft, Ledger
from exchange.policy.identity import Caller, Claim
from exchange.store.requests import Claimed
from exchange.v1 import common_pb2, ledger_pb2

T = TypeVar("T")

# How a call's answer is built from its entry's receipt (a response, or a google.rpc.Status
# for a refusal): given to ``record``, it is stored with the entry, in its transaction.
AnswerBuilder = Callable[[common_pb2.Receipt], Message]

Receipted = TypeVar("Receipted", bound=Message)


def with_receipt(response: Receipted) -> Callable[[common_pb2.Receipt], Receipted]:
    """The answer builder of a call whose response is ready before its entry: ``response``
    with the entry's receipt in its ``receipt`` field. It sets the field in place, so it is
    cheap on the ledger's writer thread and gives the same answer each time it runs; the flow
    applies it again to the receipt ``record`` returns (``record`` does not run it when the
    call holds no claim)."""

    def build(receipt: common_pb2.Receipt) -> Receipted:
        response.receipt.CopyFrom(receipt)  # type: ignore[attr-defined]
        return response

    return build


class CallClaim(Claimed, Protocol):
    """The request-id claim of the call being served (exchange.api.claims.CallClaim), as
    ``record`` uses it: the first entry recorded with it takes it."""

    def take(self, answer: AnswerBuilder | None) -> bool:
        """Take the claim for the entry about to be appended, with how to build the call's
        answer from its receipt; False if an earlier entry of the call took it."""
        ...

    def taken(self, committed: bool) -> None:
        """The append that took the claim ended: its entry (and the claim's answer) was
        committed, or not (the claim is free again)."""
        ...


# The claim of the call this task serves; set by the pipeline (exchange.api.pipeline).
current_claim: contextvars.ContextVar[CallClaim | None] = contextvars.ContextVar(
    "current_claim", default=None
)


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
    shares: Sequence[Share] = (),
    answer: AnswerBuilder | None = None,
    facts: EntryFacts | None = None,
) -> common_pb2.Receipt:
    """Append the entry of one call, with the caller's envelope beside it; return its receipt.

    ``facts`` are what the entry says of the call beyond its caller, kind, outcome and reason
    (material type, subject ref, purpose…: ``exchange.errors.EntryFacts``).
    ``effect`` is the change the call makes, written in the entry's transaction
    (``Ledger.append``): both are stored, or neither. ``on_commit`` refreshes what caches it.
    An OK entry of an authenticated caller is appended only if what the call relied on still
    holds after every entry before it (``exchange.flows.validity``): the caller's key and
    member state, and for each of ``shares`` (what the call delivered) the material type's
    sharing class and the grant. Otherwise it is appended as the refusal, the effect is not
    written, and that refusal is raised (an ExchangeError already ``recorded``).

    The call's request-id claim (``current_claim``), unless an earlier entry of the call took
    it, is committed with the entry: with the answer ``answer`` builds from the receipt (what a
    retry with the same bytes gets). Every flow served under a claim gives ``answer``: without
    one (or if it fails on the writer thread) the claim is only marked committed and the
    pipeline stores the answer after the commit, counted by
    ``exchange_answers_after_commit_total`` (a hub stopped in between leaves the retry
    REQUEST_ANSWER_LOST; tests/conftest.py fails any test that does so). An entry of a
    refusal for a passing condition (``errors.transient``) does not take the claim: its
    call's id is released.

    Raises exchange.errors.Unavailable (LEDGER_UNAVAILABLE) if the ledger cannot commit: the
    caller must then not serve or store anything; an effect's IntegrityError as it is.
    """
    said = facts if facts is not None else EntryFacts()
    draft = EntryDraft(
        kind=kind,
        actor=caller.department_id,
        outcome=outcome,
        reason=reason,
        request_id=caller.request_id,
        subject_ref=said.subject_ref,
        material_type=said.material_type,
        content_hash=said.content_hash,
        purpose=said.purpose,
        counterparty=said.counterparty,
        reference=said.reference,
        version=said.version,
        attributes=dict(said.attributes),
    )
    checked = (
        guard(caller, shares) if outcome == ledger_pb2.OK and isinstance(caller, Caller) else None
    )
    claim = current_claim.get()
    if claim is not None and (
        (outcome != ledger_pb2.OK and _transient_outcome(outcome, reason)) or not claim.take(answer)
    ):
        claim = None
    committed = False
    try:
        receipt = await ledger.append(
            draft,
            caller.envelope_bytes,
            effect=effect,
            on_commit=on_commit,
            guard=checked,
            claim=claim,
        )
        committed = True
    except errors.ExchangeError as refused:
        committed = refused.recorded  # a guard's refusal, appended with the claim's answer
        raise
    finally:
        if claim is not None:
            claim.taken(committed)
    return receipt.to_proto()


def _transient_outcome(
    outcome: ledger_pb2.Outcome.ValueType, reason: common_pb2.Reason.ValueType
) -> bool:
    """Whether an entry of ``outcome`` and ``reason`` is a refusal for a passing condition."""
    code = errors.Code.UNAVAILABLE if outcome == ledger_pb2.FAILED else errors.Code.INTERNAL
    return errors.transient(code, reason)


async def record_change(
    ledger: Ledger,
    caller: Caller,
    kind: ledger_pb2.EntryKind.ValueType,
    change: ReadBack[T | None],
    respond: Callable[[T], Receipted],
    facts: EntryFacts,
) -> Receipted:
    """Record the entry of a call that changes something and answers with what its change read
    back (``change``, written in the entry's transaction): ``respond(value)`` with the entry's
    receipt. The answer is built in that transaction too, and stored with the entry for a
    retry. Raises as ``record``."""

    def answer(receipt: common_pb2.Receipt) -> Receipted:
        stored = change.value
        assert stored is not None  # written in the same transaction
        return with_receipt(respond(stored))(receipt)

    receipt = await record(ledger, caller, kind, effect=change, answer=answer, facts=facts)
    return answer(receipt)
