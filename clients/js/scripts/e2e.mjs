// Drives the JavaScript client against a running hub and its adapters; run by
// tests/integration/test_js_client.py, which passes the exchange's facts as JSON in
// EXCHANGE_E2E and checks the JSON this prints.
import fs from "node:fs";

import { HubClient, Refused, rules } from "../src/index.js";

const config = JSON.parse(process.env.EXCHANGE_E2E);
const read = (p) => fs.readFileSync(p, "utf8");
const client = (member) =>
  new HubClient(
    config.target,
    {
      departmentId: member.id,
      signingKeyPem: read(member.signing_key),
      certificatePem: read(member.certificate),
      privateKeyPem: read(member.tls_key),
      caPem: read(config.ca),
    },
    { serverName: "localhost", hubVerifierKeys: [config.hub_verifier_key], retries: 0 },
  );

async function refusal(promise) {
  try {
    await promise;
    return { refused: false };
  } catch (error) {
    if (!(error instanceof Refused)) throw error;
    return { code: error.codeName, reason: error.reason, ledger_sequence: error.ledgerSequence };
  }
}

const consumer = client(config.consumer);
const collector = client(config.collector);
const formTool = client(config.form_tool);
const out = {};
try {
  const fullWidth = [...config.on_file].map((c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0)).join("");
  const checked = await consumer.check(config.marriage, fullWidth);
  out.check = { on_file: checked.on_file, holder: checked.holder, sequence: checked.receipt.sequence.toString() };

  const requestId = "j".repeat(128);
  const { record } = await consumer.request(config.household, config.on_file, config.purpose, ["name"], { requestId });
  out.request = { fields: record.fields, request_id: record.request_id, answers: rules.answers(record.request_id, requestId) };

  const envelope = collector.envelope("exchange.v1.SubmitRequest", {
    material_type: config.marriage,
    subject_id: config.new_subject,
    fields: { marital_status: "unmarried", spouse_name: "" },
  });
  const first = await collector.send("/exchange.v1.Exchange/Submit", envelope, "exchange.v1.SubmitResponse");
  const retry = await collector.send("/exchange.v1.Exchange/Submit", envelope, "exchange.v1.SubmitResponse");
  const keyed = rules.contentKeys(Buffer.from(config.subject_secret_hex, "hex"));
  out.submit = {
    outcome: first.outcome,
    retry_outcome: retry.outcome,
    same_entry: first.receipt.sequence.toString() === retry.receipt.sequence.toString(),
    content_hash_matches: Buffer.compare(
      Buffer.from(first.content_hash),
      keyed.contentHash(config.marriage, config.new_subject, { marital_status: "unmarried" }),
    ) === 0,
    reference_matches:
      first.reference === keyed.reference(config.marriage, keyed.subjectRef(config.new_subject), 1),
  };
  // A form tool submits for the person only with their assertion: without it the outcome
  // ("already on file") is refused; with it (bytes from the identity provider) it is served.
  const unmarried = { marital_status: "unmarried", spouse_name: "" };
  out.form_tool_submit = {
    without: await refusal(formTool.submit(config.marriage, config.new_subject, unmarried)),
    with: (await formTool.submit(config.marriage, config.new_subject, unmarried, {
      assertion: Buffer.from(config.assertion_hex, "hex"),
    })).outcome,
  };
  out.no_grant = await refusal(consumer.request(config.marriage, config.on_file, config.purpose));
  const wrong = config.on_file.slice(0, 17) + (config.on_file[17] === "0" ? "1" : "0");
  out.bad_subject = await refusal(consumer.check(config.marriage, wrong));
} finally {
  consumer.close();
  collector.close();
  formTool.close();
}
console.log(JSON.stringify(out));
