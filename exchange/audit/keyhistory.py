"""What the verifier checks of an envelope's body against its entry and the key history.

The ledger itself knows nothing of departments: ``verify.py`` checks the chain, the tree, the
checkpoints and that an OK entry's envelope is signed by a key of ``actor`` valid at ``time``
according to the export's key records. Those key records are written by the hub and not signed,
so on their own they prove nothing against a dishonest hub. This module is the hook that ties
them, and each envelope, to facts the hub cannot forge without the operator's key:

- **binding**: the signed body of every verified envelope starts with an
  ``exchange.v1.RequestHeader`` (field 1 of every request body) whose ``department_id`` is the
  entry's ``actor`` and whose ``request_id`` is the entry's ``request_id`` (when it has one), so
  an envelope of another call cannot be placed beside an entry; every other field the entry
  takes from the body is checked by ``binding``;
- **freshness**: the entry's time lies within the hub's replay window of the header's
  ``issued_at`` (plus an allowance for the call's run), and no (actor, request id) is recorded
  by two OK entries (streams excepted: they are not claimed by id), so a signed request
  replayed later is not a second call;
- **the operator** is the actor whose key records carry a pinned operator key (its first keys,
  apart from the hub key that signs checkpoints); its later keys are those its own signed
  rotations introduce, and a record of the operator with any other key is not trusted;
- **introduction**: a department key verifies an entry only if an earlier OK
  ``DEPARTMENT_REGISTRATION`` or ``KEY_ROTATION`` entry of the operator, whose operator-signed
  body carries that public key, introduced it for that department (attribute ``keyid``);
- **revocation**: a key named by an earlier OK ``KEY_REVOCATION`` entry of the operator does not
  verify entries later than that entry's time, whatever the key record says; likewise a key
  rotated out by a later ``KEY_ROTATION`` of its department, once the rotation's signed
  ``grace_seconds`` have passed after that entry's time.

The checks run in two places: ``inspect`` in the verifier's worker processes (per entry, no
state) and ``start`` / ``observe`` in the parent, in log order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING, NamedTuple

from google.protobuf.message import DecodeError

from exchange.audit import binding
from exchange.crypto.keys import keyid as keyid_of
from exchange.v1 import envelope_pb2, ledger_pb2, registry_pb2

if TYPE_CHECKING:
    from exchange.audit.verify import Verified

Problem = tuple[str, str]  # (FailureReason member name, message)

_REGISTER = "exchange.v1.RegisterDepartmentRequest"
_ROTATE = "exchange.v1.RotateKeyRequest"
_REVOKE = "exchange.v1.RevokeKeyRequest"
_UPDATE = "exchange.v1.UpdateDepartmentRequest"
_INTRODUCING = (ledger_pb2.DEPARTMENT_REGISTRATION, ledger_pb2.KEY_ROTATION)
_REGISTRY = frozenset({*_INTRODUCING, ledger_pb2.KEY_REVOCATION})


@dataclass(frozen=True, slots=True)
class Introduced:
    """Facts of a registry entry whose body introduces a key for a department."""

    department: str
    keyid: str
    public_key: bytes
    grace_ns: int | None = None  # a rotation: how long the department's earlier keys stay valid


@dataclass(frozen=True, slots=True)
class Revoked:
    """Facts of a registry entry that revokes a key of a department."""

    department: str
    keyid: str


Facts = Introduced | Revoked | None

# The hub refuses a request issued more than its replay window from its clock (5 minutes by
# default); the entry is sequenced after the call ran, which may take a while longer.
ISSUE_WINDOW_NS = 300 * 1_000_000_000
CALL_ALLOWANCE_NS = 60 * 1_000_000_000


class Seen(NamedTuple):
    """What ``inspect`` passes to ``observe``: the request id that may occur once (empty for
    a stream, which is not claimed by id) and the registry facts of the entry."""

    once: str
    registry: Facts


_NOTHING = Seen("", None)
_PLAIN = frozenset({str, type(None)})  # the facts of an entry that registers nothing
_PURGE_EVERY = 65536


def issued_window_holds(issued_ns: int, time_ns: int, window_ns: int) -> bool:
    """True if an entry sequenced at ``time_ns`` can record a request issued at ``issued_ns``
    that the hub accepted with a replay window of ``window_ns``."""
    return issued_ns - window_ns <= time_ns <= issued_ns + window_ns + CALL_ALLOWANCE_NS


def _mismatch(message: str) -> list[Problem]:
    return [("ENVELOPE_ENTRY_MISMATCH", message)]


def _registry_facts(
    entry: ledger_pb2.LedgerEntry, envelope: envelope_pb2.Envelope
) -> tuple[list[Problem], Facts]:
    department = entry.counterparty
    named = entry.attributes.get("keyid", "")
    try:
        if entry.kind == ledger_pb2.DEPARTMENT_REGISTRATION and envelope.payload_type == _UPDATE:
            # A change of the record (name, roles, endpoint, …) introduces no key: binding
            # checks that it names the entry's department.
            return [], None
        if entry.kind in _INTRODUCING:
            if envelope.payload_type == _REGISTER:
                register = registry_pb2.RegisterDepartmentRequest.FromString(envelope.payload)
                body_department = register.department.id
                keys = register.department.keys
                public_key = keys[0].public_key if len(keys) == 1 else b""
                grace: int | None = None
            elif envelope.payload_type == _ROTATE:
                rotate = registry_pb2.RotateKeyRequest.FromString(envelope.payload)
                body_department, public_key = rotate.department_id, rotate.new_public_key
                grace = rotate.grace_seconds * 1_000_000_000
            else:
                return _mismatch(f"a key registration carries a {envelope.payload_type!r}"), None
            if body_department != department:
                return _mismatch(
                    f"the body registers {body_department!r}, the entry {department!r}"
                ), None
            if len(public_key) != 32 or keyid_of(public_key) != named:
                return _mismatch(
                    f"the body's public key is not the entry's keyid {named[:16]!r}"
                ), None
            return [], Introduced(department, named, public_key, grace)
        if entry.kind == ledger_pb2.KEY_REVOCATION:
            if envelope.payload_type != _REVOKE:
                return _mismatch(f"a key revocation carries a {envelope.payload_type!r}"), None
            revoke = registry_pb2.RevokeKeyRequest.FromString(envelope.payload)
            if revoke.department_id != department or revoke.keyid != named:
                return _mismatch("the body revokes another key than the entry names"), None
            return [], Revoked(department, named)
    except DecodeError:
        return _mismatch(f"the payload is not a valid {envelope.payload_type!r}"), None
    return [], None


@dataclass(slots=True)
class RegistryAudit:
    """The default hook of ``verify_export``: binding, operator, introduction and revocation."""

    issue_window_ns: int = ISSUE_WINDOW_NS
    operator: str | None = None
    _operator_keys: set[str] = field(default_factory=set)
    _record_keys: dict[tuple[str, str], bytes] = field(default_factory=dict)
    _introduced: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    _revoked: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _rotated_out: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    # (actor, request id) -> (sequence, time), for entries recent enough that a replay of
    # theirs could still be inside the issue window (older replays fail that check instead)
    _recent: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _purge_at: int = _PURGE_EVERY

    # ------------------------------------------------------------ worker side

    def inspect(
        self, entry: ledger_pb2.LedgerEntry, envelope: envelope_pb2.Envelope, time_ns: int
    ) -> tuple[list[Problem], Seen | str | None]:
        """For an OK entry (sequenced at ``time_ns``) whose envelope verified: problems found in
        its body, and the facts ``observe`` needs (most entries: just the request id that may
        occur once, which is cheaper to send back than a ``Seen``). Stateless: runs in the
        verifier's worker processes, once per entry, so it reads each field once."""
        payload_type = envelope.payload_type
        try:
            body = binding.parse(payload_type, envelope.payload)
        except DecodeError:
            return _mismatch("the signed payload is not a request body with a header"), _NOTHING
        header = body.header
        actor, department = entry.actor, header.department_id
        if department != actor:
            return _mismatch(
                f"the envelope is a request of {department!r}, the entry's actor is {actor!r}"
            ), _NOTHING
        recorded, request_id = entry.request_id, header.request_id
        if recorded and request_id != recorded:
            return _mismatch(
                f"the envelope is request {request_id[:128]!r}, the entry records {recorded!r}"
            ), _NOTHING
        mismatches = binding.mismatches(entry, payload_type, body)
        problems: list[Problem] = (
            [("ENVELOPE_ENTRY_MISMATCH", message) for message in mismatches] if mismatches else []
        )
        issued_at = header.issued_at  # Timestamp.ToNanoseconds, without its Python call
        issued = issued_at.seconds * 1_000_000_000 + issued_at.nanos
        if not issued_window_holds(issued, time_ns, self.issue_window_ns):
            problems.append(
                (
                    "OUTSIDE_ISSUE_WINDOW",
                    f"request {request_id[:128]!r} was issued "
                    f"{(time_ns - issued) / 1e9:+.0f} s from the entry's time; the hub accepts "
                    f"±{self.issue_window_ns / 1e9:.0f} s: a replayed or re-dated request",
                )
            )
        once = "" if payload_type in binding.UNCLAIMED else request_id
        if entry.kind in _REGISTRY:
            registry_problems, facts = _registry_facts(entry, envelope)
            problems.extend(registry_problems)
            return problems, Seen(once, facts)
        return problems, once or None

    # ------------------------------------------------------------ parent side

    def start(
        self,
        keys: Mapping[str, Sequence[tuple[str, bytes, int, int | None, int | None]]],
        operator_keys: Sequence[bytes],
    ) -> list[Problem]:
        """Take the export's key records (by actor: keyid, public key, from, until, revoked)
        and the operator's pinned first public keys; return problems of the export as a
        whole."""
        pinned = set(operator_keys)
        self._operator_keys = {keyid_of(k) for k in pinned}
        claimants = sorted(
            actor for actor, records in keys.items() if any(r[1] in pinned for r in records)
        )
        for actor, records in keys.items():
            for record in records:
                self._record_keys[(actor, record[0])] = record[1]
        if len(claimants) > 1:
            return [
                (
                    "UNREGISTERED_KEY",
                    "key records give the pinned operator key to several actors: "
                    f"{', '.join(claimants)}",
                )
            ]
        self.operator = claimants[0] if claimants else None
        return []

    def observe(
        self, sequence: int, time_ns: int, actor: str, keyid: str, facts: object
    ) -> list[Problem]:
        """An OK entry whose envelope verified under ``keyid`` of ``actor``, in log order:
        check that key's standing and that its request was not recorded before, then learn
        what the entry registers."""
        problems: list[Problem] = []
        if type(facts) is str:
            once, facts = facts, None
        else:
            seen = facts if isinstance(facts, Seen) else _NOTHING
            once, facts = seen.once, seen.registry
        if once:
            replayed = self._once(sequence, time_ns, (actor, once))
            if replayed is not None:
                problems.append(replayed)
        if actor == self.operator:
            standing = self._operator_standing(time_ns, actor, keyid)
            problems.extend(standing)
            if standing:
                return problems
            if isinstance(facts, Introduced) and facts.department == actor:
                # the operator's own rotation: its new key signs from this entry on, and its
                # other keys end after the signed grace period
                end = time_ns + (facts.grace_ns or 0)
                for old in self._operator_keys - {facts.keyid}:
                    earlier = self._rotated_out.get((actor, old))
                    if earlier is None or end < earlier[1]:
                        self._rotated_out[(actor, old)] = (sequence, end)
                self._operator_keys.add(facts.keyid)
            elif isinstance(facts, Introduced):
                if facts.grace_ns is not None:
                    # a rotation ends every earlier key of the department after its grace
                    for department, old in self._introduced:
                        if department == facts.department and old != facts.keyid:
                            self._rotated_out.setdefault(
                                (department, old), (sequence, time_ns + facts.grace_ns)
                            )
                self._introduced.setdefault(
                    (facts.department, facts.keyid), (sequence, facts.public_key)
                )
            elif isinstance(facts, Revoked):
                self._revoked.setdefault((facts.department, facts.keyid), (sequence, time_ns))
            return problems
        key = (actor, keyid)
        introduced = self._introduced.get(key)
        if introduced is None or introduced[1] != self._record_keys.get(key):
            problems.append(
                (
                    "UNREGISTERED_KEY",
                    f"key {keyid[:16]}… of {actor!r} was never introduced by an operator-signed "
                    "registration or rotation entry with that public key",
                )
            )
        revoked = self._revoked.get(key)
        if revoked is not None and time_ns > revoked[1]:
            problems.append(
                (
                    "REVOKED_KEY_USED",
                    f"key {keyid[:16]}… of {actor!r} was revoked by entry {revoked[0]}",
                )
            )
        rotated = self._rotated_out.get(key)
        if rotated is not None and time_ns > rotated[1]:
            problems.append(
                (
                    "REVOKED_KEY_USED",
                    f"key {keyid[:16]}… of {actor!r} was rotated out by entry {rotated[0]} and "
                    "its grace period is over",
                )
            )
        return problems

    def observe_chunk(self, verified: Verified) -> list[tuple[int, str, str]]:
        """``observe`` for a chunk's entries, in log order: problems by position. Most chunks
        hold no registry entry, no entry of the operator, no key with a revocation or rotation
        on record and no request id seen before; for them the whole chunk is checked at once,
        in C-level set and dictionary operations. Any other chunk is observed an entry at a
        time, from the same state (the quick check changes nothing unless it passes)."""
        if self._quiet(verified):
            return []
        found: list[tuple[int, str, str]] = []
        for sequence, time_ns, actor, keyid, facts in zip(*verified, strict=True):
            for reason, message in self.observe(sequence, time_ns, actor, keyid, facts):
                found.append((sequence, reason, message))
        return found

    def _quiet(self, verified: Verified) -> bool:
        """True, with the state updated as ``observe`` would, if no entry of the chunk can
        have a problem here or changes the key history (see ``observe_chunk``)."""
        positions, times, actors, keyids, facts = verified
        if not positions:
            return True
        if not set(map(type, facts)) <= _PLAIN:
            return False  # a registry entry: learns or checks the key history in order
        for key in set(zip(actors, keyids, strict=True)):
            introduced = self._introduced.get(key)
            if (
                key[0] == self.operator
                or introduced is None
                or introduced[1] != self._record_keys.get(key)
                or key in self._revoked
                or key in self._rotated_out
            ):
                return False
        # every (actor, request id) once: new in the chunk and not recorded recently
        claims = zip(actors, facts, strict=True)
        at = zip(positions, times, strict=True)
        claimed = list(compress(zip(claims, at, strict=True), facts))
        first = dict(claimed)
        if len(first) != len(claimed) or not self._recent.keys().isdisjoint(first):
            return False
        self._recent.update(first)
        if len(self._recent) >= self._purge_at:
            self._purge(times[-1])
        return True

    def _purge(self, time_ns: int) -> None:
        """Forget request ids too old for a replay of theirs to pass the window check, in
        bulk: the parent's per-entry work stays a dictionary lookup and insert."""
        horizon = time_ns - 2 * self.issue_window_ns - CALL_ALLOWANCE_NS
        self._recent = {k: v for k, v in self._recent.items() if v[1] >= horizon}
        self._purge_at = max(_PURGE_EVERY, 2 * len(self._recent))

    def _once(self, sequence: int, time_ns: int, key: tuple[str, str]) -> Problem | None:
        recent = self._recent
        earlier = recent.get(key)
        if earlier is not None:
            return (
                "REQUEST_RECORDED_TWICE",
                f"request {key[1][:128]!r} of {key[0]!r} is already recorded as OK entry "
                f"{earlier[0]}: a replayed request",
            )
        recent[key] = (sequence, time_ns)
        if len(recent) >= self._purge_at:
            self._purge(time_ns)
        return None

    def _operator_standing(self, time_ns: int, actor: str, keyid: str) -> list[Problem]:
        if keyid not in self._operator_keys:
            return [
                (
                    "UNREGISTERED_KEY",
                    f"the operator {actor!r} signed with key {keyid[:16]}…, neither a pinned "
                    "operator key nor one introduced by the operator's signed rotation",
                )
            ]
        rotated = self._rotated_out.get((actor, keyid))
        if rotated is not None and time_ns > rotated[1]:
            return [
                (
                    "REVOKED_KEY_USED",
                    f"the operator's key {keyid[:16]}… was rotated out by entry {rotated[0]} "
                    "and its grace period is over",
                )
            ]
        return []
