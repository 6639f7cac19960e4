"""Content identity: subject refs, keyed content hashes and per-field hashes, references.

Specified byte for byte in docs/content-hash.md, so any language with HMAC-SHA256 reproduces
it. Everything is keyed under the hub's subject secret (keys/hub/subject.key): material often
has little entropy (a marital status, a birth date), so a bare hash could be reversed by
guessing. Keys for the different uses are derived from that secret and never mixed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from exchange.crypto.subject import normalise

CONTENT_LABEL = "exchange.v1.material"
FIELD_LABEL = "exchange.v1.field"


def canonical_subject_id(subject_id: str) -> str:
    """The subject id as hashed and forwarded: its normal form (exchange.crypto.subject:
    NFKC, every whitespace character removed, ASCII letters upper-cased)."""
    return normalise(subject_id)


def lp(text: str) -> bytes:
    """Length-prefixed UTF-8 of ``text`` in NFC: 4-byte big-endian byte length, then bytes."""
    data = unicodedata.normalize("NFC", text).encode("utf-8")
    return struct.pack(">I", len(data)) + data


def content_encoding(material_type: str, subject_id: str, fields: Mapping[str, str]) -> bytes:
    """The canonical encoding of a material: label, type, subject, count, then sorted fields.

    Fields are sorted by the UTF-8 bytes of their names; values must already be in the
    canonical form of their type (exchange.catalog.schema).
    """
    parts = [lp(CONTENT_LABEL), lp(material_type), lp(subject_id), struct.pack(">I", len(fields))]
    for name in sorted(fields, key=lambda n: unicodedata.normalize("NFC", n).encode("utf-8")):
        parts.append(lp(name))
        parts.append(lp(fields[name]))
    return b"".join(parts)


def field_encoding(material_type: str, subject_id: str, name: str, value: str) -> bytes:
    """The canonical encoding of one field of a material."""
    return _field_prefix(material_type, subject_id) + lp(name) + lp(value)


def _field_prefix(material_type: str, subject_id: str) -> bytes:
    """What every field encoding of one material begins with."""
    return lp(FIELD_LABEL) + lp(material_type) + lp(subject_id)


def _mac(key: bytes, data: bytes) -> bytes:
    # hmac.new, not the one-shot hmac.digest: the one-shot releases the GIL around even a tiny
    # message, and on a busy hub getting it back costs up to the interpreter's switch interval
    # (5 ms) when another thread takes it meanwhile; the HMAC object keeps it for small inputs.
    return hmac.new(key, data, hashlib.sha256).digest()


def _derive(secret: bytes, label: str) -> bytes:
    return _mac(secret, label.encode("ascii"))


@dataclass(frozen=True, slots=True)
class ContentKeys:
    """The keys derived from the hub's subject secret, one per use."""

    subject_key: bytes
    content_key: bytes
    field_key: bytes
    reference_key: bytes

    @classmethod
    def derive(cls, subject_secret: bytes) -> ContentKeys:
        """Derive every key from the 32-byte secret in keys/hub/subject.key."""
        return cls(
            subject_key=subject_secret,
            content_key=_derive(subject_secret, "exchange.v1/content-hash"),
            field_key=_derive(subject_secret, "exchange.v1/field-hash"),
            reference_key=_derive(subject_secret, "exchange.v1/reference"),
        )

    def subject_ref(self, subject_id: str) -> bytes:
        """HMAC-SHA256(subject secret, UTF-8 of the canonical subject id)."""
        data = canonical_subject_id(subject_id).encode("utf-8")
        return _mac(self.subject_key, data)

    def content_hash(self, material_type: str, subject_id: str, fields: Mapping[str, str]) -> bytes:
        """Keyed hash of a whole material (every field)."""
        encoding = content_encoding(material_type, canonical_subject_id(subject_id), fields)
        return _mac(self.content_key, encoding)

    def field_hashes(
        self, material_type: str, subject_id: str, fields: Mapping[str, str]
    ) -> dict[str, bytes]:
        """Keyed hash of each field, by name."""
        subject = canonical_subject_id(subject_id)
        prefix = _field_prefix(material_type, subject)  # encoded once for every field
        return {
            name: _mac(self.field_key, prefix + lp(name) + lp(value))
            for name, value in fields.items()
        }

    def reference(self, material_type: str, subject_ref: bytes, version: int) -> str:
        """The reference of one version of a material: deterministic, opaque, keyed.

        Deterministic so that a retried or concurrent store of the same version names the same
        material at the provider.
        """
        data = lp(material_type) + subject_ref + struct.pack(">Q", version)
        return "m-" + _mac(self.reference_key, data).hex()[:32]
