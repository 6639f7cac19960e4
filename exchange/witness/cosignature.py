"""Witness cosignatures (C2SP tlog-cosignature, Ed25519 ``cosignature/v1``) and the witness
policy an auditor holds: k of n named witness keys.

A cosignature is a signed-note signature line on a checkpoint,

    — <witness name> base64(4-byte key id || 8-byte big-endian timestamp || 64-byte signature)

whose key id is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` and whose Ed25519 signature
covers ``cosignature/v1\\n``, ``time <timestamp>\\n`` and the checkpoint body. It says: as of
that time, this is the largest consistent tree head the witness has seen for the log. A witness
key is published as the verifier key ``<name>+<hex key id>+base64(0x04 || public key)``.

This module is pure (no I/O): the hub, the witness server, the CLI and the department-side
SDK all use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exchange.crypto.keys import SigningKey, verify_signature
from exchange.ledger.checkpoint import (
    SIGNATURE_PREFIX,
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    split_vkey,
    verify_checkpoint,
)

COSIGNATURE_ALGORITHM = 0x04
HEADER = b"cosignature/v1\n"
_MAX_TIMESTAMP = 2**63 - 1


class QuorumError(CheckpointError):
    """A checkpoint does not carry the cosignatures a witness policy requires."""


def witness_keyid(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 cosigner called ``name``."""
    data = name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_ALGORITHM]) + public_key
    return hashlib.sha256(data).digest()[:4]


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness's name, 4-byte key id and raw Ed25519 public key."""

    name: str
    keyid: bytes
    public_key: bytes

    @classmethod
    def of(cls, name: str, public_key: bytes) -> WitnessKey:
        """The key of witness ``name``. Raises CheckpointError for a bad name or key."""
        if not name or any(c.isspace() or c == "+" for c in name):
            raise CheckpointError(f"witness name {name!r} is empty or holds a space or '+'")
        if len(public_key) != 32:
            raise CheckpointError("an Ed25519 public key has 32 bytes")
        return cls(name, witness_keyid(name, public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        """Parse ``<name>+<hex key id>+base64(0x04 || key)``. Raises CheckpointError."""
        name, keyid, public_key = split_vkey(text, COSIGNATURE_ALGORITHM, "witness key")
        key = cls.of(name, public_key)
        if key.keyid != keyid:
            raise CheckpointError("witness key id does not match its name and key")
        return key

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes([COSIGNATURE_ALGORITHM]) + self.public_key).decode()
        return f"{self.name}+{self.keyid.hex()}+{encoded}"


def signed_message(body: bytes, timestamp: int) -> bytes:
    """What a cosignature signs: the header line, the time line and the checkpoint body."""
    return HEADER + f"time {timestamp}\n".encode() + body


def cosign(checkpoint: Checkpoint, key: SigningKey, name: str, timestamp: int | None = None) -> str:
    """The cosignature line (newline-terminated) of witness ``name`` on ``checkpoint``, dated
    ``timestamp`` (POSIX seconds; default now)."""
    moment = int(time.time()) if timestamp is None else timestamp
    if not 0 <= moment <= _MAX_TIMESTAMP:
        raise CheckpointError("a cosignature timestamp is 0 to 2^63-1")
    witness = WitnessKey.of(name, key.public_bytes)
    signature = key.sign(signed_message(checkpoint.body, moment))
    blob = witness.keyid + moment.to_bytes(8, "big") + signature
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def cosignature_time(note: str, witness: WitnessKey) -> int | None:
    """The time of ``witness``'s valid cosignature on ``note``, or None if it has none.

    Raises CheckpointError if the note is malformed or a line claiming the witness's key does
    not verify (a forged cosignature is an error, not an absence).
    """
    checkpoint = Checkpoint.parse(note)
    body = checkpoint.body
    _, _, tail = note.partition("\n\n")
    found: int | None = None
    for line in tail[:-1].split("\n"):
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if name != witness.name:
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise CheckpointError("signature line is not base64") from exc
        if raw[:4] != witness.keyid:
            continue
        if len(raw) != 4 + 8 + 64:
            raise CheckpointError(f"cosignature by {name} is not 76 bytes")
        moment = int.from_bytes(raw[4:12], "big")
        if moment > _MAX_TIMESTAMP or not verify_signature(
            witness.public_key, raw[12:], signed_message(body, moment)
        ):
            raise CheckpointError(f"cosignature by {name} does not verify")
        found = moment
    return found


def add_cosignatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with the signature ``lines`` appended (each newline-terminated), skipping
    lines it already carries."""
    present = set(note.partition("\n\n")[2].split("\n"))
    extra = [line for line in lines if line.rstrip("\n") not in present]
    return note + "".join(line if line.endswith("\n") else line + "\n" for line in extra)


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """Trust a checkpoint only if at least ``quorum`` of ``witnesses`` cosigned it."""

    witnesses: tuple[WitnessKey, ...]
    quorum: int

    def __post_init__(self) -> None:
        if not 0 < self.quorum <= len(self.witnesses):
            raise CheckpointError(
                f"a quorum of {self.quorum} needs 1 to {len(self.witnesses)} named witnesses"
            )

    @classmethod
    def parse(cls, witnesses: Sequence[str], quorum: int | None = None) -> WitnessPolicy:
        """A policy over witness key strings; ``quorum`` defaults to all of them."""
        keys = tuple(WitnessKey.parse(text) for text in witnesses)
        return cls(keys, len(keys) if quorum is None else quorum)

    def cosigners(self, note: str) -> list[WitnessKey]:
        """The policy's witnesses that validly cosigned ``note``. Raises CheckpointError for
        a malformed note or a forged cosignature by one of them."""
        return [w for w in self.witnesses if cosignature_time(note, w) is not None]

    def require_quorum(self, note: str) -> None:
        """Raise QuorumError, naming who cosigned and who is missing, unless ``quorum`` of the
        witnesses validly cosigned ``note`` (the log's own signature is not checked here)."""
        signed = self.cosigners(note)
        if len(signed) < self.quorum:
            missing = [w.name for w in self.witnesses if w not in signed]
            size = Checkpoint.parse(note).size
            raise QuorumError(
                f"checkpoint of size {size} has {len(signed)} of the {self.quorum} witness "
                f"cosignatures the policy requires (cosigned by: "
                f"{', '.join(w.name for w in signed) or 'none'}; missing: {', '.join(missing)})"
            )

    def check(self, note: str, log_keys: Iterable[NoteVerifier | str]) -> Checkpoint:
        """Verify the log's signature and the quorum; return the checkpoint.

        Raises QuorumError naming who cosigned and who is missing, CheckpointError for a bad
        log signature.
        """
        checkpoint = verify_checkpoint(note, log_keys)
        self.require_quorum(note)
        return checkpoint
