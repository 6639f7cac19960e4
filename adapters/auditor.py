"""The auditor's side: follow the hub's log and prove it is never rewritten.

A ``Watcher`` keeps the last checkpoint it trusted in a file. Each new checkpoint must carry the
hub's signature and be consistent with the trusted one (an RFC 9162 consistency proof); if it is
not — a rewritten or forked history — ``ForkDetected`` carries both checkpoints. A receipt a
department received can be checked the same way: inclusion in its own checkpoint, and that
checkpoint consistent with the trusted one. With a ``WitnessPolicy`` (k of n named witness
keys), a checkpoint is trusted only if enough witnesses cosigned it, and a receipt only once a
checkpoint so cosigned covers it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapters.client import HubClient, Refused
from exchange.ledger import Checkpoint, CheckpointError, merkle, verify_checkpoint
from exchange.v1 import audit_pb2, common_pb2
from exchange.witness.cosignature import QuorumError, WitnessPolicy

AUDIT = "/exchange.v1.Audit"


class ForkDetected(Exception):
    """The hub showed a checkpoint that is not an extension of the trusted one."""

    def __init__(self, trusted: Checkpoint, seen: Checkpoint, why: str) -> None:
        super().__init__(
            f"FORK: {why}\n--- trusted checkpoint ---\n{trusted.note}"
            f"--- checkpoint now served ---\n{seen.note}"
        )
        self.trusted = trusted
        self.seen = seen
        self.why = why


@dataclass(frozen=True, slots=True)
class Advance:
    """One successful check: the trusted size moved from ``old_size`` to ``checkpoint.size``."""

    old_size: int
    checkpoint: Checkpoint


class Watcher:
    """Follows one hub's checkpoints from a trusted state kept on disk."""

    def __init__(
        self,
        client: HubClient,
        verifier_key: str,
        state_file: Path,
        policy: WitnessPolicy | None = None,
    ) -> None:
        self.client = client
        self.verifier_key = verifier_key
        self.state_file = state_file
        self.policy = policy

    def _verify(self, note: str) -> Checkpoint:
        """The checkpoint if the hub signed it and, with a policy, its quorum cosigned it.
        Raises CheckpointError (QuorumError for too few cosignatures)."""
        if self.policy is None:
            return verify_checkpoint(note, [self.verifier_key])
        return self.policy.check(note, [self.verifier_key])

    def trusted(self) -> Checkpoint | None:
        """The last trusted checkpoint from the state file, re-verified; None if there is none.

        Raises CheckpointError if the file holds a checkpoint the hub key did not sign.
        """
        if not self.state_file.exists():
            return None
        return self._verify(self.state_file.read_text())

    def _trust(self, checkpoint: Checkpoint) -> None:
        # Write-then-rename, so a crash never leaves a half-written trusted state.
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".checkpoint-")
        with os.fdopen(fd, "w") as handle:
            handle.write(checkpoint.note)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_file)

    async def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        answer = await self.client.call(
            f"{AUDIT}/GetConsistencyProof",
            audit_pb2.ConsistencyProofRequest(old_size=old_size, new_size=new_size),
            audit_pb2.ConsistencyProofResponse,
        )
        return list(answer.proof)

    async def check(self) -> Advance:
        """Fetch the latest checkpoint, verify it, prove it extends the trusted one, trust it.

        Raises ForkDetected (the hub's history was rewritten), CheckpointError (bad signature;
        QuorumError: too few witness cosignatures), Refused (the hub refused the call).
        """
        answer = await self.client.call(
            f"{AUDIT}/GetCheckpoint",
            audit_pb2.GetCheckpointRequest(),
            audit_pb2.CheckpointResponse,
        )
        seen = self._verify(answer.checkpoint)
        trusted = self.trusted()
        if trusted is None:
            self._trust(seen)
            return Advance(0, seen)
        await self.prove_extends(trusted, seen)
        if seen.size > trusted.size:
            self._trust(seen)
        return Advance(trusted.size, seen if seen.size >= trusted.size else trusted)

    async def prove_extends(self, trusted: Checkpoint, seen: Checkpoint) -> None:
        """Raise ForkDetected unless ``seen`` and ``trusted`` are the same history.

        The smaller must be a prefix of the larger (a consistency proof from the hub).
        """
        if seen.origin != trusted.origin:
            raise ForkDetected(trusted, seen, "the origin changed")
        old, new = (trusted, seen) if seen.size >= trusted.size else (seen, trusted)
        if old.size == new.size:
            if old.root_hash != new.root_hash:
                raise ForkDetected(trusted, seen, f"two different roots for size {old.size}")
            return
        try:
            proof = await self._consistency(old.size, new.size)
        except Refused as refused:
            if refused.code == grpc.StatusCode.OUT_OF_RANGE:
                raise ForkDetected(
                    trusted, seen, f"the hub cannot prove size {new.size}: {refused.message}"
                ) from None
            raise
        if not merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof):
            raise ForkDetected(
                trusted,
                seen,
                f"size {new.size} is not an extension of size {old.size} (consistency fails)",
            )

    async def check_receipt(self, receipt: common_pb2.Receipt) -> Checkpoint:
        """Prove a receipt: included in its signed checkpoint, which is consistent with the
        trusted checkpoint. Returns the receipt's checkpoint.

        With a witness policy, the receipt's checkpoint must be covered by a witnessed one:
        the latest is fetched and trusted first (``check``), and a receipt beyond it raises
        QuorumError (not witnessed yet: retry later).

        Raises CheckpointError (bad signature or inclusion), ForkDetected, Refused.
        """
        checkpoint = verify_checkpoint(receipt.checkpoint, [self.verifier_key])
        if not merkle.verify_inclusion(
            receipt.leaf_hash,
            receipt.sequence,
            checkpoint.size,
            list(receipt.inclusion_proof),
            checkpoint.root_hash,
        ):
            raise CheckpointError(f"entry {receipt.sequence} is not in its receipt's checkpoint")
        if self.policy is not None:
            witnessed = (await self.check()).checkpoint
            if witnessed.size < checkpoint.size:
                raise QuorumError(
                    f"entry {receipt.sequence} is in a checkpoint of size {checkpoint.size}; the "
                    f"latest the witnesses cosigned has size {witnessed.size}: retry later"
                )
        trusted = self.trusted()
        if trusted is not None:
            await self.prove_extends(trusted, checkpoint)
        return checkpoint


async def stream_entries(
    client: HubClient, from_sequence: int = 0, follow: bool = False
) -> AsyncIterator[audit_pb2.EntryRecord]:
    """Entries from the hub's Audit.StreamEntries, as an async iterator. Raises Refused."""
    call = client.channel.unary_stream(
        f"{AUDIT}/StreamEntries",
        request_serializer=lambda envelope: envelope.SerializeToString(),
        response_deserializer=audit_pb2.EntryRecord.FromString,
    )
    envelope = client.envelope(
        audit_pb2.StreamEntriesRequest(from_sequence=from_sequence, follow=follow)
    )
    try:
        async for record in call(envelope):
            yield record
    except grpc.aio.AioRpcError as error:
        raise Refused.from_rpc_error(error) from None
