"""The provider adapter: a department's gRPC server in front of its own database or files.

It implements ``exchange.v1.Provider`` for exactly one caller, the hub:

- the TLS peer must present a certificate of the exchange's CA (mTLS) that names the hub;
- every envelope must be signed by the hub's key and issued within the replay window;
- Fetch returns only the fields the hub names (a field the mapping does not know is refused,
  and only the columns of the named fields are read from the source);
- every answer is a ``MaterialRecord`` signed with the department's key, bound to the hub's
  request id, so the consumer can verify it end to end.

Refusals go through the project's one error-to-status mapping (``exchange.rpc.status``).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from adapters.backends import Backend, Holding
from adapters.errors import BackendError, BackendRefused
from adapters.pending import PendingFile
from adapters.settings import DepartmentSettings
from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import EnvelopeError, sign, verify
from exchange.crypto.keys import KeyFileError, SigningKey, keyid, load_public_key, load_signing_key
from exchange.crypto.keystore import TlsIdentity
from exchange.crypto.subject import is_normal, normalise
from exchange.observability import tracing
from exchange.policy import envelope_checks
from exchange.rpc.ports import SERVER_OPTIONS, bind
from exchange.rpc.status import abort, peer_certificate, to_status
from exchange.v1 import (
    common_pb2,
    envelope_pb2,
    exchange_pb2,
    provider_pb2,
)

log = structlog.get_logger("adapters.provider")

SERVICE = "exchange.v1.Provider"
MATERIAL_RECORD = exchange_pb2.MaterialRecord.DESCRIPTOR.full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
STORE_MEMORY = 10_000

Body = TypeVar("Body", bound=Message)
Answer = TypeVar("Answer", bound=Message)


class HubAuthenticator:
    """Checks that a call comes from the hub: certificate, signature, header, freshness."""

    def __init__(self, hub_id: str, hub_public_key: bytes, replay_window_us: int) -> None:
        self.hub_id = hub_id
        self.hub_keyid = keyid(hub_public_key)
        self.hub_public_key = hub_public_key
        self.replay_window_us = replay_window_us

    def authenticate(
        self, peer: bytes | None, envelope: envelope_pb2.Envelope, body_type: type[Body]
    ) -> Body:
        """Return the decoded body of a hub-signed envelope from the hub.

        Raises errors.Unauthenticated (no certificate, bad or foreign signature, stale),
        errors.PermissionDenied (a peer that is not the hub) or errors.InvalidArgument
        (malformed envelope or header), each with its contract reason.
        """
        identity = envelope_checks.peer_identity(peer)
        if identity.department_id != self.hub_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_FROM_HUB,
                f"only the hub {self.hub_id!r} may call this adapter; the client certificate "
                f"names {errors.quote(identity.department_id)}",
            )
        envelope_checks.check_form(envelope, body_type)
        # The signature is checked before the payload is parsed: nothing unauthenticated is
        # decoded. One Ed25519 verification is ~50 µs, so it runs on the event loop.
        keys = {self.hub_keyid: self.hub_public_key}
        try:
            verify(envelope, keys.get)
        except EnvelopeError as exc:
            signed_by_hub_key = any(s.keyid == self.hub_keyid for s in envelope.signatures)
            raise errors.Unauthenticated(
                common_pb2.BAD_SIGNATURE if signed_by_hub_key else common_pb2.NOT_FROM_HUB,
                f"the request is not signed by the hub: {exc}",
            ) from exc
        body, header = envelope_checks.open_body(envelope, body_type)
        if header.department_id != self.hub_id:
            raise errors.Unauthenticated(
                common_pb2.CERTIFICATE_MISMATCH,
                f"the request header names {header.department_id[:128]!r}, not the hub",
            )
        envelope_checks.check_fresh(
            header, now_us(), self.replay_window_us, clock="the adapter's clock"
        )
        return body


@dataclass(frozen=True, slots=True)
class _PendingStore:
    """A Store held aside until the hub settles it."""

    body: provider_pb2.StoreRequest
    subject: str  # the subject id in normal form
    since_us: int  # when it arrived (wall clock: it may outlive this process)
    # Read back from the pending Stores file at start: its commit may have been written by
    # the process that died, so the source is asked first (``_written``).
    recovered: bool = False


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a commit's failure as seen (its Settle may have been cancelled; the log has it)."""
    if not task.cancelled():
        task.exception()


def _invalid(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, message)


class ProviderService:
    """Fetch and Store over a backend, signing every answer; knows nothing of gRPC transport."""

    def __init__(
        self,
        department_id: str,
        backend: Backend,
        signing_key: SigningKey,
        pending_file: PendingFile | None = None,
    ) -> None:
        """``pending_file`` keeps pending Stores on disk across restarts (adapters.pending);
        without it they live in this process's memory only."""
        self.department_id = department_id
        self.backend = backend
        self.signing_key = signing_key
        self.pending_file = pending_file
        # Store is not naturally idempotent (a files backend appends), so a retried Store with
        # the same request id and bytes gets the first answer; different bytes are refused.
        self._stored: OrderedDict[str, tuple[bytes, provider_pb2.StoreResponse]] = OrderedDict()
        # Stores held pending (two-phase Store, contract 2), by the Store's request id, and how
        # recent Settles went (True: committed), so that a repeated Settle gets the same answer.
        self._pending: OrderedDict[str, _PendingStore] = OrderedDict()
        self._settled: OrderedDict[str, bool] = OrderedDict()
        self._committing: dict[str, asyncio.Future[None]] = {}
        # Per material type, the normal forms of subject ids the source holds in another form
        # (full-width digits, inner spaces): filled by ``survey``.
        self._not_normal: dict[str, frozenset[str]] = {}

    def recover(self) -> int:
        """Open the pending Stores file and hold again what a previous run left pending (and
        remember how its recent Settles went); return how many Stores are pending. Blocking:
        call it in a worker thread, before serving.

        Raises SettingsError (an unsafe file), sqlite3.Error (a file that is no database).
        """
        if self.pending_file is None:
            return 0
        recovered = self.pending_file.open()
        for held in recovered.pending:
            self._pending[held.store_request_id] = _PendingStore(
                held.body, normalise(held.body.subject_id), held.since_us, recovered=True
            )
        for key, committed in recovered.settled:
            self._remember(key, committed)
        return len(self._pending)

    def survey(self) -> dict[str, int]:
        """Read every holding once and note the subject ids not held in normal form
        (exchange.crypto.subject); return their count per material type.

        Such a subject is reported, never duplicated: Fetch and Store for its normal form are
        refused (FAILED_PRECONDITION SUBJECT_ID_NOT_NORMALISED) until the department corrects
        its records. Blocking (it reads the source): call it in a worker thread. A type whose
        holdings cannot be listed is skipped and logged.
        """
        counts: dict[str, int] = {}
        for material_type in self.backend.material_types():
            try:
                held = [h.subject_id for h in self.backend.list_holdings(material_type)]
            except BackendError as exc:
                log.warning("survey_skipped", material_type=material_type, error=str(exc))
                continue
            odd = frozenset(normalise(s) for s in held if not is_normal(s))
            self._not_normal[material_type] = odd
            if odd:
                counts[material_type] = len(odd)
                # The ids themselves are personal data: the log says how many and where.
                log.warning(
                    "subject_ids_not_normalised", material_type=material_type, count=len(odd)
                )
        return counts

    def _subject(self, material_type: str, subject_id: str) -> str:
        """The normal form of a forwarded subject id; refused if the source holds it in
        another form."""
        subject = normalise(subject_id)
        if not subject:
            raise _invalid("subject_id is required")
        if subject in self._not_normal.get(material_type, frozenset()):
            raise errors.FailedPrecondition(
                common_pb2.SUBJECT_ID_NOT_NORMALISED,
                "this department holds the subject under an id not in normal form "
                "(full-width characters or spaces); it must correct its records first",
            )
        return subject

    def _mapped(self, material_type: str) -> list[str]:
        if material_type not in self.backend.material_types():
            raise errors.NotFound(
                common_pb2.UNKNOWN_MATERIAL_TYPE,
                f"this adapter holds no material of type {material_type[:128]!r}",
            )
        return list(self.backend.fields_of(material_type))

    def sign_record(
        self,
        request_id: str,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        reference: str,
        version: int,
    ) -> envelope_pb2.Envelope:
        """The department-signed envelope of a MaterialRecord answering ``request_id``."""
        record = exchange_pb2.MaterialRecord(
            material_type=material_type,
            subject_id=subject_id,
            reference=reference,
            version=version,
            fields=dict(fields),
            request_id=request_id,
            holder=self.department_id,
            issued_at=to_timestamp(now_us()),
        )
        return sign(record.SerializeToString(deterministic=True), MATERIAL_RECORD, self.signing_key)

    async def fetch(self, body: provider_pb2.FetchRequest) -> provider_pb2.FetchResponse:
        """Answer a hub-authenticated FetchRequest with exactly the named fields.

        Raises errors.NotFound (UNKNOWN_MATERIAL_TYPE), errors.InvalidArgument (no subject, no
        fields, a field the mapping does not know), errors.Unavailable (the source failed).
        """
        mapped = self._mapped(body.material_type)
        subject = self._subject(body.material_type, body.subject_id)
        if not body.fields:
            raise _invalid("fields must name at least one field; the adapter never guesses")
        fields = list(dict.fromkeys(body.fields))
        unknown = [name for name in fields if name not in mapped]
        if unknown:
            raise _invalid(
                f"field(s) {', '.join(repr(n[:64]) for n in unknown)} are not mapped for "
                f"{errors.quote(body.material_type)}"
            )
        holding = await self._read(body.material_type, subject, fields)
        if holding is None:
            return provider_pb2.FetchResponse(found=False)
        # Defence in depth: whatever the backend returned, only the named fields leave.
        delivered = {name: value for name, value in holding.fields.items() if name in fields}
        envelope = self.sign_record(
            body.header.request_id,
            body.material_type,
            subject,
            delivered,
            holding.reference if holding.reference is not None else body.reference,
            holding.version if holding.version is not None else body.version,
        )
        return provider_pb2.FetchResponse(found=True, material=envelope)

    async def _read(self, material_type: str, subject_id: str, fields: list[str]) -> Holding | None:
        try:
            # Database drivers and file reads block; run them off the event loop.
            return await asyncio.to_thread(self.backend.fetch, material_type, subject_id, fields)
        except BackendError as exc:
            log.error("source_failed", material_type=material_type, error=str(exc))
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE,
                "the department's data source failed; the adapter log has the cause",
            ) from exc

    async def store(
        self, body: provider_pb2.StoreRequest, envelope_sha256: bytes
    ) -> provider_pb2.StoreResponse:
        """Store a hub-authenticated StoreRequest; answer with the signed record of all fields.

        Raises errors.NotFound (UNKNOWN_MATERIAL_TYPE), errors.FailedPrecondition (the type is
        not stored here, or the request id was used for other bytes), errors.InvalidArgument,
        errors.Unavailable (the write failed).
        """
        earlier = self._stored.get(body.header.request_id)
        if earlier is not None:
            if earlier[0] != envelope_sha256:
                raise errors.FailedPrecondition(
                    common_pb2.REQUEST_ID_REUSED,
                    f"request id {body.header.request_id!r} was used for a different Store",
                )
            return earlier[1]
        self._mapped(body.material_type)
        allowed = self.backend.store_fields(body.material_type)
        if allowed is None:
            raise errors.FailedPrecondition(
                common_pb2.INVALID_ARGUMENT_FIELD,
                f"this adapter does not store material of type {errors.quote(body.material_type)}",
            )
        subject = self._subject(body.material_type, body.subject_id)
        if not body.fields:
            raise _invalid("fields must hold the material")
        unknown = sorted(name for name in body.fields if name not in allowed)
        if unknown:
            raise _invalid(
                f"field(s) {', '.join(repr(n[:64]) for n in unknown)} have no column in the "
                f"store target of {errors.quote(body.material_type)}"
            )
        response = provider_pb2.StoreResponse(
            material=self.sign_record(
                body.header.request_id,
                body.material_type,
                subject,
                body.fields,
                body.reference,
                body.version,
            ),
            pending=body.pending,
        )
        if body.pending:
            # Held aside until the hub's entry commits (Settle): a hub that dies first leaves
            # nothing visible. A newer pending Store of the same reference means the hub never
            # indexed the older one (it decides versions from its index): the older goes.
            dropped = [
                key
                for key, older in self._pending.items()
                if older.body.material_type == body.material_type
                and older.body.reference == body.reference
            ]
            for key in dropped:
                del self._pending[key]
                log.warning("pending_store_replaced", material_type=body.material_type)
            key = body.header.request_id
            # Held before the source is asked, so that a hub going away meanwhile (which
            # cancels this call) leaves it pending for exchange reconcile to settle.
            self._pending[key] = held = _PendingStore(body, subject, now_us())
            while len(self._pending) > STORE_MEMORY:
                dropped.append(self._pending.popitem(last=False)[0])
                log.warning("pending_store_forgotten", reason="too many pending stores")
            try:
                # On disk before the answer, so that an adapter that dies before Settle still
                # holds it when it starts again (adapters.pending).
                await self._keep(key, held, dropped)
                # The source decides now (a rehearsed write: its types, constraints and
                # triggers), so that a refusal reaches the caller before the hub's entry.
                await self._write(body, subject, rehearse=True)
            except errors.ExchangeError:
                self._pending.pop(key, None)
                await self._forget([key])
                raise
        else:
            await self._write(body, subject)
        self._stored[body.header.request_id] = (envelope_sha256, response)
        while len(self._stored) > STORE_MEMORY:
            self._stored.popitem(last=False)
        return response

    async def _write(
        self, body: provider_pb2.StoreRequest, subject: str, *, rehearse: bool = False
    ) -> None:
        """Write a Store's material to the backend (off the event loop); with ``rehearse``,
        let the backend decide without keeping anything.

        Raises errors.InvalidArgument / FailedPrecondition (SCHEMA_VIOLATION: the source
        refused the values) or errors.Unavailable (the write failed).
        """
        try:
            await asyncio.to_thread(
                self.backend.store,
                body.material_type,
                subject,
                dict(body.fields),
                reference=body.reference,
                version=body.version,
                submitted_by=body.submitted_by,
                rehearse=rehearse,
            )
        except BackendRefused as exc:
            # The source decided about these values: the caller is told why (the message names
            # columns and constraints, never values), and a retry would meet the same answer.
            log.warning("store_refused", material_type=body.material_type, error=str(exc))
            kind = errors.InvalidArgument if exc.invalid else errors.FailedPrecondition
            raise kind(common_pb2.SCHEMA_VIOLATION, str(exc)) from exc
        except BackendError as exc:
            log.error("store_failed", material_type=body.material_type, error=str(exc))
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE,
                "the department's data source refused the write; the adapter log has the cause",
            ) from exc

    async def settle(
        self, body: provider_pb2.SettleRequest, _digest: bytes
    ) -> provider_pb2.SettleResponse:
        """Commit (write to the backend) or abort (forget) a pending Store.

        Idempotent: settling the same Store the same way again answers found=True. Raises
        errors.FailedPrecondition (REQUEST_ID_REUSED: it was settled the other way) or the
        write's errors (see ``_write``; the Store then stays pending for a retry).
        """
        key = body.store_request_id
        earlier = self._settled.get(key)
        if earlier is not None:
            if earlier != body.commit:
                raise errors.FailedPrecondition(
                    common_pb2.REQUEST_ID_REUSED,
                    f"the Store {key[:128]!r} was already {'committed' if earlier else 'aborted'}",
                )
            return provider_pb2.SettleResponse(found=True)
        pending = self._pending.get(key)
        if pending is None:
            return provider_pb2.SettleResponse(found=False)
        committing = self._committing.get(key)
        if not body.commit:
            if committing is not None:
                raise errors.FailedPrecondition(
                    common_pb2.REQUEST_ID_REUSED, f"the Store {key[:128]!r} is being committed"
                )
            await self._settled_on_disk(key, False, refuse=True)
            self._pending.pop(key, None)
            self._remember(key, False)
            log.info("store_settled", material_type=pending.body.material_type, commit=False)
            return provider_pb2.SettleResponse(found=True)
        if committing is None:
            # The write is a task of its own: a hub that goes away mid-Settle cancels this call,
            # not the write, whose outcome still decides whether the Store stays pending.
            committing = self._committing[key] = asyncio.ensure_future(
                self._commit_pending(key, pending)
            )
            committing.add_done_callback(_retrieved)
        await asyncio.shield(committing)
        return provider_pb2.SettleResponse(found=True)

    async def _commit_pending(self, key: str, pending: _PendingStore) -> None:
        """Write a pending Store; it stays pending if the write fails."""
        try:
            if pending.recovered and await self._written(pending):
                log.info("store_found_written", material_type=pending.body.material_type)
            else:
                await self._write(pending.body, pending.subject)
        finally:
            del self._committing[key]
        self._pending.pop(key, None)
        self._remember(key, True)
        await self._settled_on_disk(key, True, refuse=False)
        log.info("store_settled", material_type=pending.body.material_type, commit=True)

    async def _written(self, pending: _PendingStore) -> bool:
        """Whether the source already holds a recovered Store's material (its commit was
        written before the adapter died, not yet marked in the file): the reference, where the
        mapping keeps one, else the same values. Raises errors.Unavailable."""
        body = pending.body
        readable = [
            name for name in body.fields if name in self.backend.fields_of(body.material_type)
        ]
        if not readable:
            return False
        holding = await self._read(body.material_type, pending.subject, readable)
        if holding is None:
            return False
        if holding.reference is not None:
            return holding.reference == body.reference
        return dict(holding.fields) == {name: body.fields[name] for name in readable}

    async def _keep(self, key: str, pending: _PendingStore, dropped: list[str]) -> None:
        """Write a pending Store to the pending Stores file (and drop ``dropped``). Raises
        errors.Unavailable if the file cannot be written."""
        if self.pending_file is None:
            return
        try:
            # Shielded: a hub that goes away cancels this call, and an unshielded wait would
            # cancel the write before its thread took it up, leaving the Store nowhere on disk.
            await asyncio.shield(
                asyncio.to_thread(
                    self.pending_file.hold, key, pending.body, pending.since_us, dropped
                )
            )
        except sqlite3.Error as exc:
            log.error("pending_store_not_kept", error=type(exc).__name__)
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE,
                "the adapter could not keep the pending Store on disk; the adapter log has the "
                "cause",
            ) from exc

    async def _forget(self, keys: list[str]) -> None:
        """Drop Stores from the pending Stores file; a failure is logged (a row left pending
        is reported after a restart, and reconcile aborts it)."""
        if self.pending_file is None:
            return
        try:
            await asyncio.to_thread(self.pending_file.forget, keys)
        except sqlite3.Error as exc:
            log.error("pending_store_not_forgotten", error=type(exc).__name__)

    async def _settled_on_disk(self, key: str, committed: bool, *, refuse: bool) -> None:
        """Record a Settle in the pending Stores file. With ``refuse``, a failure is the
        caller's errors.Unavailable (the Store stays pending); without, it is logged (a commit
        already written: after a restart it is found written, ``_written``)."""
        if self.pending_file is None:
            return
        try:
            await asyncio.to_thread(self.pending_file.settled, key, committed, now_us())
        except sqlite3.Error as exc:
            log.error("pending_store_settle_not_kept", error=type(exc).__name__)
            if refuse:
                raise errors.Unavailable(
                    common_pb2.PROVIDER_UNAVAILABLE,
                    "the adapter could not record the Settle on disk; the adapter log has the "
                    "cause",
                ) from exc

    def _remember(self, key: str, committed: bool) -> None:
        self._settled[key] = committed
        while len(self._settled) > STORE_MEMORY:
            self._settled.popitem(last=False)

    async def inventory(
        self, body: provider_pb2.InventoryRequest, _digest: bytes
    ) -> provider_pb2.InventoryResponse:
        """Every holding of a material type, and its pending Stores (exchange reconcile).

        Raises errors.NotFound (UNKNOWN_MATERIAL_TYPE), errors.Unavailable (the source failed).
        """
        self._mapped(body.material_type)
        try:
            holdings = await asyncio.to_thread(
                lambda: list(self.backend.list_holdings(body.material_type))
            )
        except BackendError as exc:
            log.error("source_failed", material_type=body.material_type, error=str(exc))
            raise errors.Unavailable(
                common_pb2.PROVIDER_UNAVAILABLE,
                "the department's data source failed; the adapter log has the cause",
            ) from exc
        answer = provider_pb2.InventoryResponse()
        for holding in holdings:
            answer.held.add(
                subject_id=holding.subject_id,
                fields=dict(holding.fields),
                reference=holding.reference or "",
                version=holding.version or 0,
            )
        now = now_us()
        for key, pending in self._pending.items():
            if pending.body.material_type == body.material_type:
                answer.pending.add(
                    subject_id=pending.subject,
                    fields=dict(pending.body.fields),
                    reference=pending.body.reference,
                    version=pending.body.version,
                    store_request_id=key,
                    pending_seconds=max(0, (now - pending.since_us) // 1_000_000),
                )
        return answer


def _handlers(server: ProviderServer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """Fetch and Store, taking raw bytes: bytes that are not an Envelope get INVALID_ARGUMENT
    MALFORMED_ENVELOPE with an ErrorInfo from ``handle`` (a deserializer failing inside gRPC
    would answer UNKNOWN without one)."""

    async def fetch_body(
        body: provider_pb2.FetchRequest, _digest: bytes
    ) -> provider_pb2.FetchResponse:
        return await server.service.fetch(body)

    async def fetch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await server.handle("Fetch", provider_pb2.FetchRequest, request, context, fetch_body)

    async def store(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await server.handle(
            "Store", provider_pb2.StoreRequest, request, context, server.service.store
        )

    async def settle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await server.handle(
            "Settle", provider_pb2.SettleRequest, request, context, server.service.settle
        )

    async def inventory(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await server.handle(
            "Inventory", provider_pb2.InventoryRequest, request, context, server.service.inventory
        )

    def serialize(message: Message) -> bytes:
        return message.SerializeToString()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=None, response_serializer=serialize
            )
            for name, handler in (
                ("Fetch", fetch),
                ("Store", store),
                ("Settle", settle),
                ("Inventory", inventory),
            )
        },
    )


def _retired_keys(settings: DepartmentSettings) -> list[SigningKey]:
    """The department's retired signing keys in its keystore (``signing.*.retired.key``),
    which may have sealed Stores left pending before a key rotation; an unsafe or unreadable
    one is logged and skipped."""
    directory = settings.keystore.department_dir(settings.department_id)
    found: list[SigningKey] = []
    for path in sorted(directory.glob("signing.*.retired.key")):
        try:
            found.append(load_signing_key(path))
        except KeyFileError as exc:
            log.warning("retired_key_skipped", error=str(exc))
    return found


def server_credentials(tls: TlsIdentity) -> grpc.ServerCredentials:
    """TLS with the department's certificate, requiring a client certificate from the CA.

    gRPC-Python cannot ask for a client certificate without requiring it, so a caller without
    one fails the handshake; a caller with a certificate of the CA that does not name the hub is
    refused per call (PERMISSION_DENIED / NOT_FROM_HUB).
    """
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
    )


class ProviderServer:
    """A department's running adapter: ``await start()`` returns the port, ``await stop()``."""

    def __init__(
        self,
        settings: DepartmentSettings,
        backend: Backend,
        *,
        signing_key: SigningKey | None = None,
        tls: TlsIdentity | None = None,
        hub_public_key: bytes | None = None,
    ) -> None:
        """Prepare an adapter; keys not given are loaded from the settings' keystore.

        Raises exchange.crypto.keys.KeyFileError for a missing or unsafe key file.
        """
        self.settings = settings
        self.backend = backend
        keystore = settings.keystore
        self.tls = tls or keystore.department_tls(settings.department_id)
        key = signing_key or keystore.department_signing_key(settings.department_id)
        self.service = ProviderService(
            settings.department_id,
            backend,
            key,
            (
                PendingFile(settings.pending_stores, key, _retired_keys(settings))
                if settings.pending_stores is not None
                else None
            ),
        )
        self.authenticator = HubAuthenticator(
            settings.hub_id,
            hub_public_key or load_public_key(settings.hub_public_key),
            settings.replay_window_seconds * 1_000_000,
        )
        # Calls received per method (Fetch, Store, Settle, Inventory), whatever their outcome.
        self.calls: Counter[str] = Counter()
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                *SERVER_OPTIONS,  # a port in use is refused, never shared
            ]
        )
        self.server.add_generic_rpc_handlers((_handlers(self),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self) -> int:
        """Check every mapping against the source, bind, serve; return the bound port.

        Raises adapters.errors.MappingError for a mapping naming a missing table, column or
        file, BackendError if the source cannot be reached, exchange.rpc.ports.AddressInUse if
        the address is taken ("address already in use").
        """
        # Reflection does blocking I/O; keep it off the loop (other servers may share it).
        await asyncio.to_thread(self.backend.validate)
        await asyncio.to_thread(self.service.survey)
        # Stores a previous run left pending are held again before anything is served.
        await asyncio.to_thread(self.service.recover)
        self.port = bind(self.server, self.settings.listen, server_credentials(self.tls))
        await self.server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "adapter_serving",
            department=self.settings.department_id,
            listen=self.settings.listen,
            port=self.port,
            material_types=list(self.backend.material_types()),
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Turn health NOT_SERVING, let in-flight calls finish within ``grace`` s, close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        await asyncio.to_thread(self.backend.close)
        if self.service.pending_file is not None:
            await asyncio.to_thread(self.service.pending_file.close)
        log.info("adapter_stopped", department=self.settings.department_id)

    async def wait(self) -> None:
        """Wait until the server terminates."""
        await self.server.wait_for_termination()

    async def handle(
        self,
        method: str,
        body_type: type[Body],
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        serve: Callable[[Body, bytes], Awaitable[Answer]],
    ) -> Answer:
        """Decode, authenticate, serve (with the SHA-256 of the envelope's bytes), and map
        refusals; one log event per call, no personal data."""
        started = time.perf_counter()
        self.calls[method] += 1
        outcome = "OK"
        material_type = ""
        try:
            envelope = envelope_checks.parse_envelope(request)
            body = self.authenticator.authenticate(peer_certificate(context), envelope, body_type)
            material_type = getattr(body, "material_type", "")
            digest = hashlib.sha256(envelope.SerializeToString(deterministic=True)).digest()
            # The hub's trace continues here when this process traces (W3C traceparent).
            with tracing.span(f"adapter.{method}", context.invocation_metadata() or ()):
                return await serve(body, digest)
        except errors.ExchangeError as error:
            outcome = error.reason_name
            await abort(context, to_status(error))
        except grpc.aio.AbortError:
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            outcome = "INTERNAL_ERROR"
            log.exception("adapter_call_failed", method=method, incident=incident)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the log"
            )
        finally:
            log.info(
                "adapter_call",
                method=method,
                material_type=material_type[:128],
                outcome=outcome,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        raise AssertionError("unreachable")  # abort raises
