// The contract, loaded from the repository's protos/ directory at run time (no generated code):
// exchange.v1, google.rpc (Status, ErrorInfo, RetryInfo) and google.protobuf's well-known types.
import path from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTOS = process.env.EXCHANGE_PROTOS ?? path.resolve(here, "../../../protos");

const FILES = [
  "exchange/v1/envelope.proto",
  "exchange/v1/common.proto",
  "exchange/v1/registry.proto",
  "exchange/v1/catalog.proto",
  "exchange/v1/grants.proto",
  "exchange/v1/exchange.proto",
  "exchange/v1/audit.proto",
  "exchange/v1/ledger.proto",
  "exchange/v1/provider.proto",
  "exchange/v1/supervision.proto",
  "google/rpc/status.proto",
  "google/rpc/error_details.proto",
  "grpc/health/v1/health.proto",
];

let cached = null;

/** The loaded root: names as in the .proto files (snake_case, keepCase). */
export function root() {
  if (cached === null) {
    const loaded = new protobuf.Root();
    loaded.resolvePath = (_origin, target) => {
      // google/protobuf/*.proto are protobufjs's bundled well-known types.
      if (target.startsWith("google/protobuf/")) return target;
      return path.join(PROTOS, target);
    };
    loaded.loadSync(FILES, { keepCase: true });
    loaded.resolveAll();
    cached = loaded;
  }
  return cached;
}

/** The message type of a full name, e.g. "exchange.v1.CheckRequest". */
export function type(name) {
  return root().lookupType(name);
}

/** The numeric value of an enum's member, e.g. enumValue("exchange.v1.Reason", "NO_GRANT"). */
export function enumValue(enumName, member) {
  return root().lookupEnum(enumName).values[member];
}

/** The member name of an enum's number (undefined for a number the contract does not define). */
export function enumName(enumName, number) {
  return root().lookupEnum(enumName).valuesById[number];
}
