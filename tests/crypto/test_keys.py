from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.crypto import certificates
from exchange.crypto.keys import KeyFileError, SigningKey, load_signing_key, verify_signature
from exchange.crypto.keystore import Keystore


def test_init_writes_private_files_0600(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost",))
    private = [p for p in (tmp_path / "keys").rglob("*") if p.suffix == ".key"]
    assert {p.name for p in private} >= {
        "ca.key",
        "signing.key",
        "subject.key",
        "tls.key",
        "client.key",
    }
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_group_readable_private_key_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost",))
    path = store.hub_dir / "signing.key"
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(path)


def test_init_never_overwrites_an_existing_keystore(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost",))
    with pytest.raises(KeyFileError, match="exists"):
        store.init_hub("hub", ("localhost",))


def test_department_certificate_carries_the_department_id(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost",))
    store.add_department("js.nj.civil-affairs")
    identity = certificates.peer_identity(store.department_tls("js.nj.civil-affairs").certificate)
    assert identity.department_id == "js.nj.civil-affairs"
    assert len(identity.certificate_sha256) == 64


@pytest.mark.parametrize("bad", ["", "UPPER", "-x", "a b", "x" * 200, "a/b"])
def test_invalid_department_ids_are_refused(tmp_path: Path, bad: str) -> None:
    store = Keystore(tmp_path / "keys")
    store.init_hub("hub", ("localhost",))
    with pytest.raises(ValueError, match="invalid department id"):
        store.add_department(bad)


def test_signatures_are_rfc8032_ed25519_and_verification_never_raises() -> None:
    key = SigningKey.generate()
    message = b"exchange.v1 test message"
    signature = key.sign(message)
    # The same bytes as any RFC 8032 implementation (here: OpenSSL's, through cryptography).
    assert signature == key.private.sign(message)
    Ed25519PublicKey.from_public_bytes(key.public_bytes).verify(signature, message)
    assert verify_signature(key.public_bytes, signature, message)
    # Bytes-like input verifies like bytes.
    assert verify_signature(bytearray(key.public_bytes), memoryview(signature), message)
    # Anything else is simply invalid.
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    other = SigningKey.generate().public_bytes
    for public, sig, data in (
        (key.public_bytes, signature, message + b"!"),
        (key.public_bytes, tampered, message),
        (other, signature, message),
        (key.public_bytes[:31], signature, message),
        (key.public_bytes, signature[:63], message),
        (key.public_bytes, signature + b"\0", message),
        (b"\0" * 32, b"\0" * 64, message),
        (None, signature, message),
        ("not bytes", signature, message),
    ):
        assert verify_signature(public, sig, data) is False  # type: ignore[arg-type]
