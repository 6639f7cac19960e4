"""Ed25519 signing keys: identifiers, loading with permission checks, writing 0600.

Keys are read and written with ``cryptography`` (PKCS#8 PEM); signatures are made and checked
with libsodium (``exchange.crypto.sodium``), whose Ed25519 is about twice as fast as OpenSSL 3's
and whose signatures are the same bytes (Ed25519 is deterministic, RFC 8032). The hub checks two
signatures and makes one on every Request, so this is on its hottest path.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.crypto import sodium


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or readable by others than its owner."""


def keyid(public_key: bytes) -> str:
    """Return the key id of a raw 32-byte Ed25519 public key: lowercase hex SHA-256 of it."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key with its raw public key and key id."""

    private: Ed25519PrivateKey
    public_bytes: bytes
    keyid: str
    _secret: bytes = field(repr=False)  # libsodium's form: seed || public key

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a fresh random key."""
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        """Wrap an existing private key."""
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(private=private, public_bytes=raw, keyid=keyid(raw), _secret=seed + raw)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return sodium.sign_detached(data, self._secret)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Return True if ``signature`` is a valid Ed25519 signature of ``data`` under ``public_key``.

    A malformed key or signature is simply invalid: this never raises.
    """
    try:  # verify_detached checks (and converts) any bytes-like value itself
        return sodium.verify_detached(signature, data, public_key)
    except TypeError:  # not bytes-like
        return False


def write_private(path: Path, data: bytes) -> None:
    """Write secret bytes to ``path`` with mode 0600, refusing to overwrite an existing file.

    Raises KeyFileError if the file exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a private key") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # the umask may have narrowed it further; never wider


def read_private(path: Path) -> bytes:
    """Read secret bytes from ``path``, refusing a file that group or others can read.

    Raises KeyFileError with a message that says how to fix the permissions.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"private key {path} not found (run `exchange keys init`)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    return path.read_bytes()


def load_signing_key(path: Path) -> SigningKey:
    """Load an Ed25519 private key from a PKCS#8 PEM file written 0600.

    Raises KeyFileError if the file is missing, too open, or not an Ed25519 key.
    """
    data = read_private(path)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return SigningKey.from_private(private)


def save_signing_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` as PKCS#8 PEM (0600) and its raw public key hex beside it (``.pub``)."""
    write_private(path, key.private_pem())
    path.with_suffix(".pub").write_text(key.public_bytes.hex() + "\n")


def load_public_key(path: Path) -> bytes:
    """Read a raw Ed25519 public key written as hex by ``save_signing_key``.

    Raises KeyFileError if the file is missing or not 32 bytes of hex.
    """
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError as exc:
        raise KeyFileError(f"public key {path} not found") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a hex public key") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{path} holds {len(raw)} bytes, an Ed25519 public key has 32")
    return raw
