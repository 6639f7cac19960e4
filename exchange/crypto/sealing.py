"""Sealing stored answers to the request that asked for them.

The hub keeps each call's answer for idempotent retries. An answer can carry personal data (the
material a Request delivered), so it is stored encrypted (AES-256-GCM) under a key derived from
the request's disclosure — the personal data that travels beside the signed payload, with 32
random bytes of salt, and that the hub never stores. Only a retry of the same request, which
carries the same disclosure, can open the stored answer; a copy of the database cannot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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


AT_REST_LABEL = b"exchange.v1/at-rest"
SEALED_TEXT = "sealed:v1:"


class AtRest:
    """Seals personal data the hub must keep for a while, under a key the database never holds.

    Used where no disclosure comes with a later read to seal to: the answers kept for retries of
    calls that carry no disclosure (ListObjections answers hold objections' proposed values) and
    the reasons and proposed values of objections and correction proposals, waiting for their
    owner. The key is derived from the hub's subject secret, which lives in the keystore: a copy
    of the database alone opens none of it. Each sealed value is bound to its context (the
    objection id, say) as associated data, so a sealed value moved to another row does not open.
    """

    def __init__(self, secret: bytes) -> None:
        self.secret = hmac.new(secret, AT_REST_LABEL, hashlib.sha256).digest()
        self._aead = AESGCM(self.secret)

    def seal(self, data: bytes, context: bytes) -> bytes:
        """``data`` encrypted and bound to ``context``."""
        nonce = _nonce()
        return SEALED + nonce + self._aead.encrypt(nonce, data, AT_REST_LABEL + context)

    def open(self, stored: bytes, context: bytes) -> bytes:
        """The data sealed by ``seal`` with this context. Raises SealError."""
        if stored[:1] != SEALED:
            raise SealError("not a sealed value")
        try:
            return self._aead.decrypt(stored[1:13], stored[13:], AT_REST_LABEL + context)
        except InvalidTag as exc:
            raise SealError("the sealed value does not open here") from exc

    def seal_text(self, text: str, context: str) -> str:
        """``text`` sealed, as text (for a text column)."""
        sealed = self.seal(text.encode("utf-8"), context.encode("utf-8"))
        return SEALED_TEXT + base64.b64encode(sealed).decode("ascii")

    def open_text(self, stored: str, context: str) -> str:
        """The text sealed by ``seal_text``; text stored before sealing existed is returned as
        it is. Raises SealError if a sealed value does not open."""
        if not stored.startswith(SEALED_TEXT):
            return stored
        data = base64.b64decode(stored[len(SEALED_TEXT) :])
        return self.open(data, context.encode("utf-8")).decode("utf-8")
