// gov-exchange JavaScript client: see docs/clients.md.
export { HubClient, Refused, errorInfo, PERSONAL_FIELDS } from "./client.js";
export { root, type, enumValue, enumName } from "./proto.js";
export * as rules from "./rules.js";
