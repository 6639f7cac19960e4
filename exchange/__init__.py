"""The exchange hub: a gRPC hub for collect-once, share-many-times data sharing between departments.

Subpackages follow the architecture (docs/architecture.md): ``api`` (gRPC servicers), ``flows``
(check, submit, request, prefill), ``catalog`` and ``policy``, ``ledger`` (entries, Merkle log,
checkpoints), ``store`` (SQL tables, repositories, migrations), ``crypto`` (keys, envelopes,
certificates), ``supervision`` and ``cli``. The generated protobuf contract is ``exchange.v1``.
"""

__version__ = "0.1.0"
