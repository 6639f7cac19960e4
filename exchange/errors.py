"""The one base exception of the exchange, and its refusals.

Every refusal carries a ``Reason`` from the contract (``exchange.v1.Reason``) and a human message;
the servicer layer maps it to a gRPC status plus ``google.rpc.ErrorInfo`` in one place
(``exchange.rpc.status``). Code below ``api`` raises these and never touches gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from exchange.v1 import common_pb2


class Code(enum.Enum):
    """The gRPC status a refusal maps to, named without importing grpc."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    INTERNAL = "INTERNAL"


QUOTE_LIMIT = 64
MESSAGE_LIMIT = 1024


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` quoted for a refusal message, cut to ``limit`` characters (with an ellipsis).

    Request text quoted at any length could push the status past gRPC's 16 KiB trailer limit, and
    the caller would then see RESOURCE_EXHAUSTED without a reason.
    """
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(slots=True)
class EntryFacts:
    """What a call's ledger entry says of the call beyond who made it and what came of it,
    gathered as the call goes: a refusal raised at any step carries what was known by then
    (``ExchangeError.facts``), and the call's own entry is recorded from the same value
    (``exchange.flows.record``). The names are those of ``exchange.ledger.EntryDraft``;
    ``subject_ref`` is already a keyed hash and ``content_hash`` a hash (no personal data).
    """

    material_type: str = ""
    subject_ref: bytes = b""
    content_hash: bytes = b""
    purpose: str = ""
    counterparty: str = ""
    reference: str = ""
    version: int = 0
    attributes: dict[str, str] = field(default_factory=dict)

    def copy(self, **attributes: str) -> EntryFacts:
        """A copy, with ``attributes`` added, for what only the call's own entry says (its
        outcome's facts): a refusal raised while that entry is recorded says only what the
        call had learned, not what it would have answered."""
        return replace(self, attributes={**self.attributes, **attributes})

    def fill(self, known: EntryFacts) -> None:
        """Take from ``known`` each fact this one does not hold yet (an empty value, an
        attribute it has no value for); what it holds stays."""
        self.material_type = self.material_type or known.material_type
        self.subject_ref = self.subject_ref or known.subject_ref
        self.content_hash = self.content_hash or known.content_hash
        self.purpose = self.purpose or known.purpose
        self.counterparty = self.counterparty or known.counterparty
        self.reference = self.reference or known.reference
        self.version = self.version or known.version
        for name, value in known.attributes.items():
            self.attributes.setdefault(name, value)


class ExchangeError(Exception):
    """Base of every error the exchange raises on purpose.

    ``reason`` is an ``exchange.v1.Reason`` value, ``code`` the status class, ``message`` is safe
    to show to the caller (no personal data, no internals). ``retry_after`` (seconds) is set for
    rate limits. ``facts`` are what the refusal's ledger entry says of the call.
    """

    code: Code = Code.INTERNAL

    def __init__(
        self,
        reason: common_pb2.Reason.ValueType,
        message: str,
        *,
        code: Code | None = None,
        retry_after: float | None = None,
    ) -> None:
        if len(message) > MESSAGE_LIMIT:  # a safety net under quote(): a refusal stays small
            message = message[: MESSAGE_LIMIT - 1] + "…"
        super().__init__(message)
        self.reason = reason
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.facts = EntryFacts()
        # Set by the ledger's writer when it appended this refusal's entry itself (a guard's
        # refusal): the pipeline then records nothing more and names this entry.
        self.ledger_sequence: int | None = None
        # False when the call's envelope must not be kept with the refusal's entry (it holds
        # the personal data of a refused disclosure).
        self.store_envelope = True

    @property
    def recorded(self) -> bool:
        """Whether this refusal's ledger entry is already appended (``ledger_sequence``)."""
        return self.ledger_sequence is not None

    @property
    def transient(self) -> bool:
        """Whether this refusal is for a passing condition (``transient``): then it is not the
        request id's answer, and a retry with the same bytes runs the call again."""
        return transient(self.code, self.reason)

    @property
    def reason_name(self) -> str:
        """The reason as its contract name, e.g. ``"BAD_SIGNATURE"``."""
        return common_pb2.Reason.Name(self.reason)


class InvalidArgument(ExchangeError):
    """The request is malformed or a field is invalid."""

    code = Code.INVALID_ARGUMENT


class Unauthenticated(ExchangeError):
    """The caller's identity could not be established."""

    code = Code.UNAUTHENTICATED


class PermissionDenied(ExchangeError):
    """The caller is known but not allowed."""

    code = Code.PERMISSION_DENIED


class NotFound(ExchangeError):
    """The thing asked for does not exist."""

    code = Code.NOT_FOUND


class AlreadyExists(ExchangeError):
    """The thing to create exists already."""

    code = Code.ALREADY_EXISTS


class FailedPrecondition(ExchangeError):
    """The system is not in a state that allows the call."""

    code = Code.FAILED_PRECONDITION


class ResourceExhausted(ExchangeError):
    """A rate limit or quota is exceeded; ``retry_after`` says when to retry."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(ExchangeError):
    """A dependency (ledger, provider) cannot be reached; nothing was done."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(ExchangeError):
    """A dependency did not answer in time."""

    code = Code.DEADLINE_EXCEEDED


class OutOfRange(ExchangeError):
    """A position beyond the ledger's current end was asked for."""

    code = Code.OUT_OF_RANGE


# Refusals for a passing condition (docs/api.md, "Request ids and retries"): the request id is
# released, so the same bytes sent again run the call again. Every other refusal is the request
# id's answer (policy, authentication, a malformed request), stored and returned to a retry.
# By status: a dependency unavailable or too slow, a limit of the moment.
TRANSIENT_CODES = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
# By reason, whatever the status: rate limits and the hub's fairness limits.
TRANSIENT_REASONS = frozenset(
    {
        common_pb2.LEDGER_UNAVAILABLE,
        common_pb2.DATABASE_UNAVAILABLE,
        common_pb2.PROVIDER_UNAVAILABLE,
        common_pb2.PROVIDER_TIMEOUT,
        common_pb2.RATE_LIMITED,
        common_pb2.TOO_MANY_CALLS,
        common_pb2.TOO_MANY_STREAMS,
        common_pb2.HUB_BUSY,
        common_pb2.REQUEST_IN_PROGRESS,
    }
)


def transient(code: Code, reason: common_pb2.Reason.ValueType) -> bool:
    """Whether a refusal of ``code`` and ``reason`` is for a passing condition (see
    TRANSIENT_CODES and TRANSIENT_REASONS): not stored as the request id's answer."""
    return code in TRANSIENT_CODES or reason in TRANSIENT_REASONS


# How long a caller should wait before retrying a call the database could not serve.
DATABASE_RETRY_SECONDS = 1.0


class DatabaseUnavailable(Unavailable):
    """The hub's database failed (refused connections, a full disk, a lock or statement
    timeout): nothing was done; retry after ``retry_after``."""

    def __init__(self, message: str = "the hub's database is unavailable; retry shortly") -> None:
        super().__init__(
            common_pb2.DATABASE_UNAVAILABLE, message, retry_after=DATABASE_RETRY_SECONDS
        )
