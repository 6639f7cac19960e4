"""The exchange hub: a gRPC hub for collect-once, share-many-times data sharing between departments.

The parts and the direction of their dependencies are docs/architecture.md's: ``cli`` (the
``exchange`` command), ``api`` (the gRPC edge), ``hub`` (the composition root), ``flows`` (one
service function per call), ``policy``, ``catalog``, ``routing``, ``supervision``, ``witness``
and ``audit``, ``ledger`` (entries, Merkle log, checkpoints, the writer), ``store`` (everything
that speaks SQL), ``crypto`` and ``rpc``; ``observability`` beside them. The generated protobuf
contract is ``exchange.v1``.
"""

__version__ = "0.1.0"
