"""Content identity follows docs/content-hash.md byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import struct

from hypothesis import given
from hypothesis import strategies as st

from exchange.crypto.content import ContentKeys, canonical_subject_id, content_encoding

SECRET = bytes(range(32))
VECTOR_ENCODING = (
    "0000001465786368616e67652e76312e6d6174657269616c0000000f6d617272696167652d7265636f7264"
    "00000012393930313031313939303031303130303139000000020000000e6d61726974616c5f73746174"
    "7573000000076d6172726965640000000b73706f7573655f6e616d6500000006e69d8ee59b9b"
)
FIELDS = {"spouse_name": "李四", "marital_status": "married"}


def lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def test_encoding_matches_the_documented_vector() -> None:
    encoding = content_encoding("marriage-record", "990101199001010019", FIELDS)
    assert encoding.hex() == VECTOR_ENCODING


def test_keys_and_hashes_reproduce_from_the_spec_alone() -> None:
    keys = ContentKeys.derive(SECRET)
    content_key = hmac.new(SECRET, b"exchange.v1/content-hash", hashlib.sha256).digest()
    expected = hmac.new(content_key, bytes.fromhex(VECTOR_ENCODING), hashlib.sha256).digest()
    assert keys.content_hash("marriage-record", "990101199001010019", FIELDS) == expected
    assert (
        keys.subject_ref(" 99010119900101001x ")
        == hmac.new(SECRET, b"99010119900101001X", hashlib.sha256).digest()
    )
    field_key = hmac.new(SECRET, b"exchange.v1/field-hash", hashlib.sha256).digest()
    encoded = (
        lp("exchange.v1.field")
        + lp("marriage-record")
        + lp("990101199001010019")
        + lp("marital_status")
        + lp("married")
    )
    assert (
        keys.field_hashes("marriage-record", "990101199001010019", FIELDS)["marital_status"]
        == hmac.new(field_key, encoded, hashlib.sha256).digest()
    )


def test_subject_is_part_of_the_hash() -> None:
    keys = ContentKeys.derive(SECRET)
    assert keys.content_hash("t", "A", {"x": "1"}) != keys.content_hash("t", "B", {"x": "1"})


def test_references_are_deterministic_per_version() -> None:
    keys = ContentKeys.derive(SECRET)
    ref = keys.subject_ref("S")
    assert keys.reference("t", ref, 1) == keys.reference("t", ref, 1)
    assert keys.reference("t", ref, 1) != keys.reference("t", ref, 2)


names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@given(st.dictionaries(names, st.text(max_size=20), max_size=8), st.randoms())
def test_field_order_never_changes_the_hash(fields: dict[str, str], rnd: object) -> None:
    keys = ContentKeys.derive(SECRET)
    items = list(fields.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert keys.content_hash("t", "S", dict(items)) == keys.content_hash("t", "S", fields)


@given(st.text(max_size=20))
def test_nfc_equivalent_values_hash_the_same(text: str) -> None:
    import unicodedata

    keys = ContentKeys.derive(SECRET)
    nfd = unicodedata.normalize("NFD", text)
    assert keys.content_hash("t", "S", {"v": nfd}) == keys.content_hash("t", "S", {"v": text})


def test_canonical_subject_id() -> None:
    assert canonical_subject_id(" 11010519491231002x\n") == "11010519491231002X"
