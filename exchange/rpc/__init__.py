"""The contract's gRPC conventions, shared by the hub and the department side.

The one mapping from exchange errors to a gRPC status with ``google.rpc.ErrorInfo`` (and back,
for clients), and the peer's TLS certificate. Both the hub's edge (``exchange.api``) and the
provider adapter and client SDK (``adapters``) use these, so this package imports nothing of the
hub's api, flows, store, supervision or ledger writer.
"""
