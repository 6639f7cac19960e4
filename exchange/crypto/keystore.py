"""The local keystore: where the hub's and departments' keys and certificates live on disk.

Layout (documented in keys/README.md)::

    <root>/ca/ca.pem, ca.key                 development CA (replace with the government PKI)
    <root>/hub/signing.key, signing.pub      the hub's Ed25519 log key: checkpoints, receipts,
                                             forwarded requests
    <root>/operator/signing.key, signing.pub the operator's Ed25519 key: registry and catalog
                                             changes; the hub reads only signing.pub (move
                                             signing.key to the operator's machine)
    <root>/hub/signing.next.key, .pub        the next log key, during a rotation (signs beside
                                             the current one once the operator approved it)
    <root>/hub/subject.key                   HMAC secret for subject refs and content hashes
    <root>/hub/tls.pem, tls.key              the hub's TLS server certificate
    <root>/hub/client.pem, client.key        the operator's TLS client certificate (CN = hub id)
    <root>/departments/<id>/signing.key, signing.pub, tls.pem, tls.key

Every private file is written 0600 and refused when group- or world-readable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from exchange.crypto import certificates
from exchange.crypto.keys import (
    KeyFileError,
    SigningKey,
    load_public_key,
    load_signing_key,
    read_private,
    save_signing_key,
    write_private,
)

DEPARTMENT_ID = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,126}[a-z0-9])?$")
SUBJECT_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """PEM bytes of a certificate and its key, plus the CA bundle that anchors the peer."""

    certificate: bytes
    private_key: bytes
    ca: bytes


def check_department_id(department_id: str) -> str:
    """Return ``department_id`` if well formed (lowercase letters, digits, '.', '-'; 1–128).

    Raises ValueError otherwise.
    """
    if not DEPARTMENT_ID.match(department_id):
        raise ValueError(
            f"invalid department id {department_id!r}: use 1-128 lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit"
        )
    return department_id


def _new_signing_key(path: Path, instead: str) -> SigningKey:
    """Create a signing key at ``path`` (and its ``.pub``); KeyFileError if one is there."""
    if path.exists():
        raise KeyFileError(f"{path} exists; {instead}")
    key = SigningKey.generate()
    save_signing_key(path, key)
    return key


class Keystore:
    """Creates and loads the files under one keystore root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # paths -------------------------------------------------------------------------------
    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def operator_dir(self) -> Path:
        return self.root / "operator"

    def department_dir(self, department_id: str) -> Path:
        return self.root / "departments" / check_department_id(department_id)

    # creation ----------------------------------------------------------------------------
    def init_hub(self, hub_id: str, server_names: tuple[str, ...]) -> SigningKey:
        """Create the CA, the hub signing key, subject secret, TLS and operator certificates.

        Raises KeyFileError if the keystore already holds a hub key (never overwrites).
        """
        check_department_id(hub_id)
        if (self.hub_dir / "signing.key").exists():
            raise KeyFileError(f"{self.hub_dir / 'signing.key'} exists; the keystore is set up")
        self.root.mkdir(parents=True, exist_ok=True)
        ca = certificates.create_ca(f"{hub_id} development CA")
        self.ca_certificate.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.root / "ca" / "ca.key", ca.private_key_pem)
        self.ca_certificate.write_bytes(ca.certificate_pem)
        key = SigningKey.generate()
        save_signing_key(self.hub_dir / "signing.key", key)
        write_private(self.hub_dir / "subject.key", os.urandom(SUBJECT_KEY_BYTES))
        server = certificates.issue(ca, hub_id, server_names=server_names, client=False)
        write_private(self.hub_dir / "tls.key", server.private_key_pem)
        (self.hub_dir / "tls.pem").write_bytes(server.certificate_pem)
        operator = certificates.issue(ca, hub_id)
        write_private(self.hub_dir / "client.key", operator.private_key_pem)
        (self.hub_dir / "client.pem").write_bytes(operator.certificate_pem)
        if not (self.operator_dir / "signing.key").exists():
            self.init_operator()
        return key

    def init_operator(self) -> SigningKey:
        """Create the operator's signing key, apart from the hub's: the hub process never
        loads it (only ``signing.pub``). Raises KeyFileError if it exists (never overwrites).
        """
        return _new_signing_key(self.operator_dir / "signing.key", "rotate the operator's key")

    def add_department(
        self, department_id: str, *, server_names: tuple[str, ...] = ()
    ) -> SigningKey:
        """Create a department's Ed25519 key and a TLS certificate carrying its id.

        ``server_names`` makes the certificate usable by the department's provider adapter as
        its server certificate too. Raises KeyFileError if the CA is missing or the department
        already has a key.
        """
        directory = self.department_dir(department_id)
        if (directory / "signing.key").exists():
            raise KeyFileError(f"{directory / 'signing.key'} exists; use a rotation instead")
        ca = self._load_ca()
        key = SigningKey.generate()
        save_signing_key(directory / "signing.key", key)
        issued = certificates.issue(ca, department_id, server_names=server_names)
        write_private(directory / "tls.key", issued.private_key_pem)
        (directory / "tls.pem").write_bytes(issued.certificate_pem)
        return key

    def add_next_key(self, department_id: str) -> SigningKey:
        """Create a department's next signing key (``signing.next.key``) beside its current one,
        for ``exchange registry rotate --next``; the current key keeps signing until then.

        Raises KeyFileError if the department has no key yet or a next key is already waiting.
        """
        directory = self.department_dir(department_id)
        if not (directory / "signing.key").exists():
            raise KeyFileError(
                f"{directory / 'signing.key'} not found (run `exchange keys department`)"
            )
        if (directory / "signing.next.key").exists():
            raise KeyFileError(
                f"{directory / 'signing.next.key'} exists; rotate to it or remove it first"
            )
        key = SigningKey.generate()
        save_signing_key(directory / "signing.next.key", key)
        return key

    def next_key(self, department_id: str) -> SigningKey:
        """Load a department's waiting next key. Raises KeyFileError."""
        return load_signing_key(self.department_dir(department_id) / "signing.next.key")

    def promote_next_key(self, department_id: str) -> Path:
        """Make the next key the department's signing key, once the hub has rotated to it; the
        old key is kept as ``signing.<keyid prefix>.retired.key``. Returns where it went.
        Raises KeyFileError."""
        directory = self.department_dir(department_id)
        current = self.department_signing_key(department_id)
        self.next_key(department_id)  # refuses a missing or unsafe file before moving anything
        retired = directory / f"signing.{current.keyid[:16]}.retired.key"
        (directory / "signing.key").replace(retired)
        if (directory / "signing.pub").exists():
            (directory / "signing.pub").replace(retired.with_suffix(".pub"))
        (directory / "signing.next.key").replace(directory / "signing.key")
        if (directory / "signing.next.pub").exists():
            (directory / "signing.next.pub").replace(directory / "signing.pub")
        return retired

    # loading -----------------------------------------------------------------------------
    def _load_ca(self) -> certificates.IssuedCertificate:
        key_path = self.root / "ca" / "ca.key"
        if not key_path.exists():
            raise KeyFileError(f"no development CA under {self.root} (run `exchange keys init`)")
        return certificates.IssuedCertificate(
            self.ca_certificate.read_bytes(), read_private(key_path)
        )

    def hub_signing_key(self) -> SigningKey:
        """Load the hub's signing key. Raises KeyFileError."""
        return load_signing_key(self.hub_dir / "signing.key")

    def operator_signing_key(self) -> SigningKey:
        """Load the operator's signing key (the operator's CLI only). Raises KeyFileError."""
        return load_signing_key(self.operator_dir / "signing.key")

    def operator_public_key(self) -> bytes:
        """The public half of the operator's key, which the hub verifies operator calls with.
        Raises KeyFileError."""
        return load_public_key(self.operator_dir / "signing.pub")

    def init_next_hub_key(self) -> SigningKey:
        """Create the hub's next log key (``hub/signing.next.key``) for a rotation. Raises
        KeyFileError if one exists."""
        return _new_signing_key(
            self.hub_dir / "signing.next.key", "a log key rotation is under way"
        )

    def hub_next_signing_key(self) -> SigningKey | None:
        """The hub's next log key during a rotation, or None. Raises KeyFileError if unsafe."""
        path = self.hub_dir / "signing.next.key"
        return load_signing_key(path) if path.exists() else None

    def subject_key(self) -> bytes:
        """Load the hub's HMAC secret for subject refs. Raises KeyFileError."""
        secret = read_private(self.hub_dir / "subject.key")
        if len(secret) < SUBJECT_KEY_BYTES:
            raise KeyFileError(f"{self.hub_dir / 'subject.key'} is shorter than 32 bytes")
        return secret

    def hub_server_tls(self) -> TlsIdentity:
        """The hub's TLS server identity. Raises KeyFileError."""
        return self._tls(self.hub_dir / "tls.pem", self.hub_dir / "tls.key")

    def operator_tls(self) -> TlsIdentity:
        """The operator's TLS client identity. Raises KeyFileError."""
        return self._tls(self.hub_dir / "client.pem", self.hub_dir / "client.key")

    def department_signing_key(self, department_id: str) -> SigningKey:
        """Load a department's signing key. Raises KeyFileError."""
        return load_signing_key(self.department_dir(department_id) / "signing.key")

    def department_tls(self, department_id: str) -> TlsIdentity:
        """A department's TLS identity (client, and server for its adapter). Raises KeyFileError."""
        directory = self.department_dir(department_id)
        return self._tls(directory / "tls.pem", directory / "tls.key")

    def _tls(self, certificate: Path, key: Path) -> TlsIdentity:
        try:
            return TlsIdentity(
                certificate=certificate.read_bytes(),
                private_key=read_private(key),
                ca=self.ca_certificate.read_bytes(),
            )
        except FileNotFoundError as exc:
            raise KeyFileError(f"{exc.filename} not found (run `exchange keys …`)") from exc
