// The conformance vectors of tests/vectors/conformance/, checked by this client's own code.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

import { type } from "../src/proto.js";
import * as rules from "../src/rules.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const VECTORS = path.resolve(here, "../../../tests/vectors/conformance");
const load = (name) => JSON.parse(fs.readFileSync(path.join(VECTORS, name), "utf8"));
const hex = (s) => Buffer.from(s, "hex");

test("DSSE pre-authentication encoding", () => {
  for (const c of load("pae.json").cases) {
    assert.equal(rules.pae(c.payload_type, hex(c.payload_hex)).toString("hex"), c.pae_hex);
  }
});

test("envelope signing and the body's encoding", () => {
  const v = load("envelope.json");
  const key = rules.signingKey(hex(v.seed_hex));
  assert.equal(key.publicKey.toString("hex"), v.public_key_hex);
  assert.equal(key.keyid, v.keyid);
  const message = rules.pae(v.payload_type, hex(v.payload_hex));
  assert.equal(rules.sign(key, message).toString("hex"), v.signature_hex);
  const Envelope = type("exchange.v1.Envelope");
  const envelope = Envelope.decode(hex(v.envelope_hex));
  assert.ok(rules.verifySignature(key.publicKey, envelope.signatures[0].sig, message));
  // protobufjs writes fields in number order, as the hub does: the same bytes.
  const Body = type(v.payload_type);
  const body = Body.decode(hex(v.payload_hex));
  assert.equal(Buffer.from(Body.encode(body).finish()).toString("hex"), v.payload_hex);
  assert.equal(Buffer.from(Envelope.encode(envelope).finish()).toString("hex"), v.envelope_hex);
});

test("the disclosure", () => {
  const v = load("disclosure.json");
  const Body = type(v.body_type);
  const disclosure = Body.create({
    header: { disclosure_salt: hex(v.salt_hex) },
    ...v.personal_fields,
  });
  const bytes = Buffer.from(Body.encode(disclosure).finish());
  assert.equal(bytes.toString("hex"), v.disclosure_hex);
  assert.equal(rules.sha256(bytes).toString("hex"), v.disclosure_sha256_hex);
  const signed = Body.decode(hex(v.signed_payload_hex));
  assert.equal(Buffer.from(signed.header.disclosure_sha256).toString("hex"), v.disclosure_sha256_hex);
  assert.equal(signed.subject_id, "");
});

test("content identity", () => {
  const v = load("content.json");
  const keyed = rules.contentKeys(hex(v.subject_secret_hex));
  assert.equal(keyed.keys.content.toString("hex"), v.keys.content_key_hex);
  assert.equal(keyed.keys.field.toString("hex"), v.keys.field_key_hex);
  assert.equal(keyed.keys.reference.toString("hex"), v.keys.reference_key_hex);
  const encoding = rules.contentEncoding(v.material_type, v.subject_id, v.fields);
  assert.equal(encoding.toString("hex"), v.content_encoding_hex);
  assert.equal(keyed.contentHash(v.material_type, v.subject_id, v.fields).toString("hex"), v.content_hash_hex);
  for (const [name, value] of Object.entries(v.fields)) {
    const field = rules.fieldEncoding(v.material_type, v.subject_id, name, value);
    assert.equal(field.toString("hex"), v.field_encodings_hex[name]);
    assert.equal(keyed.fieldHash(v.material_type, v.subject_id, name, value).toString("hex"), v.field_hashes_hex[name]);
  }
  const ref = keyed.subjectRef(v.subject_id);
  assert.equal(ref.toString("hex"), v.subject_ref_hex);
  for (const [version, reference] of Object.entries(v.references)) {
    assert.equal(keyed.reference(v.material_type, ref, Number(version)), reference);
  }
});

test("subject id normal form and schemes", () => {
  for (const c of load("subject_ids.json").cases) {
    assert.equal(rules.normalise(c.input), c.normal, c.input);
    assert.equal(rules.subjectIdValid(c.input, c.scheme), c.valid, `${c.input} ${c.scheme}`);
  }
});

test("forwarded ids", () => {
  const cases = load("forwarded_ids.json").cases;
  for (const c of cases) {
    assert.equal(rules.forwardedBinding(c.caller_request_id), c.binding);
    assert.equal(`${c.binding}/${c.kind}-${c.suffix}`, c.forwarded_id);
    assert.ok(rules.answers(c.forwarded_id, c.caller_request_id));
  }
  assert.ok(!rules.answers(cases[1].forwarded_id, cases[2].caller_request_id));
});

test("checkpoints, receipts and inclusion proofs", () => {
  const v = load("checkpoint.json");
  const leaves = v.entries_hex.map((e) => rules.leafHash(hex(e)));
  assert.deepEqual(leaves.map((l) => l.toString("hex")), v.leaf_hashes_hex);
  const key = rules.signingKey(hex(v.seed_hex));
  assert.equal(rules.noteKeyid(v.key_name, key.publicKey).toString("hex"), v.note_keyid_hex);
  const checkpoint = rules.verifyCheckpoint(v.checkpoint_note, [v.verifier_key]);
  assert.equal(checkpoint.root.toString("hex"), v.root_hex);
  for (const r of v.receipts) {
    const receipt = {
      sequence: r.sequence,
      leaf_hash: hex(r.leaf_hash_hex),
      checkpoint: r.checkpoint,
      inclusion_proof: r.inclusion_proof_hex.map(hex),
    };
    assert.equal(rules.verifyReceipt(receipt, [v.verifier_key]).size, BigInt(leaves.length));
    const forged = { ...receipt, sequence: (r.sequence + 1) % leaves.length };
    assert.throws(() => rules.verifyReceipt(forged, [v.verifier_key]));
  }
  assert.throws(() => rules.verifyCheckpoint(v.checkpoint_note.replace("\n7\n", "\n8\n"), [v.verifier_key]));
});
