"""RFC 9162 Merkle tree: known answers and properties of proofs at every index and size pair."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.ledger import merkle

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "rfc9162_merkle.json").read_text())
LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]


def _reference_mth(leaves: list[bytes]) -> bytes:
    """The recursive definition of RFC 9162 section 2.1.1, written independently."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + _reference_mth(leaves[:k]) + _reference_mth(leaves[k:])
    ).digest()


@pytest.mark.parametrize("size", range(9))
def test_root_matches_known_answer(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == VECTORS["roots"][str(size)]


@pytest.mark.parametrize("case", VECTORS["inclusion"])
def test_inclusion_proof_matches_known_answer(case: dict[str, object]) -> None:
    index, size = int(case["index"]), int(case["size"])  # type: ignore[call-overload]
    proof = merkle.inclusion_proof(index, LEAVES[:size])
    assert [p.hex() for p in proof] == case["proof"]
    root = bytes.fromhex(VECTORS["roots"][str(size)])
    assert merkle.verify_inclusion(LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize("case", VECTORS["consistency"])
def test_consistency_proof_matches_known_answer(case: dict[str, object]) -> None:
    old, new = int(case["old_size"]), int(case["new_size"])  # type: ignore[call-overload]
    proof = merkle.consistency_proof(old, LEAVES[:new])
    assert [p.hex() for p in proof] == case["proof"]
    old_root = bytes.fromhex(VECTORS["roots"][str(old)])
    new_root = bytes.fromhex(VECTORS["roots"][str(new)])
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)


def test_leaf_and_node_hashes_use_domain_prefixes() -> None:
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = b"a" * 32, b"b" * 32
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


def _leaves(n: int, salt: int) -> list[bytes]:
    return [merkle.leaf_hash(salt.to_bytes(4, "big") + i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=0, max_value=70), salt=st.integers(0, 2**16))
def test_root_equals_recursive_definition(n: int, salt: int) -> None:
    leaves = _leaves(n, salt)
    assert merkle.root(leaves) == _reference_mth(leaves)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=40), salt=st.integers(0, 2**16))
def test_inclusion_proofs_verify_at_every_index_and_size(n: int, salt: int) -> None:
    leaves = _leaves(n, salt)
    for size in range(1, n + 1):
        root = merkle.root(leaves[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(index, leaves[:size])
            assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
            # the same proof must not prove another leaf, position or root
            other = leaves[(index + 1) % size]
            if other != leaves[index]:
                assert not merkle.verify_inclusion(other, index, size, proof, root)
            assert not merkle.verify_inclusion(leaves[index], size, size, proof, root)
            if proof:
                bad = [*proof[:-1], bytes(32)]
                assert not merkle.verify_inclusion(leaves[index], index, size, bad, root)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=40), salt=st.integers(0, 2**16))
def test_consistency_proofs_verify_for_every_pair_of_sizes(n: int, salt: int) -> None:
    leaves = _leaves(n, salt)
    roots = [merkle.root(leaves[:s]) for s in range(n + 1)]
    for new in range(n + 1):
        for old in range(new + 1):
            proof = merkle.consistency_proof(old, leaves[:new])
            assert merkle.verify_consistency(old, new, roots[old], roots[new], proof)
            if 0 < old < new:
                assert not merkle.verify_consistency(old, new, roots[old], bytes(32), proof)
                assert not merkle.verify_consistency(old, new, bytes(32), roots[new], proof)
                assert not merkle.verify_consistency(old, new, roots[old], roots[new], proof[:-1])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=0, max_value=300))
def test_compact_range_tracks_root_and_completed_nodes(n: int) -> None:
    leaves = _leaves(n, 7)
    compact = merkle.CompactRange()
    completed: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        compact.append(leaf, completed)
    assert compact.root() == merkle.root(leaves)
    for level, index, h in completed:
        width = 1 << level
        assert h == merkle.root(leaves[index * width : (index + 1) * width])
    assert len(completed) == max(n - bin(n).count("1"), 0)


def test_proofs_outside_the_tree_are_refused() -> None:
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(3, LEAVES[:3])
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(4, LEAVES[:3])
    assert not merkle.verify_inclusion(LEAVES[0], 1, 1, [], LEAVES[0])
    assert not merkle.verify_consistency(2, 1, LEAVES[0], LEAVES[0], [])
