"""The RFC 9162 section 2.1 Merkle tree: hashes, proofs and their verification, as pure functions.

Leaf hash = SHA-256(0x00 || data); node hash = SHA-256(0x01 || left || right); a tree of n > 1
leaves splits at k, the largest power of two smaller than n. The proofs are exactly the RFC's
PATH and PROOF (bottom-up), so they interoperate with Certificate Transparency tooling.

Proof construction is expressed once, as *which ranges of leaves* a proof hashes
(``inclusion_ranges`` and ``consistency_ranges``). The pure functions over a list of leaf
hashes and the stored log (``exchange.ledger.storage``) both build proofs from those ranges; the
log resolves each range into the O(log n) complete aligned subtrees it persists
(``range_subtrees``), so a proof at any size reads O(log n) rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof was asked for positions outside the tree."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash of ``data``: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose leaves [start, end) into complete aligned subtrees, left to right.

    Returns (level, index) pairs: the subtree at level L and index i covers leaves
    [i * 2**L, (i + 1) * 2**L). Every range a proof hashes starts at a multiple of a power of two
    at least as large as its length, so it decomposes by the binary digits of its length, largest
    first, into at most log2(n) + 1 subtrees.
    """
    out: list[tuple[int, int]] = []
    position = start
    remaining = end - start
    while remaining:
        level = remaining.bit_length() - 1
        size = 1 << level
        if position % size:
            raise ProofError(f"range [{start}, {end}) is not a proof range")
        out.append((level, position >> level))
        position += size
        remaining -= size
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of ``range_subtrees`` (left to right) into the range's Merkle hash.

    The RFC splits at the largest power of two, so the leftmost (largest) subtree is the left
    child at the top and the rest nest to the right: h0 . (h1 . (h2 ...)).
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def subtree_levels(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Every complete aligned subtree of a run of leaves, level by level, for a reader to pick.

    ``levels[L]`` is the concatenation of the 32-byte hashes of the subtrees at level L, counted
    from the first leaf of the run: the i-th covers leaves [i * 2**L, (i + 1) * 2**L) of it, and
    there are ``len(leaf_hashes) >> L`` of them. Costs one node hash per leaf, in one tight loop:
    the offline verifier's workers build them so that its parent adds a chunk of leaves to its
    tree, and takes a root anywhere inside it, with O(log n) hashes.
    """
    level = list(leaf_hashes)
    levels = [b"".join(level)]
    sha256 = _sha256
    while len(level) > 1:
        level = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        levels.append(b"".join(level))
    return levels


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash MTH of ``leaf_hashes`` (SHA-256 of nothing for no leaves)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    # Bottom-up: pair complete subtrees level by level; an odd last node is carried up as-is,
    # which yields exactly the largest-power-of-two split of the recursive definition.
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes form the RFC 9162 PATH(index, D[size]), bottom-up.

    Raises ProofError unless 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes form the RFC 9162 PROOF(old_size, D[new_size]).

    Empty when old_size is 0 or equals new_size. Raises ProofError unless
    0 <= old_size <= new_size.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, m, complete = 0, new_size, old_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                ranges.append((start, end))
            break
        k = _split(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            complete = False
    ranges.reverse()
    return ranges


def _range_hash(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    return root(leaf_hashes[start:end])


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the RFC 9162 inclusion proof of leaf ``index`` in the tree of ``leaf_hashes``.

    Raises ProofError if ``index`` is not a leaf of the tree.
    """
    return [_range_hash(leaf_hashes, s, e) for s, e in inclusion_ranges(index, len(leaf_hashes))]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the RFC 9162 consistency proof from the first ``old_size`` leaves to all of them.

    Raises ProofError if ``old_size`` is negative or larger than the tree.
    """
    ranges = consistency_ranges(old_size, len(leaf_hashes))
    return [_range_hash(leaf_hashes, s, e) for s, e in ranges]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Return True if ``proof`` proves leaf ``leaf_hash`` at ``index`` in the tree ``root``.

    The algorithm of RFC 9162 section 2.1.3.2. Never raises; any malformed input is False.
    """
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Return True if ``proof`` shows the tree ``old_root`` is a prefix of the tree ``new_root``.

    The algorithm of RFC 9162 section 2.1.4.2; a tree of size 0 is a prefix of every tree (with
    an empty proof). Never raises; any malformed input is False.
    """
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a proof node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class CompactRange:
    """The right edge of a growing tree: one hash per set bit of its size.

    Appending a leaf costs amortised one node hash; ``root`` costs O(log n). Used by the writer
    (to compute the nodes a batch completes) and by the offline verifier (to recompute the root
    at every checkpoint while streaming the log once).
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Start from ``size`` leaves whose ``range_subtrees(0, size)`` hashes are ``hashes``."""
        if len(hashes) != bin(size).count("1"):
            raise ValueError("a compact range holds one hash per set bit of its size")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> list[bytes]:
        """The hashes of ``range_subtrees(0, size)``, left to right."""
        return list(self._hashes)

    def append(self, leaf: bytes, completed: list[tuple[int, int, bytes]] | None = None) -> None:
        """Add one leaf hash; record every interior node it completes in ``completed``.

        Entries of ``completed`` are (level, index, hash) with level >= 1.
        """
        h = leaf
        index = self.size
        level = 0
        hashes = self._hashes
        while index & 1:
            h = node_hash(hashes.pop(), h)
            level += 1
            index >>= 1
            if completed is not None:
                completed.append((level, index, h))
        hashes.append(h)
        self.size += 1

    def append_subtree(self, level: int, node: bytes) -> None:
        """Add the 2**level leaves whose subtree hash is ``node`` at once.

        Raises ValueError unless the size is a multiple of 2**level (the subtree must be aligned
        where it lands, as every node of the tree is).
        """
        if level < 0 or self.size % (1 << level):
            raise ValueError(f"a subtree of level {level} cannot start at leaf {self.size}")
        h = node
        index = self.size >> level
        hashes = self._hashes
        while index & 1:
            h = node_hash(hashes.pop(), h)
            index >>= 1
        hashes.append(h)
        self.size += 1 << level

    def root(self) -> bytes:
        """The Merkle tree hash of the leaves appended so far."""
        return fold_subtrees(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self.size, self._hashes)
