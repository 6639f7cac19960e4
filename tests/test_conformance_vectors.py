"""The conformance vectors (tests/vectors/conformance/) hold for this implementation.

The same files are checked by the JavaScript client (clients/js); a client in any language can
check itself against them. Where a value can be computed from first principles (hashlib, hmac,
PyNaCl, the DSSE specification's own example) it is, not only through the project's code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from exchange.crypto.content import ContentKeys, content_encoding, field_encoding
from exchange.crypto.envelope import pae, verify
from exchange.crypto.forwarding import answers, forwarded_binding, forwarded_id
from exchange.crypto.subject import SubjectIdError, SubjectIdScheme, check, normalise
from exchange.ledger import Receipt, merkle, verify_receipt
from exchange.ledger.checkpoint import verify_checkpoint
from exchange.v1 import envelope_pb2, exchange_pb2
from tests.vectors.conformance import generate

VECTORS = Path(__file__).parent / "vectors" / "conformance"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def test_the_committed_vectors_are_what_the_code_makes() -> None:
    made = {
        "pae.json": generate.pae_vectors(),
        "envelope.json": generate.envelope_vectors(),
        "disclosure.json": generate.disclosure_vectors(),
        "content.json": generate.content_vectors(),
        "subject_ids.json": generate.subject_id_vectors(),
        "forwarded_ids.json": generate.forwarded_vectors(),
        "checkpoint.json": generate.checkpoint_vectors(),
    }
    assert sorted(p.name for p in VECTORS.glob("*.json")) == sorted(made)
    for name, data in made.items():
        assert load(name) == data, f"{name} is stale: python -m tests.vectors.conformance.generate"


def test_pae() -> None:
    cases = load("pae.json")["cases"]
    # The DSSE specification's own example.
    assert bytes.fromhex(cases[0]["pae_hex"]) == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    for case in cases:
        got = pae(case["payload_type"], bytes.fromhex(case["payload_hex"]))
        assert got.hex() == case["pae_hex"]


def test_envelope_signature() -> None:
    v = load("envelope.json")
    signer = nacl.signing.SigningKey(bytes.fromhex(v["seed_hex"]))
    assert bytes(signer.verify_key).hex() == v["public_key_hex"]
    assert hashlib.sha256(bytes.fromhex(v["public_key_hex"])).hexdigest() == v["keyid"]
    message = pae(v["payload_type"], bytes.fromhex(v["payload_hex"]))
    assert signer.sign(message).signature.hex() == v["signature_hex"]
    envelope = envelope_pb2.Envelope.FromString(bytes.fromhex(v["envelope_hex"]))
    keys = {v["keyid"]: bytes.fromhex(v["public_key_hex"])}
    assert verify(envelope, keys.get).keyid == v["keyid"]


def test_disclosure() -> None:
    v = load("disclosure.json")
    disclosure = bytes.fromhex(v["disclosure_hex"])
    parsed = exchange_pb2.CheckRequest.FromString(disclosure)
    assert parsed.subject_id == v["personal_fields"]["subject_id"]
    assert parsed.header.disclosure_salt.hex() == v["salt_hex"]
    assert hashlib.sha256(disclosure).hexdigest() == v["disclosure_sha256_hex"]
    signed = exchange_pb2.CheckRequest.FromString(bytes.fromhex(v["signed_payload_hex"]))
    assert signed.header.disclosure_sha256.hex() == v["disclosure_sha256_hex"]
    assert not signed.subject_id
    envelope = envelope_pb2.Envelope.FromString(bytes.fromhex(v["envelope_hex"]))
    assert envelope.disclosure == disclosure
    assert envelope.payload.hex() == v["signed_payload_hex"]


def test_content_identity() -> None:
    v = load("content.json")
    secret = bytes.fromhex(v["subject_secret_hex"])
    keys = ContentKeys.derive(secret)
    for name, label in (
        ("content_key_hex", b"exchange.v1/content-hash"),
        ("field_key_hex", b"exchange.v1/field-hash"),
        ("reference_key_hex", b"exchange.v1/reference"),
    ):
        assert hmac.new(secret, label, hashlib.sha256).hexdigest() == v["keys"][name]
    mt, subject, fields = v["material_type"], v["subject_id"], v["fields"]
    encoding = bytes.fromhex(v["content_encoding_hex"])
    assert content_encoding(mt, subject, fields) == encoding
    assert hmac.new(keys.content_key, encoding, hashlib.sha256).hexdigest() == v["content_hash_hex"]
    assert keys.content_hash(mt, subject, fields).hex() == v["content_hash_hex"]
    for name, value in fields.items():
        field_bytes = bytes.fromhex(v["field_encodings_hex"][name])
        assert field_encoding(mt, subject, name, value) == field_bytes
        expected = hmac.new(keys.field_key, field_bytes, hashlib.sha256).hexdigest()
        assert expected == v["field_hashes_hex"][name]
    ref = hmac.new(secret, subject.encode(), hashlib.sha256).digest()
    assert ref.hex() == v["subject_ref_hex"] == keys.subject_ref(subject).hex()
    for version, reference in v["references"].items():
        data = len(mt).to_bytes(4, "big") + mt.encode() + ref + int(version).to_bytes(8, "big")
        mac = hmac.new(keys.reference_key, data, hashlib.sha256).hexdigest()
        assert reference == "m-" + mac[:32]


@pytest.mark.parametrize("case", load("subject_ids.json")["cases"], ids=lambda c: c["input"])
def test_subject_id(case: dict[str, Any]) -> None:
    assert normalise(case["input"]) == case["normal"]
    try:
        assert check(case["input"], SubjectIdScheme(case["scheme"])) == case["normal"]
        valid = True
    except SubjectIdError:
        valid = False
    assert valid is case["valid"]


def test_the_published_example_ids_are_valid() -> None:
    # The standards' own examples, independent of this project's vectors.
    assert check("11010519491231002X", SubjectIdScheme.CN_RESIDENT_ID)
    assert check("91350100M000100Y43", SubjectIdScheme.CN_USCC)


def test_forwarded_ids() -> None:
    cases = load("forwarded_ids.json")["cases"]
    for case in cases:
        caller = case["caller_request_id"]
        assert hashlib.sha256(caller.encode()).hexdigest()[:32] == case["binding"]
        assert forwarded_binding(caller) == case["binding"]
        assert forwarded_id(caller, case["kind"], case["suffix"]) == case["forwarded_id"]
        assert len(case["forwarded_id"]) == 55
        assert answers(case["forwarded_id"], caller)
    # Two ids alike in their first 80 characters are told apart.
    assert not answers(cases[1]["forwarded_id"], cases[2]["caller_request_id"])


def test_checkpoint_and_receipts() -> None:
    v = load("checkpoint.json")
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(e)).digest() for e in v["entries_hex"]]
    assert [h.hex() for h in leaves] == v["leaf_hashes_hex"]
    assert merkle.root(leaves).hex() == v["root_hex"]
    public = bytes(nacl.signing.SigningKey(bytes.fromhex(v["seed_hex"])).verify_key)
    name = v["key_name"]
    keyid = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    assert keyid.hex() == v["note_keyid_hex"]
    encoded = base64.b64encode(b"\x01" + public).decode()
    assert v["verifier_key"] == f"{name}+{keyid.hex()}+{encoded}"
    checkpoint = verify_checkpoint(v["checkpoint_note"], [v["verifier_key"]])
    assert checkpoint.root_hash.hex() == v["root_hex"] and checkpoint.size == len(leaves)
    for item in v["receipts"]:
        receipt = Receipt(
            sequence=item["sequence"],
            leaf_hash=bytes.fromhex(item["leaf_hash_hex"]),
            checkpoint=item["checkpoint"],
            inclusion_proof=tuple(bytes.fromhex(p) for p in item["inclusion_proof_hex"]),
        )
        assert verify_receipt(receipt, [v["verifier_key"]]).size == len(leaves)
