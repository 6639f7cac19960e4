"""Ed25519 signing and checking through libsodium, without giving up the GIL.

PyNaCl's bindings (cffi) release the GIL around every libsodium call. For a check of about
50 µs that is a loss on a busy hub: the event loop's thread gives the GIL up, another thread (a
database writer, gRPC's poller) takes it, and the loop then waits to get it back, which was
measured at about 200 µs a check under load, several times the check itself. The hub makes two
checks and one signature on the loop for every Request, so these two functions are called
through ``ctypes.PyDLL``, which keeps the GIL, on the libsodium that PyNaCl's wheel links into
its extension module (which exports its symbols; a PyNaCl linked to a shared libsodium exposes
them through that module too). Where the symbols cannot be found, PyNaCl's own bindings are
used: same results, only slower under load. Messages above ``GIL_KEPT_UP_TO`` bytes (an 8 MiB
envelope takes some 20 ms to check) go through the bindings too, so that other threads, the
event loop among them, run meanwhile.

Lengths are checked here, before any pointer reaches C.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from typing import Any

import nacl.bindings
import nacl.exceptions

GIL_KEPT_UP_TO = 64 * 1024
PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64  # seed || public key
SIGNATURE_BYTES = 64


def _load() -> tuple[Callable[..., int], Callable[..., int]] | None:
    spec = importlib.util.find_spec("nacl._sodium")
    if spec is None or not spec.origin:
        return None
    try:
        library: Any = ctypes.PyDLL(spec.origin)
        sign = library.crypto_sign_detached
        verify = library.crypto_sign_verify_detached
        init = library.sodium_init
    except (OSError, AttributeError):
        return None
    init.restype = ctypes.c_int
    # int crypto_sign_detached(unsigned char *sig, unsigned long long *siglen,
    #                          const unsigned char *m, unsigned long long mlen,
    #                          const unsigned char *sk)
    sign.argtypes = [
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_ulonglong,
        ctypes.c_char_p,
    ]
    sign.restype = ctypes.c_int
    # int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m,
    #                                 unsigned long long mlen, const unsigned char *pk)
    verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    verify.restype = ctypes.c_int
    if init() < 0:  # 0: initialised now, 1: already (PyNaCl does it on import)
        return None
    return sign, verify


_DIRECT = _load()
HOLDS_GIL = _DIRECT is not None
"""Whether signing and checking keep the GIL (the direct calls were found)."""


def _bytes(value: object) -> bytes:
    """``value`` as bytes; TypeError unless it is bytes-like (``bytes(5)`` would be zeros).

    Typed ``object`` because the check is for callers that ignore the annotations."""
    if isinstance(value, int | str) or not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, not {type(value).__name__}")
    return bytes(value)


def sign_detached(message: bytes, secret_key: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` under a 64-byte libsodium secret key.

    Raises ValueError for a secret key of another length.
    """
    message, secret_key = _bytes(message), _bytes(secret_key)  # ctypes takes bytes only
    if len(secret_key) != SECRET_KEY_BYTES:
        raise ValueError(f"an Ed25519 secret key has {SECRET_KEY_BYTES} bytes")
    if _DIRECT is None or len(message) > GIL_KEPT_UP_TO:
        signed: bytes = nacl.bindings.crypto_sign(message, secret_key)
        return signed[:SIGNATURE_BYTES]
    out = ctypes.create_string_buffer(SIGNATURE_BYTES)
    if _DIRECT[0](out, None, message, len(message), secret_key) != 0:
        raise ValueError("libsodium could not sign")
    return out.raw


def verify_detached(signature: bytes, message: bytes, public_key: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public_key``.

    Strict (libsodium): non-canonical signatures and small-order keys are invalid. Wrong
    lengths are invalid; this never raises for bytes-like input (TypeError for anything else).
    """
    signature, message, public_key = _bytes(signature), _bytes(message), _bytes(public_key)
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if _DIRECT is None or len(message) > GIL_KEPT_UP_TO:
        try:
            nacl.bindings.crypto_sign_open(signature + message, public_key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True
    return _DIRECT[1](signature, message, len(message), public_key) == 0
