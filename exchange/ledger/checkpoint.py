"""Checkpoints in the C2SP signed-note format (transparency-dev checkpoints).

A checkpoint's body is three newline-terminated lines: the log origin, the tree size in decimal,
and the base64 root hash. The note is the body, a blank line, and one signature line per signer:

    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature over the body)>

with an em dash (U+2014). For Ed25519 the key id is the first 4 bytes of
SHA-256(key name || 0x0A || 0x01 || 32-byte public key), and the verifier key is published as
``<name>+<hex key id>+<base64(0x01 || public key)>``. Verifiers ignore signatures by keys they
do not know; a note is valid if at least one known key signed it and every signature that claims
a known key verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from exchange.crypto.keys import SigningKey, verify_signature

ED25519_ALGORITHM = 0x01
SIGNATURE_PREFIX = "— "  # em dash U+2014 and a space
_MAX_NOTE = 64 * 1024


class CheckpointError(ValueError):
    """A checkpoint note is malformed, or is not signed by a trusted key."""


class UntrustedSigner(CheckpointError):
    """A well-formed checkpoint none of whose signatures is by a trusted key."""


def note_keyid(name: str, public_key: bytes) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key called ``name``."""
    data = name.encode("utf-8") + b"\n" + bytes([ED25519_ALGORITHM]) + public_key
    return hashlib.sha256(data).digest()[:4]


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise CheckpointError(f"key name {name!r} is empty or holds a space or '+'")


def verifier_key(name: str, public_key: bytes) -> str:
    """The standard verifier key string ``<name>+<hex key id>+<base64(0x01 || public key)>``.

    Raises CheckpointError for a name with whitespace or '+', or a key that is not 32 bytes.
    """
    _check_key_name(name)
    if len(public_key) != 32:
        raise CheckpointError("an Ed25519 public key has 32 bytes")
    encoded = base64.b64encode(bytes([ED25519_ALGORITHM]) + public_key).decode()
    return f"{name}+{note_keyid(name, public_key).hex()}+{encoded}"


def split_vkey(text: str, algorithm: int, what: str) -> tuple[str, bytes, bytes]:
    """The name, 4-byte key id and 32-byte Ed25519 key of ``<name>+<hex key id>+base64(
    algorithm || key)`` (the caller checks the id against the name and key, whose derivation
    depends on the algorithm). Raises CheckpointError naming ``what`` if it is malformed."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise CheckpointError(f"a {what} is <name>+<hex key id>+<base64 key>")
    name, hex_id, encoded = parts
    _check_key_name(name)
    try:
        keyid = bytes.fromhex(hex_id)
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise CheckpointError(f"{what} has a malformed key id or key") from exc
    if len(keyid) != 4 or len(raw) != 33 or raw[0] != algorithm:
        raise CheckpointError(f"{what} is not a 4-byte id and an Ed25519 key of its type")
    return name, keyid, raw[1:]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A parsed verifier key: name, 4-byte key id and raw Ed25519 public key."""

    name: str
    keyid: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> NoteVerifier:
        """Parse a verifier key string. Raises CheckpointError if it is malformed."""
        name, keyid, public_key = split_vkey(text, ED25519_ALGORITHM, "verifier key")
        if note_keyid(name, public_key) != keyid:
            raise CheckpointError("verifier key id does not match its name and key")
        return cls(name=name, keyid=keyid, public_key=public_key)

    def __str__(self) -> str:
        return verifier_key(self.name, self.public_key)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of (origin, size, root hash); ``note`` is the full signed-note text."""

    origin: str
    size: int
    root_hash: bytes
    note: str

    @property
    def body(self) -> bytes:
        """The signed body bytes."""
        return checkpoint_body(self.origin, self.size, self.root_hash)

    @classmethod
    def parse(cls, note: str) -> Checkpoint:
        """Parse a note without checking any signature. Raises CheckpointError if malformed."""
        body, _signatures = _split_note(note)
        origin, size, root_hash = _parse_body(body)
        return cls(origin=origin, size=size, root_hash=root_hash, note=note)

    def verify(self, verifiers: Iterable[NoteVerifier | str]) -> Checkpoint:
        """Return self if a known key signed it; see ``verify_checkpoint``."""
        verify_checkpoint(self.note, verifiers)
        return self


def checkpoint_body(origin: str, size: int, root_hash: bytes) -> bytes:
    """The body bytes: origin, decimal size and base64 root, each newline-terminated."""
    if not origin or "\n" in origin:
        raise CheckpointError("origin must be one non-empty line")
    if size < 0 or len(root_hash) != 32:
        raise CheckpointError("size must be >= 0 and the root 32 bytes")
    return f"{origin}\n{size}\n{base64.b64encode(root_hash).decode()}\n".encode()


def sign_checkpoint(
    origin: str, size: int, root_hash: bytes, signer: SigningKey, key_name: str
) -> Checkpoint:
    """Make a checkpoint signed by ``signer`` under the verifier key name ``key_name``."""
    _check_key_name(key_name)
    body = checkpoint_body(origin, size, root_hash)
    sig = signer.sign(body)
    keyid = note_keyid(key_name, signer.public_bytes)
    line = f"{SIGNATURE_PREFIX}{key_name} {base64.b64encode(keyid + sig).decode()}\n"
    note = body.decode() + "\n" + line
    return Checkpoint(origin=origin, size=size, root_hash=root_hash, note=note)


def add_signature(checkpoint: Checkpoint, signer: SigningKey, key_name: str) -> Checkpoint:
    """``checkpoint`` with one more signature line, by ``signer`` under ``key_name`` (a log key
    in its overlap period signs beside the current one)."""
    _check_key_name(key_name)
    body = checkpoint.body
    keyid = note_keyid(key_name, signer.public_bytes)
    line = f"{SIGNATURE_PREFIX}{key_name} {base64.b64encode(keyid + signer.sign(body)).decode()}\n"
    return Checkpoint(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        note=checkpoint.note + line,
    )


def _split_note(note: str) -> tuple[bytes, list[str]]:
    if len(note) > _MAX_NOTE:
        raise CheckpointError("note is too large")
    if not note.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    head, sep, tail = note.partition("\n\n")
    if not sep:
        raise CheckpointError("note has no blank line between body and signatures")
    lines = tail[:-1].split("\n") if tail else []
    if not lines or any(not line.startswith(SIGNATURE_PREFIX) for line in lines):
        raise CheckpointError("note has no signature lines, or a malformed one")
    return (head + "\n").encode("utf-8"), lines


def _parse_body(body: bytes) -> tuple[str, int, bytes]:
    lines = body.decode("utf-8").split("\n")[:-1]
    # Extension lines after the root are allowed by the format; this log writes none.
    if len(lines) < 3:
        raise CheckpointError("checkpoint body needs origin, size and root lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    if (
        not size_text.isascii()
        or not size_text.isdigit()
        or (len(size_text) > 1 and size_text[0] == "0")
    ):
        raise CheckpointError("checkpoint size is not a decimal number")
    try:
        root_hash = base64.b64decode(root_text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise CheckpointError("checkpoint root is not base64") from exc
    if len(root_hash) != 32:
        raise CheckpointError("checkpoint root is not 32 bytes")
    return origin, int(size_text), root_hash


def note_signers(note: str) -> list[str]:
    """The ``<name>+<hex key id>`` of every signature line of a note (unverified); empty if
    the note is malformed."""
    try:
        _body, lines = _split_note(note)
    except CheckpointError:
        return []
    signers = []
    for line in lines:
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            continue
        signers.append(f"{name}+{raw[:4].hex()}")
    return signers


def verify_checkpoint(note: str, verifiers: Iterable[NoteVerifier | str]) -> Checkpoint:
    """Parse ``note`` and check it is signed by at least one of ``verifiers``.

    Signatures by keys not among ``verifiers`` are ignored. Raises CheckpointError if the note
    is malformed, if a signature claiming a known key does not verify, or if no known key signed.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        parsed = NoteVerifier.parse(v) if isinstance(v, str) else v
        known[(parsed.name, parsed.keyid)] = parsed
    body, lines = _split_note(note)
    origin, size, root_hash = _parse_body(body)
    verified = False
    for line in lines:
        name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not space:
            raise CheckpointError("signature line has no key name")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise CheckpointError("signature line is not base64") from exc
        if len(raw) < 5:
            raise CheckpointError("signature line is too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue
        if not verify_signature(verifier.public_key, raw[4:], body):
            raise CheckpointError(f"signature by {name} does not verify")
        verified = True
    if not verified:
        raise UntrustedSigner(
            "checkpoint is not signed by a trusted key (it is signed by "
            f"{', '.join(note_signers(note)) or 'nobody'}; trusted: "
            f"{', '.join(f'{v.name}+{v.keyid.hex()}' for v in known.values()) or 'none'})"
        )
    return Checkpoint(origin=origin, size=size, root_hash=root_hash, note=note)
