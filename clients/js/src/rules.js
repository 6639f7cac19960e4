// The byte-level rules of the contract (docs/security.md, docs/content-hash.md, docs/api.md,
// docs/ledger.md), written from the docs alone with node:crypto.
import crypto from "node:crypto";

const enc = new TextEncoder();
const utf8 = (s) => Buffer.from(enc.encode(s));

// ------------------------------------------------------------------------------ signatures

/** DSSE v1 pre-authentication encoding of payload bytes under a payload type. */
export function pae(payloadType, payload) {
  const type = utf8(payloadType);
  return Buffer.concat([
    utf8(`DSSEv1 ${type.length} `),
    type,
    utf8(` ${payload.length} `),
    Buffer.from(payload),
  ]);
}

const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");

/** An Ed25519 key from a PKCS#8 PEM file's text, or from a raw 32-byte seed. */
export function signingKey(pemOrSeed) {
  const privateKey =
    typeof pemOrSeed === "string"
      ? crypto.createPrivateKey(pemOrSeed)
      : crypto.createPrivateKey({
          key: Buffer.concat([PKCS8_ED25519, pemOrSeed]),
          format: "der",
          type: "pkcs8",
        });
  const spki = crypto.createPublicKey(privateKey).export({ format: "der", type: "spki" });
  const publicKey = spki.subarray(spki.length - 32);
  return { privateKey, publicKey, keyid: keyid(publicKey) };
}

/** Lowercase hex SHA-256 of a raw 32-byte Ed25519 public key. */
export function keyid(publicKey) {
  return crypto.createHash("sha256").update(publicKey).digest("hex");
}

export function sign(key, message) {
  return crypto.sign(null, message, key.privateKey);
}

export function verifySignature(publicKey, signature, message) {
  try {
    const key = crypto.createPublicKey({
      key: Buffer.concat([SPKI_ED25519, Buffer.from(publicKey)]),
      format: "der",
      type: "spki",
    });
    return crypto.verify(null, message, key, Buffer.from(signature));
  } catch {
    return false;
  }
}

export const sha256 = (data) => crypto.createHash("sha256").update(data).digest();
export const hmac = (key, data) => crypto.createHmac("sha256", key).update(data).digest();

// ------------------------------------------------------------------------------ subject ids

/** The normal form of a subject id: NFKC, every whitespace character removed, ASCII upper. */
export function normalise(subjectId) {
  const text = subjectId.normalize("NFKC").replace(/\s/gu, "");
  return text.replace(/[a-z]/g, (c) => c.toUpperCase());
}

const RESIDENT_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

function residentValid(t) {
  if (!/^[0-9]{17}[0-9X]$/.test(t)) return false;
  const [y, m, d] = [+t.slice(6, 10), +t.slice(10, 12), +t.slice(12, 14)];
  const date = new Date(Date.UTC(y, m - 1, d));
  if (y < 1800 || date.getUTCFullYear() !== y || date.getUTCMonth() !== m - 1) return false;
  if (date.getUTCDate() !== d) return false;
  const sum = RESIDENT_WEIGHTS.reduce((s, w, i) => s + w * +t[i], 0);
  return "10X98765432"[sum % 11] === t[17];
}

function usccValid(t) {
  if (t.length !== 18 || [...t].some((c) => !USCC_ALPHABET.includes(c))) return false;
  if (!/^[0-9]{6}$/.test(t.slice(2, 8))) return false;
  const sum = USCC_WEIGHTS.reduce((s, w, i) => s + w * USCC_ALPHABET.indexOf(t[i]), 0);
  return USCC_ALPHABET[(31 - (sum % 31)) % 31] === t[17];
}

/** Whether a subject id, once normalised, is an id of a scheme (docs/content-hash.md). */
export function subjectIdValid(subjectId, scheme = "CN_MAINLAND") {
  const t = normalise(subjectId);
  if (t.length === 0 || [...t].length > 128 || /\p{C}/u.test(t)) return false;
  if (scheme === "CN_RESIDENT_ID") return residentValid(t);
  if (scheme === "CN_USCC") return usccValid(t);
  if (scheme === "CN_MAINLAND") return residentValid(t) || usccValid(t);
  return true; // OPAQUE
}

// ------------------------------------------------------------------------ content identity

const lp = (s) => {
  const bytes = utf8(s.normalize("NFC"));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
};
const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

export function contentEncoding(materialType, subjectId, fields) {
  const names = Object.keys(fields).sort((a, b) =>
    Buffer.compare(utf8(a.normalize("NFC")), utf8(b.normalize("NFC"))),
  );
  const parts = [lp("exchange.v1.material"), lp(materialType), lp(subjectId), u32(names.length)];
  for (const name of names) parts.push(lp(name), lp(fields[name]));
  return Buffer.concat(parts);
}

export function fieldEncoding(materialType, subjectId, name, value) {
  return Buffer.concat([
    lp("exchange.v1.field"),
    lp(materialType),
    lp(subjectId),
    lp(name),
    lp(value),
  ]);
}

/** The keys derived from the hub's subject secret, and the values keyed under them. */
export function contentKeys(secret) {
  const keys = {
    subject: Buffer.from(secret),
    content: hmac(secret, Buffer.from("exchange.v1/content-hash")),
    field: hmac(secret, Buffer.from("exchange.v1/field-hash")),
    reference: hmac(secret, Buffer.from("exchange.v1/reference")),
  };
  return {
    keys,
    subjectRef: (id) => hmac(keys.subject, utf8(normalise(id))),
    contentHash: (type, id, fields) =>
      hmac(keys.content, contentEncoding(type, normalise(id), fields)),
    fieldHash: (type, id, name, value) =>
      hmac(keys.field, fieldEncoding(type, normalise(id), name, value)),
    reference(type, subjectRef, version) {
      const v = Buffer.alloc(8);
      v.writeBigUInt64BE(BigInt(version));
      return "m-" + hmac(keys.reference, Buffer.concat([lp(type), subjectRef, v])).toString("hex").slice(0, 32);
    },
  };
}

// ------------------------------------------------------------------------- forwarded ids

export const forwardedBinding = (requestId) =>
  sha256(Buffer.from(requestId, "ascii")).toString("hex").slice(0, 32);

/** Whether a holder's record naming recordRequestId answers the caller's requestId. */
export function answers(recordRequestId, requestId) {
  if (recordRequestId === requestId) return true;
  return (
    /^[0-9a-f]{32}\/(fetch|store|prefill)-[0-9a-f]{16}$/.test(recordRequestId) &&
    recordRequestId.startsWith(forwardedBinding(requestId) + "/")
  );
}

// --------------------------------------------------------------- Merkle tree, checkpoints

export const leafHash = (entry) => sha256(Buffer.concat([Buffer.from([0]), entry]));
const nodeHash = (l, r) => sha256(Buffer.concat([Buffer.from([1]), l, r]));

/** RFC 9162 section 2.1.3.2: verify an inclusion proof of leafHash at index in a tree. */
export function verifyInclusion(leaf, index, size, proof, root) {
  if (index >= size) return false;
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && Buffer.compare(r, root) === 0;
}

/** Parse "<name>+<hex key id>+<base64(0x01 || key)>". */
export function parseVerifierKey(text) {
  // base64 may itself hold "+": the name and the 8-hex key id come first.
  const first = text.indexOf("+");
  const [name, id, key] = [text.slice(0, first), text.slice(first + 1, first + 9), text.slice(first + 10)];
  const raw = Buffer.from(key, "base64");
  if (raw[0] !== 1 || raw.length !== 33) throw new Error("not an Ed25519 verifier key");
  return { name, keyid: Buffer.from(id, "hex"), publicKey: raw.subarray(1) };
}

export function noteKeyid(name, publicKey) {
  return sha256(Buffer.concat([utf8(name), Buffer.from([0x0a, 0x01]), publicKey])).subarray(0, 4);
}

/** Verify a signed-note checkpoint against verifier keys; return {origin, size, root}. */
export function verifyCheckpoint(note, verifierKeys) {
  const split = note.indexOf("\n\n");
  if (split < 0) throw new Error("checkpoint: no blank line after the body");
  const body = utf8(note.slice(0, split + 1));
  const [origin, size, root] = note.slice(0, split).split("\n");
  const keys = verifierKeys.map(parseVerifierKey);
  for (const line of note.slice(split + 2).split("\n")) {
    if (!line.startsWith("\u2014 ")) continue;
    const [name, b64] = line.slice(2).split(" ");
    const blob = Buffer.from(b64, "base64");
    for (const key of keys) {
      if (key.name !== name || Buffer.compare(key.keyid, blob.subarray(0, 4)) !== 0) continue;
      if (Buffer.compare(noteKeyid(name, key.publicKey), key.keyid) !== 0) continue;
      if (verifySignature(key.publicKey, blob.subarray(4), body)) {
        return { origin, size: BigInt(size), root: Buffer.from(root, "base64") };
      }
    }
  }
  throw new Error("checkpoint: no signature by a known key verifies");
}

/** Check a receipt ({sequence, leaf_hash, checkpoint, inclusion_proof}) at once. */
export function verifyReceipt(receipt, verifierKeys) {
  const checkpoint = verifyCheckpoint(receipt.checkpoint, verifierKeys);
  const ok = verifyInclusion(
    Buffer.from(receipt.leaf_hash),
    BigInt(receipt.sequence.toString()),
    checkpoint.size,
    receipt.inclusion_proof.map((p) => Buffer.from(p)),
    checkpoint.root,
  );
  if (!ok) throw new Error("receipt: the inclusion proof does not verify");
  return checkpoint;
}
