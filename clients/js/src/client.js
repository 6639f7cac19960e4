// A client of the exchange hub over mTLS with @grpc/grpc-js, following docs/clients.md:
// sign the body (DSSE), move personal fields into the disclosure, keep the exact envelope bytes
// for retries, decode refusals' ErrorInfo from the grpc-status-details-bin trailer, verify
// receipts and holders' signatures end to end.
import crypto from "node:crypto";
import grpc from "@grpc/grpc-js";

import { enumName, type } from "./proto.js";
import * as rules from "./rules.js";

// Body type -> its personal fields (docs/security.md).
export const PERSONAL_FIELDS = {
  "exchange.v1.CheckRequest": ["subject_id", "assertion"],
  "exchange.v1.SubmitRequest": ["subject_id", "fields", "assertion"],
  "exchange.v1.MaterialRequest": ["subject_id", "assertion"],
  "exchange.v1.PrefillRequest": ["subject_id", "assertion"],
  "exchange.v1.AccessHistoryRequest": ["subject_id", "assertion"],
  "exchange.v1.FileObjectionRequest": ["subject_id", "reason", "proposed_fields", "assertion"],
  "exchange.v1.ResolveObjectionRequest": ["resolution", "corrected_fields"],
  "exchange.v1.PublishHoldingsRequest": ["holdings"],
  // The person in the loop: a subject assertion names the subject, so it is personal too.
  "exchange.v1.GiveConsentRequest": ["subject_id", "assertion"],
  "exchange.v1.RevokeConsentRequest": ["subject_id", "assertion"],
  "exchange.v1.ListConsentsRequest": ["subject_id", "assertion"],
  "exchange.v1.ConfirmFormRequest": ["subject_id", "assertion"],
};
const RETRYABLE = new Set([grpc.status.UNAVAILABLE]);

/** A refusal: gRPC code, the contract's reason, the message, the refusal's ledger entry. */
export class Refused extends Error {
  constructor(code, reason, message, ledgerSequence) {
    super(`${grpc.status[code]} ${reason}: ${message}`);
    this.code = code;
    this.codeName = grpc.status[code];
    this.reason = reason;
    this.details = message;
    this.ledgerSequence = ledgerSequence;
  }
}

/** ErrorInfo of a failed call, from the google.rpc.Status in the grpc-status-details-bin
 * trailer; null if there is none. */
export function errorInfo(metadata) {
  const values = metadata?.get("grpc-status-details-bin") ?? [];
  for (const value of values) {
    const status = type("google.rpc.Status").decode(Buffer.from(value));
    for (const detail of status.details) {
      if (detail.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
        return type("google.rpc.ErrorInfo").decode(detail.value);
      }
    }
  }
  return null;
}

/** A subject assertion given as the identity provider's envelope bytes, decoded; an object as
 * it is; undefined when there is none. */
const envelopeOf = (assertion) =>
  assertion instanceof Uint8Array ? type("exchange.v1.Envelope").decode(assertion) : assertion;

const hasValue = (v) =>
  v !== undefined && v !== null && v !== "" && !(Array.isArray(v) && v.length === 0) &&
  !(typeof v === "object" && !Array.isArray(v) && !Buffer.isBuffer(v) && Object.keys(v).length === 0);

export class HubClient {
  /**
   * @param target "host:port" of the hub
   * @param identity {departmentId, signingKeyPem, certificatePem, privateKeyPem, caPem}
   * @param options {serverName, retries, backoffMs, hubVerifierKeys}
   */
  constructor(target, identity, options = {}) {
    this.identity = identity;
    this.key = rules.signingKey(identity.signingKeyPem);
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 200;
    this.hubVerifierKeys = options.hubVerifierKeys ?? [];
    const credentials = grpc.credentials.createSsl(
      Buffer.from(identity.caPem),
      Buffer.from(identity.privateKeyPem),
      Buffer.from(identity.certificatePem),
    );
    const channelOptions = options.serverName
      ? { "grpc.ssl_target_name_override": options.serverName }
      : {};
    this.client = new grpc.Client(target, credentials, channelOptions);
    this.departments = new Map();
  }

  close() {
    this.client.close();
  }

  /**
   * Fill the header, move personal fields into the disclosure, sign; return the envelope's
   * bytes. Keep these bytes to retry: re-encoding could give other bytes, and the hub answers a
   * retry with the first answer only for the very same bytes.
   */
  envelope(bodyTypeName, fields, requestId = crypto.randomUUID()) {
    const Body = type(bodyTypeName);
    const header = {
      request_id: requestId,
      issued_at: timestamp(Date.now()),
      department_id: this.identity.departmentId,
    };
    const signedFields = { ...fields, header };
    let disclosure = Buffer.alloc(0);
    const personal = (PERSONAL_FIELDS[bodyTypeName] ?? []).filter((n) => hasValue(fields[n]));
    if (typeof signedFields.subject_id === "string") {
      signedFields.subject_id = rules.normalise(signedFields.subject_id);
    }
    if (personal.length > 0) {
      const disclosed = { header: { disclosure_salt: crypto.randomBytes(32) } };
      for (const name of personal) {
        disclosed[name] = signedFields[name];
        delete signedFields[name];
      }
      disclosure = Buffer.from(Body.encode(Body.fromObject(disclosed)).finish());
      header.disclosure_sha256 = rules.sha256(disclosure);
    }
    const payload = Buffer.from(Body.encode(Body.fromObject(signedFields)).finish());
    const sig = rules.sign(this.key, rules.pae(bodyTypeName, payload));
    const Envelope = type("exchange.v1.Envelope");
    return Buffer.from(
      Envelope.encode({
        payload,
        payload_type: bodyTypeName,
        signatures: [{ keyid: this.key.keyid, sig }],
        disclosure,
      }).finish(),
    );
  }

  /** Send prepared envelope bytes; retry UNAVAILABLE with the same bytes. Throws Refused. */
  async send(method, envelopeBytes, responseTypeName, { timeoutMs = 30000 } = {}) {
    const Response = type(responseTypeName);
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await new Promise((resolve, reject) => {
          this.client.makeUnaryRequest(
            method,
            (b) => b,
            (b) => b,
            envelopeBytes,
            new grpc.Metadata(),
            { deadline: Date.now() + timeoutMs },
            (error, value) => (error ? reject(error) : resolve(value)),
          );
        });
        const response = Response.decode(answer);
        if (response.receipt && this.hubVerifierKeys.length > 0) {
          rules.verifyReceipt(response.receipt, this.hubVerifierKeys);
        }
        return response;
      } catch (error) {
        if (error.code === undefined) throw error;
        if (RETRYABLE.has(error.code) && attempt < this.retries) {
          await new Promise((r) => setTimeout(r, this.backoffMs * 2 ** attempt));
          continue;
        }
        const info = errorInfo(error.metadata);
        const sequence = info?.metadata?.ledger_sequence;
        throw new Refused(error.code, info?.reason ?? "", error.details ?? "", sequence ? Number(sequence) : null);
      }
    }
  }

  async call(method, bodyTypeName, fields, responseTypeName, { requestId } = {}) {
    return this.send(method, this.envelope(bodyTypeName, fields, requestId), responseTypeName);
  }

  /** Is material on file? A form tool checks for a person with their `assertion` (the identity
   * provider's envelope, as bytes or decoded), or under a granted legal-basis `purpose`. */
  check(materialType, subjectId, { assertion, purpose = "" } = {}) {
    return this.call("/exchange.v1.Exchange/Check", "exchange.v1.CheckRequest",
      { material_type: materialType, subject_id: subjectId, purpose, assertion: envelopeOf(assertion) },
      "exchange.v1.CheckResponse");
  }

  /** Submit material collected from a person. A form tool submits for the person with their
   * `assertion` (as for check); a collector or owner on its own account needs none. */
  submit(materialType, subjectId, fields, { requestId, assertion } = {}) {
    return this.call("/exchange.v1.Exchange/Submit", "exchange.v1.SubmitRequest",
      { material_type: materialType, subject_id: subjectId, fields, assertion: envelopeOf(assertion) },
      "exchange.v1.SubmitResponse", { requestId });
  }

  /** Request material and verify the holder's signature end to end; return the record. */
  async request(materialType, subjectId, purpose, fields = [], { requestId = crypto.randomUUID() } = {}) {
    const response = await this.call("/exchange.v1.Exchange/Request", "exchange.v1.MaterialRequest",
      { material_type: materialType, subject_id: subjectId, purpose, fields },
      "exchange.v1.MaterialResponse", { requestId });
    const record = await this.verifyMaterial(response.material, { materialType, subjectId, requestId, fields });
    return { record, receipt: response.receipt };
  }

  /** A department's registry record (cached), for its keys. */
  async department(departmentId) {
    if (!this.departments.has(departmentId)) {
      const answer = await this.call("/exchange.v1.Registry/GetDepartment",
        "exchange.v1.GetDepartmentRequest", { department_id: departmentId }, "exchange.v1.DepartmentResponse");
      this.departments.set(departmentId, answer.department);
    }
    return this.departments.get(departmentId);
  }

  /** Verify a holder-signed MaterialRecord envelope; return the decoded record. Throws. */
  async verifyMaterial(envelope, { materialType, subjectId, requestId, fields = [] }) {
    if (envelope.payload_type !== "exchange.v1.MaterialRecord") throw new Error("not a material record");
    const record = type("exchange.v1.MaterialRecord").decode(envelope.payload);
    const holder = await this.department(record.holder);
    const issuedMs = millis(record.issued_at);
    const message = rules.pae(envelope.payload_type, Buffer.from(envelope.payload));
    const signed = envelope.signatures.some((s) =>
      holder.keys.some((k) => k.keyid === s.keyid && keyValidAt(k, issuedMs) &&
        rules.verifySignature(k.public_key, s.sig, message)));
    if (!signed) throw new Error(`the material is not signed by its holder ${record.holder}`);
    if (record.material_type !== materialType) throw new Error("the record is of another material type");
    if (rules.normalise(record.subject_id) !== rules.normalise(subjectId)) throw new Error("the record is about another subject");
    if (requestId && !rules.answers(record.request_id, requestId)) throw new Error("the record answers another request");
    const extra = Object.keys(record.fields).filter((n) => fields.length > 0 && !fields.includes(n));
    if (extra.length > 0) throw new Error(`the record carries fields not asked for: ${extra}`);
    return record;
  }
}

function timestamp(ms) {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function millis(ts) {
  if (!ts) return 0;
  return Number(ts.seconds?.toString() ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
}

function keyValidAt(key, ms) {
  if (key.revoked_at && millis(key.revoked_at) <= ms) return false;
  if (key.valid_from && millis(key.valid_from) > ms) return false;
  return !(key.valid_until && millis(key.valid_until) <= ms);
}

export { enumName };
