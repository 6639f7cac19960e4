"""Sealing stored answers to the request that asked for them.

The hub keeps each call's answer for idempotent retries. An answer can carry personal data (the
material a Request delivered), so it is stored encrypted (AES-256-GCM) under a key derived from
the request's disclosure — the personal data that travels beside the signed payload, with 32
random bytes of salt, and that the hub never stores. Only a retry of the same request, which
carries the same disclosure, can open the stored answer; a copy of the database cannot.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PLAIN = b"\x00"
SEALED = b"\x01"
LABEL = b"exchange.v1/sealed-answer"


class SealError(Exception):
    """A sealed answer cannot be opened with this disclosure."""


# AES-GCM nonces: a random 4-byte field per process and a 64-bit invocation counter (the
# deterministic construction of NIST SP 800-38D), so no nonce repeats under any key; reading the
# system's randomness per answer would release the GIL on the hub's busiest thread.
_NONCE_FIELD = os.urandom(4)
_invocations = itertools.count(1)


def _nonce() -> bytes:
    return _NONCE_FIELD + struct.pack(">Q", next(_invocations))


def _key(disclosure: bytes) -> bytes:
    return hashlib.sha256(LABEL + disclosure).digest()


def seal(answer: bytes, disclosure: bytes) -> bytes:
    """The stored form of ``answer``: sealed to ``disclosure`` if there is one, else plain."""
    if not disclosure:
        return PLAIN + answer
    nonce = _nonce()
    return SEALED + nonce + AESGCM(_key(disclosure)).encrypt(nonce, answer, LABEL)


def unseal(stored: bytes, disclosure: bytes) -> bytes:
    """The answer from its stored form. Raises SealError if it cannot be opened."""
    kind, body = stored[:1], stored[1:]
    if kind == PLAIN:
        return body
    if kind != SEALED or not disclosure:
        raise SealError("the stored answer is sealed to a disclosure this request lacks")
    try:
        return AESGCM(_key(disclosure)).decrypt(body[:12], body[12:], LABEL)
    except InvalidTag as exc:
        raise SealError("the stored answer does not open with this disclosure") from exc
