"""A C2SP tlog-witness over real HTTP on loopback: it cosigns consistent checkpoints, refuses
inconsistent ones with the spec's answers, keeps its state across a restart; its cosignatures
verify with an independent implementation; a witness policy refuses a checkpoint without its
quorum."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exchange.crypto.keys import SigningKey
from exchange.ledger import Checkpoint, merkle, sign_checkpoint, verifier_key
from exchange.ledger.checkpoint import CheckpointError
from exchange.witness.cosignature import (
    QuorumError,
    WitnessKey,
    WitnessPolicy,
    add_cosignatures,
    cosign,
    cosignature_time,
)
from exchange.witness.server import Witness, WitnessServer
from exchange.witness.submitter import (
    WitnessClient,
    WitnessEndpoint,
    WitnessRefused,
    post,
    request_body,
)

ORIGIN = "exchange.test/witnessed"


@dataclass
class Log:
    """A log's leaves and key, enough to make checkpoints and proofs."""

    key: SigningKey
    leaves: list[bytes]

    def checkpoint(self, size: int) -> Checkpoint:
        return sign_checkpoint(ORIGIN, size, merkle.root(self.leaves[:size]), self.key, ORIGIN)

    def proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(old, self.leaves[:new])

    @property
    def vkey(self) -> str:
        return verifier_key(ORIGIN, self.key.public_bytes)


def _log(key: SigningKey, tag: bytes, n: int = 40) -> Log:
    return Log(key, [merkle.leaf_hash(tag + i.to_bytes(4, "big")) for i in range(n)])


@pytest.fixture
def log() -> Log:
    return _log(SigningKey.generate(), b"honest")


@dataclass
class Running:
    key: SigningKey
    name: str
    server: WitnessServer

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.server.url, WitnessKey.of(self.name, self.key.public_bytes))

    def add(self, old: int, proof: list[bytes], note: str) -> tuple[int, str, str]:
        return post(f"{self.server.url}/add-checkpoint", request_body(old, proof, note))


def _start(key: SigningKey, name: str, log: Log, state: Path) -> Running:
    server = WitnessServer(Witness(key, name, [log.vkey], state))
    server.start()
    return Running(key, name, server)


@pytest.fixture
def witness(tmp_path: Path, log: Log) -> Iterator[Running]:
    running = _start(SigningKey.generate(), "witness.test/w1", log, tmp_path / "w1.db")
    yield running
    running.server.stop()


def test_witness_cosigns_a_consistent_sequence(witness: Running, log: Log) -> None:
    first = log.checkpoint(10)
    status, body, _ = witness.add(0, [], first.note)
    assert status == 200, body
    key = witness.endpoint.key
    assert cosignature_time(add_cosignatures(first.note, [body]), key) is not None
    second = log.checkpoint(25)
    status, body, _ = witness.add(10, log.proof(10, 25), second.note)
    assert status == 200, body
    # the same checkpoint again is cosigned again (old size = its size, same root)
    status, _, _ = witness.add(25, [], second.note)
    assert status == 200


def test_witness_answers_as_the_spec_says(witness: Running, log: Log, tmp_path: Path) -> None:
    assert witness.add(0, [], log.checkpoint(10).note)[0] == 200
    # old size other than the one it holds: 409 with that size as text/x.tlog.size
    status, body, content_type = witness.add(5, log.proof(5, 20), log.checkpoint(20).note)
    assert (status, body, content_type) == (409, "10\n", "text/x.tlog.size")
    # old size beyond the checkpoint: 400
    assert witness.add(30, [], log.checkpoint(20).note)[0] == 400
    # unknown origin: 404
    other = sign_checkpoint("elsewhere/log", 3, bytes(32), log.key, "elsewhere/log")
    assert witness.add(0, [], other.note)[0] == 404
    # not signed by the log's key: 403
    rogue = sign_checkpoint(ORIGIN, 20, merkle.root(log.leaves[:20]), SigningKey.generate(), ORIGIN)
    assert witness.add(10, log.proof(10, 20), rogue.note)[0] == 403
    # a malformed body: 400
    assert post(f"{witness.server.url}/add-checkpoint", b"old 01\n\nnonsense")[0] == 400
    # a proof that does not verify: 422
    bad = [bytes(32)] * len(log.proof(10, 20))
    assert witness.add(10, bad, log.checkpoint(20).note)[0] == 422
    # still at 10: the refusals changed nothing
    assert witness.add(0, [], log.checkpoint(20).note)[1] == "10\n"


def test_witness_refuses_a_fork_and_keeps_its_state_across_a_restart(
    tmp_path: Path, log: Log
) -> None:
    key, state = SigningKey.generate(), tmp_path / "w.db"
    witness = _start(key, "witness.test/w1", log, state)
    assert witness.add(0, [], log.checkpoint(20).note)[0] == 200
    # The same log key signs a rewritten history (a fork) of a larger size.
    fork = _log(log.key, b"forked")
    fork.leaves[:5] = log.leaves[:5]
    forged = fork.checkpoint(30)
    status, body, _ = witness.add(20, fork.proof(20, 30), forged.note)
    assert status == 422, body
    # and one of the same size with another root
    status, body, _ = witness.add(20, [], fork.checkpoint(20).note)
    assert status == 409 and "fork" in body
    witness.server.stop()

    restarted = _start(key, "witness.test/w1", log, state)
    try:
        # It remembers size 20: a submission from scratch is told so, the fork still refused.
        assert restarted.add(0, [], forged.note) == (409, "20\n", "text/x.tlog.size")
        assert restarted.add(20, fork.proof(20, 30), forged.note)[0] == 422
        assert restarted.add(20, log.proof(20, 30), log.checkpoint(30).note)[0] == 200
    finally:
        restarted.server.stop()


def test_the_hubs_client_learns_the_held_size(witness: Running, log: Log) -> None:
    assert witness.add(0, [], log.checkpoint(12).note)[0] == 200
    client = WitnessClient(witness.endpoint)  # knows nothing: starts at 0, is told 12
    line = client.submit(log.checkpoint(30), log.proof)
    assert client.held == 30 and line.startswith("— witness.test/w1 ")
    fork = _log(log.key, b"forked")
    with pytest.raises(WitnessRefused) as refused:
        client.submit(fork.checkpoint(35), fork.proof)
    assert refused.value.status == 422


def test_cosignature_verifies_with_an_independent_implementation(log: Log) -> None:
    # aics-tlog: a C2SP signed-note and tlog-cosignature implementation not written here.
    if os.environ.get("CI"):
        import aics_tlog.cosign as independent
        import aics_tlog.note as notes
    else:
        independent = pytest.importorskip("aics_tlog.cosign")
        notes = pytest.importorskip("aics_tlog.note")
    key = SigningKey.generate()
    checkpoint = log.checkpoint(17)
    line = cosign(checkpoint, key, "witness.test/w1", timestamp=1_767_225_600)
    witness = WitnessKey.of("witness.test/w1", key.public_bytes)
    # the same key id and verifier key encoding
    assert independent.cosignature_key_id("witness.test/w1", key.public_bytes) == witness.keyid
    vkey = independent.cosignature_vkey("witness.test/w1", key.public_bytes)
    assert notes.format_vkey(vkey) == str(witness)
    import base64

    blob = base64.b64decode(line.split(" ")[2])[4:]
    assert independent.verify_cosignature(
        blob, "witness.test/w1", key.public_bytes, ORIGIN, 17, checkpoint.root_hash
    )
    # a cosignature on another size does not verify there
    assert not independent.verify_cosignature(
        blob, "witness.test/w1", key.public_bytes, ORIGIN, 18, checkpoint.root_hash
    )
    # and theirs verifies here
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    theirs = Ed25519PrivateKey.generate()
    public = theirs.public_key().public_bytes_raw()
    their_blob, _ = independent.sign_cosignature(
        theirs, "witness.test/w2", 1_767_225_601, ORIGIN, 17, checkpoint.root_hash
    )
    their_line = (
        "— witness.test/w2 "
        + base64.b64encode(
            independent.cosignature_key_id("witness.test/w2", public) + their_blob
        ).decode()
        + "\n"
    )
    note = add_cosignatures(checkpoint.note, [line, their_line])
    assert cosignature_time(note, WitnessKey.of("witness.test/w2", public)) == 1_767_225_601
    # the whole cosigned note verifies as a signed note with their note verifier
    parsed = notes.parse_note(note.encode())
    assert parsed is not None


def test_policy_refuses_a_checkpoint_without_its_quorum(log: Log) -> None:
    keys = [SigningKey.generate() for _ in range(3)]
    names = [f"witness.test/w{i}" for i in range(3)]
    policy = WitnessPolicy.parse(
        [str(WitnessKey.of(n, k.public_bytes)) for n, k in zip(names, keys, strict=True)], 2
    )
    checkpoint = log.checkpoint(9)
    one = add_cosignatures(checkpoint.note, [cosign(checkpoint, keys[0], names[0])])
    with pytest.raises(QuorumError) as refused:
        policy.check(one, [log.vkey])
    assert "1 of the 2" in str(refused.value) and names[1] in str(refused.value)
    two = add_cosignatures(one, [cosign(checkpoint, keys[2], names[2])])
    assert policy.check(two, [log.vkey]).size == 9
    # a cosignature by an unknown witness does not count; a forged one by a named witness fails
    stranger = SigningKey.generate()
    padded = add_cosignatures(one, [cosign(checkpoint, stranger, names[1])])
    with pytest.raises(QuorumError):
        policy.check(padded, [log.vkey])
    other = log.checkpoint(10)
    forged = add_cosignatures(one, [cosign(other, keys[1], names[1]).rstrip("\n")])
    with pytest.raises(CheckpointError, match="does not verify"):
        policy.check(forged, [log.vkey])
    # the log's own signature is still required
    with pytest.raises(CheckpointError):
        policy.check(two, [verifier_key(ORIGIN, SigningKey.generate().public_bytes)])
    with pytest.raises(CheckpointError):
        WitnessPolicy.parse([str(WitnessKey.of(names[0], keys[0].public_bytes))], 2)
