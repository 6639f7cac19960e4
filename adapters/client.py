"""Client SDK: signed, idempotent, verified calls to the hub.

Every call wraps its body in an envelope signed by the department's key, with a request id and
an issue time in the header. Transient failures are retried with the same request id and the
same bytes until the call's own deadline, so a retry never has a second effect: the hub answers
it with the first committed answer, or runs it once if nothing was committed (``RetryPolicy``
says what is retried and how long to wait). Refusals raise ``Refused`` with the contract's
reason; docs/api.md has the table of what to do after each status and reason.

Given the hub's verifier key (``hub_verifier``), every receipt is checked on arrival: its
checkpoint must be signed by the hub and its inclusion proof must place the call's ledger entry
in that checkpoint. Material delivered by a provider is checked end to end: the envelope must be
signed by a key the registry lists for the holder, valid when the record was issued, and the
record must answer this request (request id, material type, subject, fields asked for).
Anything that does not verify raises ``VerificationError``.

The typed methods (``check``, ``submit``, ``request``, ``prefill``, ``access_history``,
``file_objection``, ``department``, and the person's ``give_consent``, ``revoke_consent``,
``list_consents``, ``confirm_form``) return frozen dataclasses; those of the registry, the
catalog, forms and grants (``register_department``, ``set_state``, ``publish_material_type``,
``define_purpose``, ``register_form``, ``issue_grant``, ...) return the hub's answer message;
``call`` and ``send`` reach any method. Calls made for a person take their subject assertion
(``assertion``: the envelope an identity provider signed, see adapters.identity); it travels
in the disclosure with the subject id, never in what the hub stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.errors import AdapterError, VerificationError
from exchange.clock import from_timestamp, now_us, to_timestamp
from exchange.crypto.envelope import EnvelopeError, sign, verify
from exchange.crypto.forwarding import answers
from exchange.crypto.keys import SigningKey
from exchange.crypto.keystore import TlsIdentity
from exchange.crypto.subject import normalise
from exchange.ledger import CheckpointError, NoteVerifier, Receipt, verify_receipt
from exchange.policy.disclosure import split
from exchange.rpc.status import DETAILS_KEY, error_info
from exchange.v1 import (
    catalog_pb2,
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    grants_pb2,
    ledger_pb2,
    person_pb2,
    registry_pb2,
)

__all__ = [
    "Access",
    "ChannelOptions",
    "CheckResult",
    "Confirmation",
    "Consent",
    "FiledObjection",
    "HubClient",
    "Identity",
    "Material",
    "Prefill",
    "PrefilledValue",
    "Refused",
    "RetryPolicy",
    "SubmitResult",
    "VerificationError",
    "channel",
    "retry_delay",
]

Response = TypeVar("Response", bound=Message)

# Retried whatever the reason: the call was not run, or its retry gets the committed answer.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Retried only with a RetryInfo (a fairness or rate limit that says when), or with one of the
# limits' reasons (matched by name, as ErrorInfo carries it): a quota without either (a
# consent's uses spent) does not pass by waiting.
RETRYABLE_WITH_DELAY = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
LIMIT_REASONS = frozenset({"TOO_MANY_CALLS", "HUB_BUSY", "RATE_LIMITED", "TOO_MANY_STREAMS"})
SUMMARISED_READS = frozenset(
    f"/exchange.v1.Audit/{name}"
    for name in ("GetCheckpoint", "GetInclusionProof", "GetConsistencyProof")
)
EXCHANGE = "/exchange.v1.Exchange"
PERSON = "/exchange.v1.Person"
MATERIAL_RECORD = exchange_pb2.MaterialRecord.DESCRIPTOR.full_name
DEPARTMENT_CACHE_SECONDS = 60.0


class Refused(AdapterError):
    """The hub (or a provider through it) refused or failed a call.

    ``code`` is the gRPC status, ``reason`` the contract's reason name (e.g. "NO_GRANT"),
    ``message`` the hub's human message, ``ledger_sequence`` the refusal's ledger entry if any.
    ``retry_after`` is the hub's RetryInfo delay in seconds, if it sent one; ``attempts`` how
    many times the SDK sent the call.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        ledger_sequence: int | None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.ledger_sequence = ledger_sequence
        self.retry_after = retry_after
        self.attempts = attempts

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError, attempts: int = 1) -> Refused:
        """Decode a failed call's status, ErrorInfo and RetryInfo."""
        metadata = error.trailing_metadata()
        info = error_info(metadata)
        sequence = info.metadata.get("ledger_sequence") if info is not None else None
        return cls(
            error.code(),
            info.reason if info is not None else "",
            error.details() or "",
            int(sequence) if sequence else None,
            retry_delay(metadata),
            attempts,
        )


def retry_delay(metadata: object) -> float | None:
    """The google.rpc.RetryInfo delay (seconds) in a call's trailing metadata, or None."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(retry):
                    return float(retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9)
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What the SDK retries, and how long it waits between attempts.

    Retried, with the same bytes (so the same request id): UNAVAILABLE (the hub was not
    reachable, was shutting down, could not commit to its ledger, its holder was unavailable
    or the request id was still being processed: nothing was done, or the retry gets the
    committed answer), and RESOURCE_EXHAUSTED when it carries a RetryInfo or a limit's reason
    (TOO_MANY_CALLS, HUB_BUSY, RATE_LIMITED, TOO_MANY_STREAMS). Nothing else is retried: a
    refusal of policy or authentication is the hub's answer and a retry gets it again. The
    decision rests on the status code, RetryInfo and reason name, so a reason added to the
    contract later is handled by its status code.

    The n-th wait is a random time between half and all of ``initial_seconds *
    multiplier**(n-1)`` (at most ``max_seconds``), and never shorter than the hub's RetryInfo.
    Retries stop at the call's deadline (``timeout``), or after ``max_attempts`` attempts if
    set; a wait that would end past the deadline is not begun, and the last refusal is raised.
    """

    initial_seconds: float = 0.1
    max_seconds: float = 5.0
    multiplier: float = 2.0
    max_attempts: int | None = None

    def retryable(self, code: grpc.StatusCode, hinted: float | None, reason: str = "") -> bool:
        """Whether a call that failed with ``code`` (with RetryInfo ``hinted`` and ErrorInfo
        ``reason``) may be sent again with the same bytes. A reason this SDK does not know
        (a newer contract's) is judged by the status code alone."""
        if code in RETRYABLE:
            return True
        return code in RETRYABLE_WITH_DELAY and (hinted is not None or reason in LIMIT_REASONS)

    def delay(self, attempt: int, hinted: float | None) -> float:
        """How long to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed so far)."""
        ceiling = min(self.max_seconds, self.initial_seconds * self.multiplier ** (attempt - 1))
        jittered = random.uniform(ceiling / 2, ceiling)  # spreads callers; not a secret
        return max(jittered, hinted or 0.0)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """The gRPC channel's connection settings.

    Keepalive: during a call, the channel pings a connection silent for ``keepalive_time_ms``
    and drops it if no answer comes within ``keepalive_timeout_ms`` (a hub or network gone
    without a word): the call then fails UNAVAILABLE and is retried. The hub refuses pings more
    often than its ``min_ping_interval_ms`` (30 s by default) and pings without calls, so keep
    ``keepalive_time_ms`` at or above it. Reconnecting: after a failed connection attempt the
    channel waits ``initial_reconnect_backoff_ms``, growing to ``max_reconnect_backoff_ms``
    (gRPC's own default maximum is 120 s: longer than a hub restart, hence 5 s here).
    """

    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    initial_reconnect_backoff_ms: int = 200
    max_reconnect_backoff_ms: int = 5_000
    extra: tuple[tuple[str, str | int], ...] = ()

    def grpc_options(self) -> list[tuple[str, str | int]]:
        """The options as grpc channel arguments."""
        return [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            # Keep pinging during a long call that sends no data (a slow holder).
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", self.initial_reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            *self.extra,
        ]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the client is: department id, signing key and TLS client identity."""

    department_id: str
    signing_key: SigningKey
    tls: TlsIdentity | None


# ---------------------------------------------------------------------------- typed results


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Whether material is on file: reference, version and holder; never content."""

    on_file: bool
    reference: str
    version: int
    holder: str
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What a submission did: ``outcome`` is STORED, ALREADY_ON_FILE, NEW_VERSION or
    CORRECTION_PROPOSED."""

    outcome: str
    reference: str
    version: int
    content_hash: bytes
    objection_id: str
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Material:
    """A material delivered by its holder, verified end to end.

    ``envelope`` is the holder-signed envelope exactly as received, for anyone to re-verify;
    ``issued_us`` is when the holder signed it (microseconds since the epoch).
    """

    material_type: str
    subject_id: str
    reference: str
    version: int
    fields: Mapping[str, str]
    holder: str
    request_id: str
    issued_us: int
    envelope: envelope_pb2.Envelope = field(repr=False)
    receipt: Receipt | None = field(default=None, repr=False)
    # Under a consent-based purpose: the consent used, and until when the material may be kept.
    consent_id: str = ""
    keep_until_us: int | None = None


@dataclass(frozen=True, slots=True)
class PrefilledValue:
    """One form field filled from material on file, with its provenance."""

    name: str
    value: str
    holder: str
    material_type: str
    reference: str
    version: int
    content_hash: bytes
    # "AUTHORITATIVE" (the holder's own record) or "PERSON_PROVIDED" (submitted by a collector
    # on the person's word, not yet confirmed by the holder), and who submitted the version.
    source_class: str = "AUTHORITATIVE"
    submitted_by: str = ""


@dataclass(frozen=True, slots=True)
class Prefill:
    """A prefilled form: filled fields with provenance, and the names still to ask for.

    ``missing``: nothing on file; ``withheld``: on file but not granted to this form, so asked
    of the person too; ``unavailable``: the holder did not answer in time (retry later).
    """

    fields: tuple[PrefilledValue, ...]
    missing: tuple[str, ...]
    materials: tuple[Material, ...]
    receipt: Receipt
    withheld: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()

    def values(self) -> dict[str, str]:
        """Form field name -> value for the filled fields."""
        return {f.name: f.value for f in self.fields}


@dataclass(frozen=True, slots=True)
class Access:
    """One ledger entry that touched the subject: who, when, what, why, how it ended."""

    sequence: int
    time_us: int
    actor: str
    kind: str
    material_type: str
    purpose: str
    outcome: str
    reason: str
    material_types: tuple[str, ...] = ()
    counterparty: str = ""
    identity_provider: str = ""
    assurance_level: str = ""
    consent_id: str = ""


@dataclass(frozen=True, slots=True)
class FiledObjection:
    """An objection as filed: its id, the owner that must answer and by when."""

    id: str
    material_type: str
    reference: str
    owner: str
    state: str
    deadline_us: int
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Consent:
    """A person's consent as the hub holds it (times in microseconds since the epoch)."""

    id: str
    consumer: str
    material_type: str
    fields: tuple[str, ...]
    purpose: str
    valid_from_us: int
    valid_until_us: int
    max_uses: int
    min_interval_seconds: int
    data_life_days: int
    uses: int
    given_us: int
    revoked_us: int | None
    given_through: str
    identity_provider: str
    assurance_level: str
    receipt: Receipt | None = field(default=None, repr=False)

    @classmethod
    def from_proto(cls, value: person_pb2.Consent, receipt: Receipt | None = None) -> Consent:
        """The value of a contract Consent."""
        return cls(
            id=value.id,
            consumer=value.consumer,
            material_type=value.material_type,
            fields=tuple(value.fields),
            purpose=value.purpose,
            valid_from_us=from_timestamp(value.valid_from),
            valid_until_us=from_timestamp(value.valid_until),
            max_uses=value.max_uses,
            min_interval_seconds=value.min_interval_seconds,
            data_life_days=value.data_life_days,
            uses=value.uses,
            given_us=from_timestamp(value.given_at),
            revoked_us=from_timestamp(value.revoked_at) if value.HasField("revoked_at") else None,
            given_through=value.given_through,
            identity_provider=value.identity_provider,
            assurance_level=person_pb2.AssuranceLevel.Name(value.assurance_level),
            receipt=receipt,
        )


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The person's recorded confirmation of a completed form. Keep ``salt`` with the form:
    ``completed_sha256`` (in the ledger) = ``completed_form_hash(values, salt)``."""

    form_id: str
    salt: bytes
    completed_sha256: bytes
    receipt: Receipt


def completed_form_hash(values: Mapping[str, str], salt: bytes) -> bytes:
    """SHA-256 of a completed form as ConfirmForm records it: the 32-byte salt, then each
    field name and value sorted by name, each as a 4-byte big-endian length and UTF-8 bytes."""
    digest = hashlib.sha256(salt)
    for name in sorted(values):
        for text in (name, values[name]):
            data = text.encode("utf-8")
            digest.update(struct.pack(">I", len(data)) + data)
    return digest.digest()


# ---------------------------------------------------------------------------- transport


def channel(
    target: str,
    tls: TlsIdentity | None,
    server_name: str | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    options: ChannelOptions | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``target``: mTLS with ``tls``, or plaintext if ``tls`` is None, with
    ``options`` (gRPC's defaults if None)."""
    arguments = options.grpc_options() if options is not None else []
    if tls is None:
        return grpc.aio.insecure_channel(target, options=arguments, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.private_key, certificate_chain=tls.certificate
    )
    if server_name:
        arguments.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target, credentials, options=arguments, interceptors=interceptors
    )


def _key_valid_at(key: registry_pb2.DepartmentKey, at_us: int) -> bool:
    if key.HasField("revoked_at") and from_timestamp(key.revoked_at) <= at_us:
        return False
    if key.HasField("valid_from") and from_timestamp(key.valid_from) > at_us:
        return False
    return not (key.HasField("valid_until") and from_timestamp(key.valid_until) <= at_us)


class HubClient:
    """Calls hub methods as one department. Use as an async context manager or ``close()``.

    ``hub_verifier`` is the hub's signed-note verifier key (``<name>+<hex id>+<base64 key>``,
    printed by the hub at start and in its docs): when given, every receipt is verified on
    arrival. ``interceptors`` are passed to the gRPC channel (tests use them to lose answers).

    Faults, and what a caller gets (docs/api.md, "What to do after a refusal"):

    - The hub cannot be reached, restarts, or shuts down (UNAVAILABLE, ``SHUTTING_DOWN``), its
      ledger or database cannot commit (UNAVAILABLE, ``LEDGER_UNAVAILABLE``), a holder is
      unavailable, or the hub is busy (RESOURCE_EXHAUSTED with RetryInfo): retried with the same
      bytes, with backoff, until the call's ``timeout``; if it is still failing then, ``Refused``
      with the last status (``attempts`` says how many were made). Sending the same envelope
      again later (``send``) is safe: the hub answers with the committed answer or runs it once.
    - The deadline passes while the hub works (DEADLINE_EXCEEDED): ``Refused``, not retried
      (the deadline is spent); the call may have committed, so send the same envelope again
      with a new deadline to learn its answer.
    - A refusal of policy or authentication (PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND,
      FAILED_PRECONDITION, UNAUTHENTICATED...): ``Refused`` at once, never retried; it is the
      request's answer and its retry would get it again.
    - INTERNAL: ``Refused`` with the hub's incident id; not retried.

    ``retry`` sets the backoff (``RetryPolicy``); ``retries`` caps the retries (0: none; None:
    until the deadline). ``wait_for_ready``: while the hub cannot be reached, a call waits for
    it (until its deadline; DEADLINE_EXCEEDED if it never comes) instead of failing UNAVAILABLE
    at once; ``wait_until_ready`` waits
    for the hub to serve before the first call. ``channel_options`` sets keepalive and
    reconnect backoff (``ChannelOptions``).
    """

    def __init__(
        self,
        target: str,
        identity: Identity,
        *,
        server_name: str | None = None,
        retries: int | None = None,
        backoff_seconds: float | None = None,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = False,
        channel_options: ChannelOptions | None = None,
        hub_verifier: str | NoteVerifier | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        """Raises exchange.ledger.CheckpointError if ``hub_verifier`` is malformed."""
        self.identity = identity
        self.channel_options = channel_options or ChannelOptions()
        self.channel = channel(
            target, identity.tls, server_name, interceptors, self.channel_options
        )
        policy = retry or RetryPolicy()
        if backoff_seconds is not None:
            policy = dataclasses.replace(policy, initial_seconds=backoff_seconds)
        if retries is not None:
            policy = dataclasses.replace(policy, max_attempts=retries + 1)
        self.retry = policy
        self.wait_for_ready = wait_for_ready
        self.hub_verifier = (
            NoteVerifier.parse(hub_verifier) if isinstance(hub_verifier, str) else hub_verifier
        )
        self._departments: dict[str, tuple[float, registry_pb2.Department]] = {}

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Wait until the hub serves (its health check answers SERVING), for a hub that is
        starting or restarting. Raises Refused (UNAVAILABLE) if it does not within ``timeout``
        seconds, or with the health check's own status if it refuses this client (for
        example UNAVAILABLE for a TLS handshake the hub rejects)."""
        until = time.monotonic() + timeout
        health = health_pb2_grpc.HealthStub(self.channel)
        attempt = 0
        while True:
            attempt += 1
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    "",
                    f"the hub did not serve within {timeout:g} s",
                    None,
                    attempts=attempt - 1,
                )
            try:
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(), timeout=remaining, wait_for_ready=True
                )
            except grpc.aio.AioRpcError as error:
                # Not reachable yet, or not serving yet (starting, shutting down): ask again.
                if error.code() not in (*RETRYABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Refused.from_rpc_error(error, attempt) from None
            else:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(
                min(self.retry.delay(attempt, None), max(until - time.monotonic(), 0.0))
            )

    def envelope(self, body: Message, request_id: str | None = None) -> envelope_pb2.Envelope:
        """Fill ``body``'s header (request id, issue time, department) and sign it.

        Personal fields (subject ids, field values) are moved into the envelope's disclosure,
        bound to the signature by their hash, so the envelope the hub stores holds none.
        """
        header: Any = body.header  # type: ignore[attr-defined]
        header.request_id = request_id or uuid.uuid4().hex
        header.issued_at.CopyFrom(to_timestamp(now_us()))
        header.department_id = self.identity.department_id
        # One person, one id: the SDK sends ids in the normal form the hub and the holders
        # hash and look up (exchange.crypto.subject).
        if "subject_id" in body.DESCRIPTOR.fields_by_name and body.subject_id:  # type: ignore[attr-defined]
            body.subject_id = normalise(body.subject_id)  # type: ignore[attr-defined]
        signed, disclosure = split(body)
        envelope = sign(
            signed.SerializeToString(deterministic=True),
            body.DESCRIPTOR.full_name,
            self.identity.signing_key,
        )
        envelope.disclosure = disclosure
        return envelope

    async def send(
        self,
        method: str,
        envelope: envelope_pb2.Envelope,
        response_type: type[Response],
        *,
        timeout: float = 30.0,
    ) -> Response:
        """Send a prepared envelope to ``method`` ("/exchange.v1.Registry/ListDepartments").

        ``timeout`` is the whole call's deadline in seconds, retries included: what
        ``RetryPolicy`` retries is sent again, with the same bytes, until then. Verifies the
        response's receipt when the client has the hub's verifier key. Raises Refused (the
        last attempt's status, see the class docstring), VerificationError.
        """
        call = self.channel.unary_unary(
            method,
            request_serializer=envelope_pb2.Envelope.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        until = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                response: Response = await call(
                    envelope,
                    timeout=max(until - time.monotonic(), 0.0),
                    wait_for_ready=self.wait_for_ready,
                )
                break
            except grpc.aio.AioRpcError as error:
                trailers = error.trailing_metadata()
                hinted = retry_delay(trailers)
                info = error_info(trailers)
                reason = info.reason if info is not None else ""
                limit = self.retry.max_attempts
                if not self.retry.retryable(error.code(), hinted, reason) or (
                    limit is not None and attempt >= limit
                ):
                    raise Refused.from_rpc_error(error, attempt) from None
                pause = self.retry.delay(attempt, hinted)
                if time.monotonic() + pause >= until:
                    raise Refused.from_rpc_error(error, attempt) from None
                await asyncio.sleep(pause)
        # Checkpoint and proof reads are summarised (docs/ledger.md §8.3): only the first of
        # the hour is an entry, the others answer without a receipt.
        if (
            self.hub_verifier is not None
            and "receipt" in response.DESCRIPTOR.fields_by_name
            and (method not in SUMMARISED_READS or response.HasField("receipt"))
        ):
            self.verify_receipt(response.receipt)  # type: ignore[attr-defined]
        return response

    async def call(
        self,
        method: str,
        body: Message,
        response_type: type[Response],
        *,
        request_id: str | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """Sign ``body`` and call ``method``; return the response. Raises Refused,
        VerificationError."""
        return await self.send(
            method, self.envelope(body, request_id), response_type, timeout=timeout
        )

    # ------------------------------------------------------------------------ verification

    def verify_receipt(self, receipt: common_pb2.Receipt) -> Receipt:
        """Check a receipt against the hub's verifier key; return it as a value.

        Without a verifier key the receipt is only converted. Raises VerificationError if the
        checkpoint is not signed by the hub or the entry is not in its tree.
        """
        value = Receipt.from_proto(receipt)
        if self.hub_verifier is None:
            return value
        if not receipt.checkpoint:
            raise VerificationError("the answer carries no receipt")
        try:
            verify_receipt(value, [self.hub_verifier])
        except CheckpointError as exc:
            raise VerificationError(f"the hub's receipt does not verify: {exc}") from exc
        return value

    async def department(
        self, department_id: str, *, fresh: bool = False
    ) -> registry_pb2.Department:
        """A registered department (keys, roles, endpoint), cached for a minute.

        Raises Refused (e.g. NOT_FOUND / UNKNOWN_DEPARTMENT).
        """
        cached = self._departments.get(department_id)
        if (
            cached is not None
            and not fresh
            and time.monotonic() - cached[0] < DEPARTMENT_CACHE_SECONDS
        ):
            return cached[1]
        answer = await self.call(
            "/exchange.v1.Registry/GetDepartment",
            registry_pb2.GetDepartmentRequest(department_id=department_id),
            registry_pb2.DepartmentResponse,
        )
        self._departments[department_id] = (time.monotonic(), answer.department)
        return answer.department

    async def verify_material(
        self,
        envelope: envelope_pb2.Envelope,
        *,
        material_type: str,
        subject_id: str,
        request_id: str | None = None,
        fields: Sequence[str] = (),
        holder: str | None = None,
    ) -> Material:
        """Verify a holder-signed MaterialRecord envelope end to end and decode it.

        The signature must be by a key the registry lists for the record's holder (``holder``
        if given), valid when the record was issued; the record must be about ``material_type``
        and ``subject_id``, answer ``request_id`` if given, and carry only ``fields`` if given.
        Raises VerificationError, or Refused if the holder cannot be looked up.
        """
        if envelope.payload_type != MATERIAL_RECORD:
            raise VerificationError(f"not a material record: {envelope.payload_type[:64]!r}")
        record = exchange_pb2.MaterialRecord()
        try:
            record.ParseFromString(envelope.payload)
        except DecodeError as exc:
            raise VerificationError("the material record does not decode") from exc
        if holder is not None and record.holder != holder:
            raise VerificationError(f"the record names holder {record.holder!r}, not {holder!r}")
        issued = from_timestamp(record.issued_at)
        department = await self.department(record.holder)
        keys = {k.keyid: k.public_key for k in department.keys if _key_valid_at(k, issued)}
        try:
            verify(envelope, keys.get)
        except EnvelopeError as exc:
            raise VerificationError(
                f"the material is not signed by its holder {record.holder!r}: {exc}"
            ) from exc
        if record.material_type != material_type:
            raise VerificationError("the record is of another material type")
        if normalise(record.subject_id) != normalise(subject_id):
            raise VerificationError("the record is about another subject")
        if request_id is not None and not answers(record.request_id, request_id):
            raise VerificationError("the record answers another request")
        extra = set(record.fields) - set(fields) if fields else set()
        if extra:
            raise VerificationError(f"the record carries fields not asked for: {sorted(extra)}")
        return Material(
            material_type=record.material_type,
            subject_id=record.subject_id,
            reference=record.reference,
            version=record.version,
            fields=dict(record.fields),
            holder=record.holder,
            request_id=record.request_id,
            issued_us=issued,
            envelope=envelope,
        )

    # ------------------------------------------------------------------------ the flows

    async def check(
        self,
        material_type: str,
        subject_id: str,
        *,
        assertion: envelope_pb2.Envelope | None = None,
        purpose: str = "",
    ) -> CheckResult:
        """Is material of ``material_type`` on file for the subject? Raises Refused.

        A form tool checks for a person with their ``assertion``, or names a legal-basis
        ``purpose`` it holds a grant for; a department on its own account needs neither."""
        body = exchange_pb2.CheckRequest(
            material_type=material_type, subject_id=subject_id, purpose=purpose
        )
        if assertion is not None:
            body.assertion.CopyFrom(assertion)
        answer = await self.call(f"{EXCHANGE}/Check", body, exchange_pb2.CheckResponse)
        return CheckResult(
            on_file=answer.on_file,
            reference=answer.reference,
            version=answer.version,
            holder=answer.holder,
            receipt=self.verify_receipt(answer.receipt),
        )

    async def submit(
        self,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        *,
        request_id: str | None = None,
        assertion: envelope_pb2.Envelope | None = None,
    ) -> SubmitResult:
        """Submit material collected from a person (collect once). Raises Refused.

        A form tool submits for the person with their ``assertion`` (the outcome tells whether
        material was on file); a collector or owner on its own account needs none."""
        return await self.submit_signed(
            self.submission(
                material_type, subject_id, fields, request_id=request_id, assertion=assertion
            )
        )

    def submission(
        self,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        *,
        request_id: str | None = None,
        assertion: envelope_pb2.Envelope | None = None,
    ) -> envelope_pb2.Envelope:
        """A signed Submit (see ``submit``) for ``submit_signed``. Kept and sent again
        unchanged, after the call that sent it ended, it gets the hub's first answer to it
        within the hub's replay window (docs/api.md, "Request ids and retries"; later it is
        refused STALE_REQUEST); signed anew under the same request id, it is refused
        REQUEST_ID_REUSED once the hub took the first."""
        body = exchange_pb2.SubmitRequest(
            material_type=material_type, subject_id=subject_id, fields=dict(fields)
        )
        if assertion is not None:
            body.assertion.CopyFrom(assertion)
        return self.envelope(body, request_id)

    async def submit_signed(self, envelope: envelope_pb2.Envelope) -> SubmitResult:
        """Send a Submit signed by ``submission``. Raises Refused."""
        answer = await self.send(f"{EXCHANGE}/Submit", envelope, exchange_pb2.SubmitResponse)
        return SubmitResult(
            outcome=exchange_pb2.SubmitOutcome.Name(answer.outcome),
            reference=answer.reference,
            version=answer.version,
            content_hash=answer.content_hash,
            objection_id=answer.objection_id,
            receipt=self.verify_receipt(answer.receipt),
        )

    async def request(
        self,
        material_type: str,
        subject_id: str,
        *,
        purpose: str,
        fields: Sequence[str] = (),
        request_id: str | None = None,
        assertion: envelope_pb2.Envelope | None = None,
    ) -> Material:
        """Request material from its holder for ``purpose``; verified end to end.

        ``fields`` empty asks for every field the grant allows. ``assertion`` (the person's
        subject assertion) is needed for a PERSON_PRESENT purpose. Under a PERSON_CONSENT
        purpose the answer names the consent and until when the material may be kept. Raises
        Refused, or VerificationError if the delivered material is not the holder's answer to
        this request.
        """
        request_id = request_id or uuid.uuid4().hex
        body = exchange_pb2.MaterialRequest(
            material_type=material_type,
            subject_id=subject_id,
            fields=list(fields),
            purpose=purpose,
        )
        if assertion is not None:
            body.assertion.CopyFrom(assertion)
        answer = await self.call(
            f"{EXCHANGE}/Request",
            body,
            exchange_pb2.MaterialResponse,
            request_id=request_id,
        )
        receipt = self.verify_receipt(answer.receipt)
        material = await self.verify_material(
            answer.material,
            material_type=material_type,
            subject_id=subject_id,
            request_id=request_id,
            fields=fields,
        )
        return dataclasses.replace(
            material,
            receipt=receipt,
            consent_id=answer.consent_id,
            keep_until_us=from_timestamp(answer.keep_until) if answer.consent_id else None,
        )

    async def prefill(
        self, form_id: str, subject_id: str, *, assertion: envelope_pb2.Envelope
    ) -> Prefill:
        """Prefill a registered form for a person who authenticated to this form tool
        (``assertion``: their subject assertion), every value checked against the signed
        material it came from, each with its source class. Raises Refused, VerificationError."""
        request_id = uuid.uuid4().hex
        answer = await self.call(
            f"{EXCHANGE}/Prefill",
            exchange_pb2.PrefillRequest(
                form_id=form_id, subject_id=subject_id, assertion=assertion
            ),
            exchange_pb2.PrefillResponse,
            request_id=request_id,
        )
        receipt = self.verify_receipt(answer.receipt)
        materials = []
        for envelope in answer.materials:
            record = exchange_pb2.MaterialRecord()
            try:
                record.ParseFromString(envelope.payload)
            except DecodeError as exc:
                raise VerificationError("a prefill material does not decode") from exc
            materials.append(
                await self.verify_material(
                    envelope,
                    material_type=record.material_type,
                    subject_id=subject_id,
                    request_id=request_id,
                )
            )
        by_source = {(m.holder, m.material_type): m for m in materials}
        values = []
        for item in answer.fields:
            source = by_source.get((item.holder, item.material_type))
            if source is None or item.value not in source.fields.values():
                raise VerificationError(
                    f"prefilled field {item.name!r} is not backed by material signed by "
                    f"{item.holder!r}"
                )
            values.append(
                PrefilledValue(
                    name=item.name,
                    value=item.value,
                    holder=item.holder,
                    material_type=item.material_type,
                    reference=item.reference,
                    version=item.version,
                    content_hash=item.content_hash,
                    source_class=exchange_pb2.SourceClass.Name(item.source_class),
                    submitted_by=item.submitted_by,
                )
            )
        return Prefill(
            fields=tuple(values),
            missing=tuple(answer.missing),
            materials=tuple(materials),
            receipt=receipt,
            withheld=tuple(answer.withheld),
            unavailable=tuple(answer.unavailable),
        )

    async def access_history(
        self, subject_id: str, *, assertion: envelope_pb2.Envelope | None = None
    ) -> tuple[Access, ...]:
        """Every ledger entry that touched the subject, oldest first. A form tool passes the
        person's ``assertion``; a supervisor may leave it out. Raises Refused."""
        body = exchange_pb2.AccessHistoryRequest(subject_id=subject_id)
        if assertion is not None:
            body.assertion.CopyFrom(assertion)
        answer = await self.call(
            f"{EXCHANGE}/AccessHistory", body, exchange_pb2.AccessHistoryResponse
        )
        self.verify_receipt(answer.receipt)
        return tuple(
            Access(
                sequence=r.sequence,
                time_us=from_timestamp(r.time),
                actor=r.actor,
                kind=ledger_pb2.EntryKind.Name(r.kind),
                material_type=r.material_type,
                purpose=r.purpose,
                outcome=ledger_pb2.Outcome.Name(r.outcome),
                reason=common_pb2.Reason.Name(r.reason) if r.reason else "",
                material_types=tuple(r.material_types),
                counterparty=r.counterparty,
                identity_provider=r.identity_provider,
                assurance_level=(
                    person_pb2.AssuranceLevel.Name(r.assurance_level) if r.assurance_level else ""
                ),
                consent_id=r.consent_id,
            )
            for r in answer.records
        )

    async def file_objection(
        self,
        material_type: str,
        subject_id: str,
        reason: str,
        *,
        proposed_fields: Mapping[str, str] | None = None,
        assertion: envelope_pb2.Envelope | None = None,
    ) -> FiledObjection:
        """Object to the material on file for a subject. A form tool filing for the person
        passes their ``assertion``; a consumer objecting on its own account leaves it out.
        Raises Refused."""
        body = exchange_pb2.FileObjectionRequest(
            material_type=material_type,
            subject_id=subject_id,
            reason=reason,
            proposed_fields=dict(proposed_fields or {}),
        )
        if assertion is not None:
            body.assertion.CopyFrom(assertion)
        answer = await self.call(f"{EXCHANGE}/FileObjection", body, exchange_pb2.ObjectionResponse)
        objection = answer.objection
        return FiledObjection(
            id=objection.id,
            material_type=objection.material_type,
            reference=objection.reference,
            owner=objection.owner,
            state=exchange_pb2.ObjectionState.Name(objection.state),
            deadline_us=from_timestamp(objection.deadline),
            receipt=self.verify_receipt(answer.receipt),
        )

    # ------------------------------------------------------------------ the person's say

    async def give_consent(
        self,
        subject_id: str,
        *,
        assertion: envelope_pb2.Envelope,
        consumer: str,
        material_type: str,
        fields: Sequence[str],
        purpose: str,
        valid_until_us: int,
        valid_from_us: int | None = None,
        max_uses: int = 0,
        min_interval_seconds: int = 0,
        data_life_days: int = 0,
    ) -> Consent:
        """Record the person's consent (given through this form tool with their assertion).
        Raises Refused."""
        consent = person_pb2.Consent(
            consumer=consumer,
            material_type=material_type,
            fields=list(fields),
            purpose=purpose,
            valid_until=to_timestamp(valid_until_us),
            max_uses=max_uses,
            min_interval_seconds=min_interval_seconds,
            data_life_days=data_life_days,
        )
        if valid_from_us is not None:
            consent.valid_from.CopyFrom(to_timestamp(valid_from_us))
        answer = await self.call(
            f"{PERSON}/GiveConsent",
            person_pb2.GiveConsentRequest(
                subject_id=subject_id, assertion=assertion, consent=consent
            ),
            person_pb2.ConsentResponse,
        )
        return Consent.from_proto(answer.consent, self.verify_receipt(answer.receipt))

    async def revoke_consent(
        self, subject_id: str, consent_id: str, *, assertion: envelope_pb2.Envelope
    ) -> Consent:
        """Revoke one of the person's consents, with effect at once. Raises Refused."""
        answer = await self.call(
            f"{PERSON}/RevokeConsent",
            person_pb2.RevokeConsentRequest(
                subject_id=subject_id, assertion=assertion, consent_id=consent_id
            ),
            person_pb2.ConsentResponse,
        )
        return Consent.from_proto(answer.consent, self.verify_receipt(answer.receipt))

    async def list_consents(
        self, subject_id: str, *, assertion: envelope_pb2.Envelope
    ) -> tuple[Consent, ...]:
        """Every consent the person gave, in force or not, oldest first. Raises Refused."""
        answer = await self.call(
            f"{PERSON}/ListConsents",
            person_pb2.ListConsentsRequest(subject_id=subject_id, assertion=assertion),
            person_pb2.ListConsentsResponse,
        )
        self.verify_receipt(answer.receipt)
        return tuple(Consent.from_proto(c) for c in answer.consents)

    async def confirm_form(
        self,
        subject_id: str,
        form_id: str,
        values: Mapping[str, str],
        *,
        assertion: envelope_pb2.Envelope,
        prefill_sequence: int = 0,
    ) -> Confirmation:
        """Record that the person confirmed the completed form ``values`` (shown to them with
        each prefilled value's source). Only a salted hash reaches the hub; keep the returned
        salt with the form. Raises Refused."""
        salt = os.urandom(32)
        digest = completed_form_hash(values, salt)
        answer = await self.call(
            f"{PERSON}/ConfirmForm",
            person_pb2.ConfirmFormRequest(
                subject_id=subject_id,
                assertion=assertion,
                form_id=form_id,
                prefill_sequence=prefill_sequence,
                completed_sha256=digest,
            ),
            person_pb2.ConfirmFormResponse,
        )
        return Confirmation(form_id, salt, digest, self.verify_receipt(answer.receipt))

    # ---------------------------------------------------------------- registry, catalog, grants
    # Each returns the hub's answer message, its receipt checked (when a verifier is set).
    # Raises Refused, VerificationError. ``request_id`` names the call (a fresh one if None).

    async def register_department(
        self, department: registry_pb2.Department, *, request_id: str | None = None
    ) -> registry_pb2.DepartmentResponse:
        """Register a department (the operator)."""
        return await self.call(
            "/exchange.v1.Registry/RegisterDepartment",
            registry_pb2.RegisterDepartmentRequest(department=department),
            registry_pb2.DepartmentResponse,
            request_id=request_id,
        )

    async def rotate_key(
        self,
        department_id: str,
        new_public_key: bytes,
        *,
        grace_seconds: int = 0,
        certificate_sha256: str = "",
        request_id: str | None = None,
    ) -> registry_pb2.DepartmentResponse:
        """Add a new signing key to a department, the current one kept for ``grace_seconds``
        (the department itself or the operator)."""
        return await self.call(
            "/exchange.v1.Registry/RotateKey",
            registry_pb2.RotateKeyRequest(
                department_id=department_id,
                new_public_key=new_public_key,
                grace_seconds=grace_seconds,
                certificate_sha256=certificate_sha256,
            ),
            registry_pb2.DepartmentResponse,
            request_id=request_id,
        )

    async def revoke_key(
        self, department_id: str, keyid: str, *, request_id: str | None = None
    ) -> registry_pb2.DepartmentResponse:
        """Revoke one of a department's signing keys."""
        return await self.call(
            "/exchange.v1.Registry/RevokeKey",
            registry_pb2.RevokeKeyRequest(department_id=department_id, keyid=keyid),
            registry_pb2.DepartmentResponse,
            request_id=request_id,
        )

    async def set_state(
        self,
        department_id: str,
        state: registry_pb2.DepartmentState.ValueType,
        reason: str = "",
        *,
        request_id: str | None = None,
    ) -> registry_pb2.DepartmentResponse:
        """Suspend, reactivate or retire a department (the operator)."""
        return await self.call(
            "/exchange.v1.Registry/SetState",
            registry_pb2.SetStateRequest(department_id=department_id, state=state, reason=reason),
            registry_pb2.DepartmentResponse,
            request_id=request_id,
        )

    async def update_department(
        self,
        department_id: str,
        department: registry_pb2.Department,
        paths: Sequence[str],
        *,
        request_id: str | None = None,
    ) -> registry_pb2.DepartmentResponse:
        """Change the fields of a department named by ``paths`` (its update mask)."""
        body = registry_pb2.UpdateDepartmentRequest(
            department_id=department_id, department=department
        )
        body.update_mask.paths.extend(paths)
        return await self.call(
            "/exchange.v1.Registry/UpdateDepartment",
            body,
            registry_pb2.DepartmentResponse,
            request_id=request_id,
        )

    async def list_departments(self) -> registry_pb2.ListDepartmentsResponse:
        """Every registered department."""
        return await self.call(
            "/exchange.v1.Registry/ListDepartments",
            registry_pb2.ListDepartmentsRequest(),
            registry_pb2.ListDepartmentsResponse,
        )

    async def publish_material_type(
        self, material_type: catalog_pb2.MaterialType, *, request_id: str | None = None
    ) -> catalog_pb2.MaterialTypeResponse:
        """Publish a new version of a material type (its owner, a provider)."""
        return await self.call(
            "/exchange.v1.Catalog/PublishMaterialType",
            catalog_pb2.PublishMaterialTypeRequest(material_type=material_type),
            catalog_pb2.MaterialTypeResponse,
            request_id=request_id,
        )

    async def get_material_type(self, type_id: str) -> catalog_pb2.MaterialTypeResponse:
        """The latest version of a catalogued material type."""
        return await self.call(
            "/exchange.v1.Catalog/GetMaterialType",
            catalog_pb2.GetMaterialTypeRequest(material_type=type_id),
            catalog_pb2.MaterialTypeResponse,
        )

    async def define_purpose(
        self, purpose: catalog_pb2.Purpose, *, request_id: str | None = None
    ) -> catalog_pb2.PurposeResponse:
        """Define or change a purpose (the operator)."""
        return await self.call(
            "/exchange.v1.Catalog/DefinePurpose",
            catalog_pb2.DefinePurposeRequest(purpose=purpose),
            catalog_pb2.PurposeResponse,
            request_id=request_id,
        )

    async def list_catalog(self) -> catalog_pb2.ListCatalogResponse:
        """Material types, purposes and forms."""
        return await self.call(
            "/exchange.v1.Catalog/ListCatalog",
            catalog_pb2.ListCatalogRequest(),
            catalog_pb2.ListCatalogResponse,
        )

    async def register_form(
        self, form: catalog_pb2.Form, *, request_id: str | None = None
    ) -> catalog_pb2.FormResponse:
        """Register or update a form (form tools, the operator)."""
        return await self.call(
            "/exchange.v1.Catalog/RegisterForm",
            catalog_pb2.RegisterFormRequest(form=form),
            catalog_pb2.FormResponse,
            request_id=request_id,
        )

    async def get_form(self, form_id: str) -> catalog_pb2.FormResponse:
        """A registered form."""
        return await self.call(
            "/exchange.v1.Catalog/GetForm",
            catalog_pb2.GetFormRequest(form_id=form_id),
            catalog_pb2.FormResponse,
        )

    async def issue_grant(
        self, grant: grants_pb2.Grant, *, request_id: str | None = None
    ) -> grants_pb2.GrantResponse:
        """Issue a grant as the material type's owner."""
        return await self.call(
            "/exchange.v1.Grants/IssueGrant",
            grants_pb2.IssueGrantRequest(grant=grant),
            grants_pb2.GrantResponse,
            request_id=request_id,
        )

    async def revoke_grant(
        self, grant_id: str, *, request_id: str | None = None
    ) -> grants_pb2.GrantResponse:
        """Revoke a grant (its owner, the operator)."""
        return await self.call(
            "/exchange.v1.Grants/RevokeGrant",
            grants_pb2.RevokeGrantRequest(grant_id=grant_id),
            grants_pb2.GrantResponse,
            request_id=request_id,
        )

    async def list_grants(self) -> grants_pb2.ListGrantsResponse:
        """The grants this department issued or holds (every grant for the operator)."""
        return await self.call(
            "/exchange.v1.Grants/ListGrants",
            grants_pb2.ListGrantsRequest(),
            grants_pb2.ListGrantsResponse,
        )
