"""Write the conformance vectors of this directory (docs/clients.md): every byte-level rule a
client in any language must follow, as JSON inputs and expected outputs.

Run ``python -m tests.vectors.conformance.generate`` after a deliberate change of a rule; the
files are committed, and ``tests/test_conformance_vectors.py`` and ``clients/js`` check them.
Everything here is deterministic: fixed keys (Ed25519 signatures are deterministic), fixed salts
and fixed times.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.crypto.content import ContentKeys, content_encoding, field_encoding
from exchange.crypto.envelope import pae, sign
from exchange.crypto.forwarding import forwarded_binding, forwarded_id
from exchange.crypto.keys import SigningKey
from exchange.crypto.subject import SubjectIdError, SubjectIdScheme, check, normalise
from exchange.ledger import merkle
from exchange.ledger.checkpoint import note_keyid, sign_checkpoint, verifier_key
from exchange.v1 import exchange_pb2

HERE = Path(__file__).parent
SEED = bytes(range(32))
SUBJECT_SECRET = bytes(range(32))
SALT = bytes(range(100, 132))


def key() -> SigningKey:
    """The vectors' Ed25519 key: seed 0x00..0x1f."""
    return SigningKey.from_private(Ed25519PrivateKey.from_private_bytes(SEED))


def _write(name: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n"
    (HERE / name).write_text(text, encoding="utf-8")


def pae_vectors() -> dict[str, Any]:
    cases = [
        ("http://example.com/HelloWorld", b"hello world"),
        ("exchange.v1.CheckRequest", b""),
        ("exchange.v1.CheckRequest", bytes([0x0A, 0x00, 0xFF])),
    ]
    return {
        "rule": "DSSE v1 pre-authentication encoding (docs/security.md)",
        "cases": [
            {"payload_type": t, "payload_hex": p.hex(), "pae_hex": pae(t, p).hex()}
            for t, p in cases
        ],
    }


def _check_request() -> exchange_pb2.CheckRequest:
    body = exchange_pb2.CheckRequest(material_type="marriage-record", subject_id="")
    body.header.request_id = "vector-1"
    body.header.issued_at.seconds = 1_767_225_600  # 2026-01-01T00:00:00Z
    body.header.department_id = "js.nj.social-security"
    return body


def envelope_vectors() -> dict[str, Any]:
    signer = key()
    body = _check_request()
    body.header.disclosure_sha256 = bytes(32)
    payload = body.SerializeToString(deterministic=True)
    envelope = sign(payload, body.DESCRIPTOR.full_name, signer)
    return {
        "rule": "Envelope signing: Ed25519 over PAE(payload_type, payload); keyid = hex SHA-256 "
        "of the raw public key (docs/security.md)",
        "seed_hex": SEED.hex(),
        "public_key_hex": signer.public_bytes.hex(),
        "keyid": signer.keyid,
        "payload_type": body.DESCRIPTOR.full_name,
        "payload_hex": payload.hex(),
        "signature_hex": envelope.signatures[0].sig.hex(),
        "envelope_hex": envelope.SerializeToString(deterministic=True).hex(),
    }


def disclosure_vectors() -> dict[str, Any]:
    subject = "11010519491231002X"
    disclosure = exchange_pb2.CheckRequest(subject_id=subject)
    disclosure.header.disclosure_salt = SALT
    disclosed = disclosure.SerializeToString(deterministic=True)
    body = _check_request()
    body.header.disclosure_sha256 = hashlib.sha256(disclosed).digest()
    payload = body.SerializeToString(deterministic=True)
    envelope = sign(payload, body.DESCRIPTOR.full_name, key())
    envelope.disclosure = disclosed
    return {
        "rule": "The disclosure: personal fields and a 32-byte header.disclosure_salt in a "
        "message of the body's type; its SHA-256 in the signed header.disclosure_sha256 "
        "(docs/security.md)",
        "body_type": "exchange.v1.CheckRequest",
        "personal_fields": {"subject_id": subject},
        "salt_hex": SALT.hex(),
        "disclosure_hex": disclosed.hex(),
        "disclosure_sha256_hex": hashlib.sha256(disclosed).hexdigest(),
        "signed_payload_hex": payload.hex(),
        "envelope_hex": envelope.SerializeToString(deterministic=True).hex(),
    }


def content_vectors() -> dict[str, Any]:
    keys = ContentKeys.derive(SUBJECT_SECRET)
    material_type, subject = "marriage-record", "990101199001010019"
    fields = {"spouse_name": "李四", "marital_status": "married"}
    subject_ref = keys.subject_ref(subject)
    return {
        "rule": "Canonical field encoding, content hash, field hashes, subject ref, reference "
        "(docs/content-hash.md)",
        "subject_secret_hex": SUBJECT_SECRET.hex(),
        "material_type": material_type,
        "subject_id": subject,
        "fields": fields,
        "keys": {
            "content_key_hex": keys.content_key.hex(),
            "field_key_hex": keys.field_key.hex(),
            "reference_key_hex": keys.reference_key.hex(),
        },
        "content_encoding_hex": content_encoding(material_type, subject, fields).hex(),
        "content_hash_hex": keys.content_hash(material_type, subject, fields).hex(),
        "field_encodings_hex": {
            n: field_encoding(material_type, subject, n, v).hex() for n, v in fields.items()
        },
        "field_hashes_hex": {
            n: h.hex() for n, h in keys.field_hashes(material_type, subject, fields).items()
        },
        "subject_ref_hex": subject_ref.hex(),
        "references": {str(v): keys.reference(material_type, subject_ref, v) for v in (1, 2)},
    }


def subject_id_vectors() -> dict[str, Any]:
    inputs = [
        ("11010519491231002X", "CN_MAINLAND"),
        ("11010519491231002x", "CN_RESIDENT_ID"),
        (" 110105 19491231 002x ", "CN_MAINLAND"),
        ("１１０１０５１９４９１２３１００２Ｘ", "CN_MAINLAND"),
        ("110105\u300019491231002X", "CN_MAINLAND"),
        ("110105194912310021", "CN_MAINLAND"),  # wrong check character
        ("110105194902300024", "CN_RESIDENT_ID"),  # 30 February
        ("91350100M000100Y43", "CN_MAINLAND"),
        ("91350100m000100y43", "CN_USCC"),
        ("91350100M000100Y44", "CN_USCC"),  # wrong check character
        ("91350100M000100Y43", "CN_RESIDENT_ID"),
        ("11010519491231002X", "CN_USCC"),
        ("e 1234 5678", "OPAQUE"),
        ("", "OPAQUE"),
        ("12345", "CN_MAINLAND"),
    ]
    cases = []
    for text, scheme in inputs:
        case: dict[str, Any] = {"input": text, "scheme": scheme, "normal": normalise(text)}
        try:
            check(text, SubjectIdScheme(scheme))
            case["valid"] = True
        except SubjectIdError:
            case["valid"] = False
        cases.append(case)
    return {
        "rule": "Subject id normal form (NFKC, whitespace removed, ASCII upper case) and the "
        "schemes' checks (docs/content-hash.md)",
        "cases": cases,
    }


def forwarded_vectors() -> dict[str, Any]:
    ids = ["req-1", "r" * 128, "r" * 80 + "s" * 48]
    return {
        "rule": "Forwarded request ids: <first 32 hex of SHA-256(caller id)>/<kind>-<16 hex> "
        "(docs/api.md)",
        "cases": [
            {
                "caller_request_id": caller,
                "binding": forwarded_binding(caller),
                "kind": "fetch",
                "suffix": "0123456789abcdef",
                "forwarded_id": forwarded_id(caller, "fetch", "0123456789abcdef"),
            }
            for caller in ids
        ],
    }


def checkpoint_vectors() -> dict[str, Any]:
    signer = key()
    origin, name = "exchange.local/hub", "exchange.local/hub"
    entries = [f"entry {i}".encode() for i in range(7)]
    leaves = [merkle.leaf_hash(e) for e in entries]
    root = merkle.root(leaves)
    checkpoint = sign_checkpoint(origin, len(leaves), root, signer, name)
    return {
        "rule": "RFC 9162 leaf and tree hashes, inclusion proofs, C2SP signed-note checkpoints, "
        "receipts (docs/ledger.md)",
        "seed_hex": SEED.hex(),
        "key_name": name,
        "note_keyid_hex": note_keyid(name, signer.public_bytes).hex(),
        "verifier_key": verifier_key(name, signer.public_bytes),
        "entries_hex": [e.hex() for e in entries],
        "leaf_hashes_hex": [h.hex() for h in leaves],
        "root_hex": root.hex(),
        "checkpoint_note": checkpoint.note,
        "receipts": [
            {
                "sequence": i,
                "leaf_hash_hex": leaves[i].hex(),
                "checkpoint": checkpoint.note,
                "inclusion_proof_hex": [p.hex() for p in merkle.inclusion_proof(i, leaves)],
            }
            for i in (0, 3, 6)
        ],
    }


def main() -> None:
    _write("pae.json", pae_vectors())
    _write("envelope.json", envelope_vectors())
    _write("disclosure.json", disclosure_vectors())
    _write("content.json", content_vectors())
    _write("subject_ids.json", subject_id_vectors())
    _write("forwarded_ids.json", forwarded_vectors())
    _write("checkpoint.json", checkpoint_vectors())


if __name__ == "__main__":
    main()
