"""libsodium's Ed25519 as the hub calls it: directly (keeping the GIL) and through PyNaCl's
bindings (the fallback) give the same answers, which are RFC 8032's."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.crypto import sodium


@pytest.fixture(params=["direct", "bindings"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "direct" and not sodium.HOLDS_GIL:
        pytest.skip("this PyNaCl does not export libsodium's symbols; only the bindings run")
    if request.param == "bindings":
        monkeypatch.setattr(sodium, "_DIRECT", None)
    return str(request.param)


def _keypair() -> tuple[Ed25519PrivateKey, bytes, bytes]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private, public, seed + public


def test_signatures_match_rfc8032_and_check(mode: str) -> None:
    for size in (0, 1, 63, 64, 1000, 70_000):
        private, public, secret = _keypair()
        message = os.urandom(size)
        signature = sodium.sign_detached(message, secret)
        assert signature == private.sign(message)  # deterministic: the same bytes
        assert sodium.verify_detached(signature, message, public)
        assert not sodium.verify_detached(signature, message + b"\0", public)
        assert not sodium.verify_detached(bytes(64), message, public)


def test_wrong_lengths_are_invalid_or_refused(mode: str) -> None:
    _, public, secret = _keypair()
    signature = sodium.sign_detached(b"m", secret)
    assert not sodium.verify_detached(signature[:63], b"m", public)
    assert not sodium.verify_detached(signature + b"\0", b"m", public)
    assert not sodium.verify_detached(signature, b"m", public[:31])
    assert not sodium.verify_detached(signature, b"m", public + b"\0")
    with pytest.raises(ValueError, match="64 bytes"):
        sodium.sign_detached(b"m", secret[:32])


def test_messages_with_nul_bytes_are_signed_whole(mode: str) -> None:
    _, public, secret = _keypair()
    message = b"before\0after"
    signature = sodium.sign_detached(message, secret)
    assert sodium.verify_detached(signature, message, public)
    assert not sodium.verify_detached(signature, b"before", public)


def test_bytes_like_input_is_accepted(mode: str) -> None:
    _, public, secret = _keypair()
    message = bytearray(b"form 7")
    signature = sodium.sign_detached(memoryview(message), bytearray(secret))
    assert sodium.verify_detached(bytearray(signature), memoryview(message), bytearray(public))


def test_long_messages_are_checked_without_holding_the_gil_and_agree(mode: str) -> None:
    private, public, secret = _keypair()
    message = os.urandom(sodium.GIL_KEPT_UP_TO + 1)  # through PyNaCl's bindings
    signature = sodium.sign_detached(message, secret)
    assert signature == private.sign(message)
    assert sodium.verify_detached(signature, message, public)
    assert not sodium.verify_detached(signature, message[:-1], public)


def test_numbers_and_text_are_not_bytes(mode: str) -> None:
    _, public, secret = _keypair()
    with pytest.raises(TypeError):
        sodium.sign_detached(5, secret)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sodium.verify_detached(bytes(64), "text", public)  # type: ignore[arg-type]
