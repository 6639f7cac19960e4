"""The department side of the exchange: what a department runs beside its own systems.

The provider adapter and its backends, holdings publication, the client SDK for calling the
hub, identity providers, the auditor's watcher, the demo's departments and the web form tool.
It uses only the contract's parts of ``exchange`` (crypto, rpc, the ledger's checkpoints and
proofs), never the hub's insides (docs/architecture.md; tests/test_layering.py).
"""
