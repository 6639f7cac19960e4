"""A call's request-id claim, from its start to its answer (docs/api.md, "Request ids and
retries"; the states are exchange.store.requests's).

``CallClaim.open`` claims the id (or finds the earlier call with it); inside ``with claim:``
the flow runs with the claim as ``exchange.flows.record.current_claim``, and its first entry
commits the answer with it (``answer``, called by the ledger's writer). Then ``answered``
stores the answer if that transaction did not (a checkpoint or proof read only counted, which
has no entry; an answer that failed to build), before the response leaves the hub, and
``refused`` stores a policy refusal or frees the id after a refusal for a passing condition.
A claim left unsettled (the call failed, or its caller went away before anything was
committed) is released on exit, so a retry runs again.
"""

from __future__ import annotations

import contextvars
from types import TracebackType

import structlog
from google.protobuf.message import Message
from google.rpc import status_pb2

from exchange import errors
from exchange.crypto.sealing import seal
from exchange.flows import record
from exchange.flows.record import AnswerBuilder, current_claim
from exchange.ledger.entry import Receipt
from exchange.observability import metrics
from exchange.rpc.status import to_status
from exchange.store.requests import (
    ANSWERED,
    COMMITTED,
    PENDING,
    REFUSED,
    RequestLog,
    RequestRecord,
)

log = structlog.get_logger("exchange.call")

# A claim's lease: the caller's remaining time (at most this), plus LEASE_MARGIN_S. Once it has
# passed another hub may take the id over; a call still running then cannot commit (its
# ledger transaction checks the holder), so the lease bounds how long a crashed hub's claims
# block a retry, never correctness.
MAX_LEASE_S = 60.0
LEASE_MARGIN_S = 5.0


class CallClaim:
    """The claim of one call on its request id; see the module."""

    def __init__(
        self, log_: RequestLog, department_id: str, request_id: str, holder: str, key: bytes
    ) -> None:
        self._log = log_
        self.department_id = department_id
        self.request_id = request_id
        self.holder = holder
        self._key = key  # what answers are sealed to: the disclosure, or the at-rest secret
        self._builder: AnswerBuilder | None = None
        self._taking = False
        self._state = PENDING  # as committed: PENDING, COMMITTED, ANSWERED or REFUSED
        self._prepared = PENDING  # what ``answer`` built for the append in flight
        self._token: contextvars.Token[record.CallClaim | None] | None = None

    @classmethod
    async def open(
        cls,
        log_: RequestLog,
        department_id: str,
        request_id: str,
        envelope_sha256: bytes,
        method: str,
        now_us: int,
        time_remaining: float | None,
        key: bytes,
        holder: str,
    ) -> CallClaim | RequestRecord:
        """Claim the request id for ``holder`` (``Holder.call``): the new claim, or the
        earlier call's record (replayed by the caller). Raises errors.DatabaseUnavailable if
        the claim cannot be committed; if this is cancelled, the claim may be committed, and
        ``RequestLog.release_soon`` with ``holder`` frees it."""
        lease = min(MAX_LEASE_S, time_remaining if time_remaining is not None else MAX_LEASE_S)
        lease_until_us = now_us + int((max(lease, 0.0) + LEASE_MARGIN_S) * 1_000_000)
        earlier = await log_.claim(
            department_id, request_id, envelope_sha256, method, now_us, lease_until_us, holder
        )
        if earlier is not None:
            return earlier
        return cls(log_, department_id, request_id, holder, key)

    # -------------------------------------------------------------- the flow's entry

    def take(self, answer: AnswerBuilder | None) -> bool:
        """For ``record``: take the claim for the entry about to be appended."""
        if self._taking or self._state != PENDING:
            return False
        self._taking, self._builder = True, answer
        return True

    def taken(self, committed: bool) -> None:
        """For ``record``: the append that took the claim ended."""
        self._taking = False
        if committed:
            self._state = self._prepared

    def answer(self, receipt: Receipt, refusal: errors.ExchangeError | None) -> tuple[int, object]:
        """For the ledger's writer, in the entry's transaction: the state and sealed answer
        stored with the entry (COMMITTED and no answer when the flow gave no builder)."""
        message: Message | None
        if refusal is not None:
            message = to_status(refusal, receipt.sequence)
        elif self._builder is not None:
            message = self._builder(receipt.to_proto())
        else:
            message = None
        if message is None:
            self._prepared = COMMITTED
            return COMMITTED, None
        self._prepared = REFUSED if isinstance(message, status_pb2.Status) else ANSWERED
        return self._prepared, seal(message.SerializeToString(), self._key)

    # -------------------------------------------------------------- the pipeline

    def __enter__(self) -> CallClaim:
        self._token = current_claim.set(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            current_claim.reset(self._token)
            self._token = None

    @property
    def settled(self) -> bool:
        """Whether the request id's answer is committed (a retry gets it)."""
        return self._state in (ANSWERED, REFUSED)

    @property
    def committed(self) -> bool:
        """Whether an entry of this call was committed with the claim."""
        return self._state != PENDING

    async def answered(self, response: Message) -> None:
        """Store ``response`` as the id's answer unless the entry's transaction did. A
        database failure is logged: the entry is committed, so the response is still sent
        (a retry is then told its answer is lost, never run again)."""
        await self._store(ANSWERED, response)

    async def refused(self, error: errors.ExchangeError, status: status_pb2.Status) -> None:
        """After a refusal: free the id if the refusal is for a passing condition and nothing
        was committed with the claim; else store ``status`` as the answer unless stored."""
        if not self.committed and error.transient:
            await self.release()
            return
        await self._store(REFUSED, status)

    async def release(self) -> None:
        """Free the id (nothing was committed with it). A database failure is logged: the
        claim's lease then frees it."""
        if self.committed:
            return
        try:
            await self._log.release(self.department_id, self.request_id, self.holder)
        except errors.ExchangeError:
            log.warning("request_release_failed")
        self._state = -1  # settled as released

    def release_soon(self) -> None:
        """``release`` without waiting (the call's task is being cancelled)."""
        if not self.committed:
            self._log.release_soon(self.department_id, self.request_id, self.holder)

    async def _store(self, state: int, message: Message) -> None:
        if self.settled or self._state < 0:
            return
        try:
            await self._log.complete(
                self.department_id,
                self.request_id,
                state,
                seal(message.SerializeToString(), self._key),
                self.holder,
            )
        except errors.ExchangeError:
            log.error("request_answer_lost")
            return
        if self._state == COMMITTED:
            metrics.ANSWERS_AFTER_COMMIT.inc()
        self._state = state
