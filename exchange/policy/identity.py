"""Authentication of every call: certificate, envelope signature, key validity, freshness.

The checks, in order (docs/security.md lists them too): a client certificate is present; the
envelope carries the payload type of the method and at most four signatures; its payload decodes as
that body; the envelope and its body hold only fields the contract defines, with values in range
(exchange.policy.payload); the body's header is complete (the checks so far are shared with the
provider adapter's authenticator: exchange.policy.envelope_checks); the certificate names the
department of the header; the department is registered (the hub operator is known by the hub id)
and, if the registry pins a certificate, presented that one; a signature verifies under a key of
that department (an envelope with none is malformed); that key is not revoked and inside its
validity (not before ``valid_from``, not rotated out); the department is active; the issue time
is inside the replay window. State and freshness come after the signature so that an
unauthenticated caller learns nothing about a department's state or the hub's clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from exchange import errors
from exchange.clock import now_us
from exchange.crypto.envelope import EnvelopeError, verify
from exchange.membership import MemberState, Role
from exchange.policy import envelope_checks
from exchange.policy.envelope_checks import REQUEST_ID
from exchange.store.registry import DepartmentRecord, KeyRecord
from exchange.v1 import common_pb2, envelope_pb2, registry_pb2

Body = TypeVar("Body", bound=Message)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated call: who, with which key, and the exact bytes they signed."""

    department_id: str
    roles: frozenset[Role]
    is_operator: bool
    keyid: str
    request_id: str
    issued_us: int
    envelope_bytes: bytes
    envelope_sha256: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """What a refused call claimed to be, for its ledger entry (nothing here is verified)."""

    department_id: str
    request_id: str
    envelope_bytes: bytes


def envelope_bytes(envelope: envelope_pb2.Envelope) -> bytes:
    """The canonical bytes of an envelope as stored beside its ledger entry."""
    return envelope.SerializeToString(deterministic=True)


def claim_of(envelope: envelope_pb2.Envelope, peer_department: str | None) -> Claim:
    """Best-effort identity of a call, for recording its refusal; nothing here is trusted."""
    department = peer_department or ""
    request_id = ""
    # Field 1 of every body is the header, so any body type reads it (other fields are kept as
    # unknown fields and ignored).
    probe = registry_pb2.ListDepartmentsRequest()
    try:
        probe.ParseFromString(envelope.payload)
    except DecodeError:
        pass
    else:
        department = department or probe.header.department_id[:128]
        if REQUEST_ID.match(probe.header.request_id):
            request_id = probe.header.request_id
    return Claim(department or "unknown", request_id, envelope_bytes(envelope))


def _usable(key: KeyRecord, now: int) -> None:
    """Raise Unauthenticated (KEY_REVOKED, KEY_EXPIRED) unless ``key`` may sign at ``now``."""
    if key.usable_at(now):
        return
    # Not usable: say why. Revocation wins over the validity window. A key whose validity has
    # not begun is known to the registry, so it is reported as outside its validity
    # (KEY_EXPIRED), not as UNKNOWN_KEY (docs/api.md).
    keyid = key.keyid
    if key.revoked_us is not None and key.revoked_us <= now:
        raise errors.Unauthenticated(
            common_pb2.KEY_REVOKED, f"signing key {keyid[:16]}… was revoked"
        )
    if now < key.valid_from_us:
        raise errors.Unauthenticated(
            common_pb2.KEY_EXPIRED, f"signing key {keyid[:16]}… is not valid yet"
        )
    raise errors.Unauthenticated(
        common_pb2.KEY_EXPIRED, f"signing key {keyid[:16]}… was rotated out"
    )


class Authenticator:
    """Turns a raw envelope and the peer's certificate into a Caller, or refuses."""

    def __init__(
        self,
        hub_id: str,
        operator_keys: Callable[[], Sequence[KeyRecord]],
        lookup: Callable[[str], DepartmentRecord | None],
        replay_window_us: int,
    ) -> None:
        """``operator_keys`` gives the operator's public keys, current and past: the operator
        (the caller named ``hub_id``) signs with a key of its own, never the hub's."""
        self.hub_id = hub_id
        self.operator_keys = operator_keys
        self.lookup = lookup
        self.replay_window_us = replay_window_us

    def authenticate(
        self,
        peer_certificate: bytes | None,
        envelope: envelope_pb2.Envelope,
        body_type: type[Body],
    ) -> tuple[Caller, Body]:
        """Authenticate one call and decode its body.

        Raises errors.Unauthenticated, errors.InvalidArgument or errors.PermissionDenied with the
        matching contract reason.
        """
        peer = envelope_checks.peer_identity(peer_certificate)
        envelope_checks.check_form(envelope, body_type)
        body, header = envelope_checks.open_body(envelope, body_type)
        if peer.department_id != header.department_id:
            raise errors.Unauthenticated(
                common_pb2.CERTIFICATE_MISMATCH,
                f"the client certificate names {errors.quote(peer.department_id)}, the request "
                f"{errors.quote(header.department_id)}",
            )
        now = now_us()
        if header.department_id == self.hub_id:
            roles: frozenset[Role] = frozenset()
            state = MemberState.ACTIVE
            is_operator = True
            records: Sequence[KeyRecord] = self.operator_keys()
        else:
            department = self.lookup(header.department_id)
            if department is None:
                raise errors.Unauthenticated(
                    common_pb2.UNKNOWN_DEPARTMENT,
                    f"department {errors.quote(header.department_id)} is not registered",
                )
            if department.certificate_sha256 and department.certificate_sha256 != (
                peer.certificate_sha256
            ):
                raise errors.Unauthenticated(
                    common_pb2.CERTIFICATE_MISMATCH,
                    f"the client certificate is not the one registered for {department.id!r}",
                )
            roles = department.roles
            state = department.state
            is_operator = False
            records = department.keys
        keys = {k.keyid: k.public_key for k in records}

        try:
            verified = verify(envelope, keys.get)
        except EnvelopeError as exc:
            known = any(s.keyid in keys for s in envelope.signatures)
            reason = common_pb2.BAD_SIGNATURE if known else common_pb2.UNKNOWN_KEY
            if not envelope.signatures:
                reason = common_pb2.MALFORMED_ENVELOPE
            error_type = (
                errors.InvalidArgument if not envelope.signatures else errors.Unauthenticated
            )
            raise error_type(reason, str(exc)) from exc
        _usable(next(k for k in records if k.keyid == verified.keyid), now)
        if state != MemberState.ACTIVE:
            raise errors.PermissionDenied(
                common_pb2.DEPARTMENT_INACTIVE,
                f"department {errors.quote(header.department_id)} is {state.lower()}",
            )
        issued = envelope_checks.check_fresh(header, now, self.replay_window_us)
        data = envelope_bytes(envelope)
        caller = Caller(
            department_id=header.department_id,
            roles=roles,
            is_operator=is_operator,
            keyid=verified.keyid,
            request_id=header.request_id,
            issued_us=issued,
            envelope_bytes=data,
            envelope_sha256=hashlib.sha256(data).digest(),
        )
        return caller, body
