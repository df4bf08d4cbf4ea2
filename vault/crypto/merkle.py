"""RFC 9162 Merkle tree hashing and proofs for the tamper-evident audit log. Django-free.

The audit log of a tenant is an append-only list of leaves (byte strings). Its tree follows
RFC 9162 §2.1 (the same tree as RFC 6962):

- leaf hash ``SHA-256(0x00 || leaf)``, interior node ``SHA-256(0x01 || left || right)``; the
  prefixes keep a leaf from ever being read as a node (second-preimage resistance);
- the tree of ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``; the empty
  tree's root is ``SHA-256("")``.

This module computes roots (in bulk, or incrementally with :class:`MerkleTree`), generates
inclusion and consistency proofs from stored leaf hashes, and verifies them with the algorithms of
RFC 9162 §2.1.3.2 and §2.1.4.2. It also verifies the subtree inclusion and subtree consistency
proofs of the Merkle Tree Certificates draft (a consistency proof is the subtree consistency proof
of ``[0, old_size)``), so the whole transparency-dev/merkle vector set is checked.

Verification is strict, because a verifier that accepts a bad proof is the whole attack surface:
sizes must be integers in ``[0, 2**64 - 1]``, every proof hash exactly 32 bytes, a proof exactly as
long as its sizes demand (no leading or trailing hashes), and the final comparison is
constant-time. Every verification failure raises :class:`ProofVerificationFailed`, deliberately
coarse (like ``InvalidTag``); its message names the condition, never a secret.

Docs: ``docs/audit-format.md``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from itertools import repeat

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_HASHES",
    "MAX_TREE_SIZE",
    "AuditProofError",
    "InvalidProofParameters",
    "MerkleTree",
    "ProofVerificationFailed",
    "consistency_proof",
    "inclusion_proof",
    "is_valid_subtree",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
    "verify_subtree_consistency",
    "verify_subtree_inclusion",
]

#: Size in bytes of every hash in the tree (SHA-256).
HASH_SIZE = 32
#: Largest tree size accepted anywhere (sizes are uint64 in RFC 9162 and tlog-checkpoint).
MAX_TREE_SIZE = 2**64 - 1
#: Longest proof any valid input can need: 64 levels, plus one seed hash for consistency proofs.
MAX_PROOF_HASHES = 65

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256
_digest = type(hashlib.sha256()).digest

#: The root of the empty tree: ``SHA-256("")`` (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()


class AuditProofError(Exception):
    """Base of every error of the audit log's Merkle, proof and checkpoint code."""

    code = "audit_proof_error"


class InvalidProofParameters(AuditProofError, ValueError):
    """The caller asked for something the tree cannot give: an index or size out of range, an
    invalid subtree, a hash that is not 32 bytes. Raised by builders and proof generators, never
    by verifiers (which raise :class:`ProofVerificationFailed` whatever the cause)."""

    code = "audit_proof_invalid_parameters"


class ProofVerificationFailed(AuditProofError):
    """A proof does not verify: wrong root, wrong leaf, wrong sizes, a proof too short or too
    long, a hash of the wrong length. Deliberately one class for every cause."""

    code = "audit_proof_verification_failed"


# --------------------------------------------------------------------------------------------
# Hashing


def leaf_hash(leaf: bytes) -> bytes:
    """Hash one leaf: ``SHA-256(0x00 || leaf)``.

    Args:
        leaf: the leaf's bytes (for the audit log, the event's canonical encoding).

    Returns:
        The 32-byte leaf hash.

    Security: the 0x00 prefix separates leaves from interior nodes, so no leaf can be passed off
    as a node (or the reverse) to forge an inclusion proof.
    """
    return _sha256(_LEAF_PREFIX + leaf).digest()


def leaf_hashes(leaves: Iterable[bytes]) -> list[bytes]:
    """Hash many leaves at once (the bulk form of :func:`leaf_hash`, with no per-leaf Python
    frame).

    Args:
        leaves: the leaves' bytes, in log order.

    Returns:
        Their leaf hashes, in the same order.
    """
    return list(map(_digest, map(_sha256, map(_LEAF_PREFIX.__add__, leaves))))


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash an interior node: ``SHA-256(0x01 || left || right)``.

    Args:
        left: the left child's 32-byte hash.
        right: the right child's 32-byte hash.

    Returns:
        The 32-byte node hash.

    Raises:
        InvalidProofParameters: a child is not 32 bytes.
    """
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise InvalidProofParameters("a node's children must be 32-byte hashes")
    return _sha256(_NODE_PREFIX + left + right).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right).digest()


def _parents(level: Sequence[bytes], first_pair: int, end_pair: int) -> list[bytes]:
    """Hash the pairs ``level[2i], level[2i+1]`` for ``first_pair <= i < end_pair``, in C loops."""
    left = level[2 * first_pair : 2 * end_pair : 2]
    right = level[2 * first_pair + 1 : 2 * end_pair : 2]
    return list(map(_digest, map(_sha256, map(b"".join, zip(repeat(_NODE_PREFIX), left, right)))))


def _check_hashes(hashes: Sequence[bytes]) -> None:
    # Two C-level passes: this runs over every stored leaf hash on full verification.
    if not set(map(type, hashes)) <= {bytes} or not set(map(len, hashes)) <= {HASH_SIZE}:
        raise InvalidProofParameters("every leaf hash must be 32 bytes")


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Compute the Merkle tree hash (MTH) of a whole list of leaf hashes.

    Bottom-up, one level at a time: pairs are hashed and an unpaired last node moves up
    unchanged, which yields exactly RFC 9162's split at the largest power of two. This is the fast
    path for full verification (about one SHA-256 call per leaf, with no Python frame per node).

    Args:
        hashes: the 32-byte leaf hashes, in log order.

    Returns:
        The 32-byte root; :data:`EMPTY_ROOT` for an empty list.

    Raises:
        InvalidProofParameters: a leaf hash is not 32 bytes.
    """
    level = list(hashes)
    _check_hashes(level)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        parents = _parents(level, 0, len(level) // 2)
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    return level[0]


def root_from_leaves(leaves: Iterable[bytes]) -> bytes:
    """Compute the Merkle tree hash of a list of leaves (hashing each leaf first).

    Args:
        leaves: the leaves' bytes, in log order.

    Returns:
        The 32-byte root; :data:`EMPTY_ROOT` for no leaves.
    """
    return root_from_leaf_hashes(leaf_hashes(leaves))


# --------------------------------------------------------------------------------------------
# Sizes and subtrees


def _is_size(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TREE_SIZE


def _bit_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def is_valid_subtree(start: int, end: int) -> bool:
    """Whether ``[start, end)`` is a non-empty subtree in the sense of the Merkle Tree
    Certificates draft: ``start < end`` and ``start`` a multiple of the smallest power of two
    that is at least ``end - start``. Such a range is a node of every tree that contains it, or
    the left edge of one.

    Args:
        start: first leaf index of the range.
        end: one past its last leaf index.

    Returns:
        True for a valid non-empty subtree.
    """
    if not (_is_size(start) and _is_size(end)) or start >= end:
        return False
    return start % _bit_ceil(end - start) == 0


# --------------------------------------------------------------------------------------------
# Incremental tree with cached subtree hashes


class MerkleTree:
    """An append-only Merkle tree over stored leaf hashes, with every complete subtree hash kept.

    ``levels[h][i]`` is the hash of the perfect subtree over leaves ``[i * 2**h, (i + 1) * 2**h)``;
    only complete subtrees are kept, and they never change as the log grows (these are the
    "tiles" of a tiled log). Appending costs one node hash per completed subtree (amortized one
    per leaf); the root at any size, and any inclusion or consistency proof up to the current
    size, costs O(log² n) lookups and O(log n) hashes, with nothing recomputed from the leaves.

    Memory is about two hashes per leaf. For a one-off root of a long list, prefer
    :func:`root_from_leaf_hashes`, which keeps only one level at a time.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Build the tree from stored leaf hashes.

        Args:
            leaf_hashes: 32-byte leaf hashes in log order (e.g. read back from the database).

        Raises:
            InvalidProofParameters: a leaf hash is not 32 bytes.
        """
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves in the tree."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return self.size

    def leaf_hash(self, index: int) -> bytes:
        """The stored hash of leaf ``index``.

        Raises:
            InvalidProofParameters: ``index`` is outside ``[0, size)``.
        """
        if type(index) is not int or not 0 <= index < self.size:
            raise InvalidProofParameters("leaf index out of range")
        return self._levels[0][index]

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash.

        Args:
            leaf_hash: the new leaf's 32-byte hash.

        Returns:
            The index the leaf got.

        Raises:
            InvalidProofParameters: the hash is not 32 bytes.
        """
        self.extend((leaf_hash,))
        return self.size - 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes, hashing each new complete pair of every level in bulk.

        Args:
            leaf_hashes: 32-byte leaf hashes in log order.

        Raises:
            InvalidProofParameters: a hash is not 32 bytes (the tree is left unchanged).
        """
        new = list(leaf_hashes)
        _check_hashes(new)
        if not new:
            return
        levels = self._levels
        levels[0].extend(new)
        height = 0
        while True:
            level = levels[height]
            want = len(level) // 2
            have = len(levels[height + 1]) if height + 1 < len(levels) else 0
            if want == have:
                break
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].extend(_parents(level, have, want))
            height += 1

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves ``[lo, hi)``, where ``lo`` is a multiple of ``_bit_ceil(hi - lo)`` (true of
        every range the RFC 9162 recursions visit): fold its perfect pieces from the right."""
        count = hi - lo
        if count == 0:
            return EMPTY_ROOT
        pieces: list[bytes] = []
        offset = lo
        for height in range(count.bit_length() - 1, -1, -1):
            if count >> height & 1:
                pieces.append(self._levels[height][offset >> height])
                offset += 1 << height
        result = pieces.pop()
        while pieces:
            result = _node(pieces.pop(), result)
        return result

    def _size_arg(self, size: int | None) -> int:
        if size is None:
            return self.size
        if type(size) is not int or not 0 <= size <= self.size:
            raise InvalidProofParameters("tree size out of range")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree at ``size`` leaves (default: all of them).

        Args:
            size: an earlier size, ``0 <= size <= self.size``.

        Returns:
            The 32-byte root; :data:`EMPTY_ROOT` at size 0.

        Raises:
            InvalidProofParameters: ``size`` is out of range.
        """
        return self._range_hash(0, self._size_arg(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof (audit path) ``PATH(index, D[size])`` of RFC 9162 §2.1.3.1.

        Args:
            index: the leaf, ``0 <= index < size``.
            size: the tree size the proof is for (default: the current size).

        Returns:
            The sibling hashes from the leaf's level up to the root.

        Raises:
            InvalidProofParameters: ``index`` or ``size`` out of range.
        """
        n = self._size_arg(size)
        if type(index) is not int or not 0 <= index < n:
            raise InvalidProofParameters("leaf index out of range")
        return self._path(index, 0, n)

    def _path(self, index: int, lo: int, hi: int) -> list[bytes]:
        path: list[bytes] = []
        while hi - lo > 1:
            mid = lo + _split(hi - lo)
            if index < mid:
                path.append(self._range_hash(mid, hi))
                hi = mid
            else:
                path.append(self._range_hash(lo, mid))
                lo = mid
        path.reverse()
        return path

    def subtree_inclusion_proof(self, index: int, start: int, end: int) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the subtree ``[start, end)``.

        Raises:
            InvalidProofParameters: not a valid subtree within the tree, or ``index`` outside it.
        """
        if not is_valid_subtree(start, end) or end > self.size:
            raise InvalidProofParameters("not a valid subtree of this tree")
        if type(index) is not int or not start <= index < end:
            raise InvalidProofParameters("leaf index outside the subtree")
        return self._path(index, start, end)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The consistency proof ``PROOF(old_size, D[new_size])`` of RFC 9162 §2.1.4.1.

        Args:
            old_size: the earlier size, ``0 < old_size <= new_size``.
            new_size: the later size (default: the current size).

        Returns:
            The proof hashes; empty when the sizes are equal.

        Raises:
            InvalidProofParameters: sizes out of range or out of order, or ``old_size == 0`` (a
                proof from the empty tree proves nothing and RFC 9162 defines none).
        """
        n = self._size_arg(new_size)
        if type(old_size) is not int or not 0 < old_size <= n:
            raise InvalidProofParameters("old size must satisfy 0 < old_size <= new_size")
        return self.subtree_consistency_proof(0, old_size, n)

    def subtree_consistency_proof(
        self, start: int, end: int, size: int | None = None
    ) -> list[bytes]:
        """The subtree consistency proof of ``[start, end)`` in the tree of ``size`` leaves
        (Merkle Tree Certificates draft). With ``start == 0`` it is the RFC 9162 consistency
        proof from ``end`` to ``size``.

        Raises:
            InvalidProofParameters: not a valid non-empty subtree, or ``end > size``.
        """
        n = self._size_arg(size)
        if not is_valid_subtree(start, end) or end > n:
            raise InvalidProofParameters("not a valid subtree of this tree")
        proof: list[bytes] = []
        lo, hi, known = 0, n, True
        while not (start == lo and end == hi):
            mid = lo + _split(hi - lo)
            if end <= mid:
                proof.append(self._range_hash(mid, hi))
                hi = mid
            elif mid <= start:
                proof.append(self._range_hash(lo, mid))
                lo = mid
            else:  # start < mid < end: only start == lo is valid here; the rest is its right part
                proof.append(self._range_hash(lo, mid))
                lo = start = mid
                known = False
        if not known:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of all ``leaf_hashes`` (one-off
    convenience; build a :class:`MerkleTree` to serve many proofs).

    Raises:
        InvalidProofParameters: ``index`` out of range or a hash not 32 bytes.
    """
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof from ``old_size`` to the tree of all ``leaf_hashes`` (one-off
    convenience; build a :class:`MerkleTree` to serve many proofs).

    Raises:
        InvalidProofParameters: ``old_size`` out of range or a hash not 32 bytes.
    """
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


# --------------------------------------------------------------------------------------------
# Verification


def _fail(reason: str) -> ProofVerificationFailed:
    return ProofVerificationFailed(f"proof does not verify: {reason}")


def _checked_proof(proof: Sequence[bytes]) -> list[bytes]:
    hashes = list(proof)
    if len(hashes) > MAX_PROOF_HASHES:
        raise _fail("proof too long")
    if not all(type(h) is bytes and len(h) == HASH_SIZE for h in hashes):
        raise _fail("proof hash of the wrong length")
    return hashes


def _same(a: bytes, b: bytes) -> bool:
    return type(a) is bytes and type(b) is bytes and hmac.compare_digest(a, b)


def root_from_inclusion_proof(
    *, index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root an inclusion proof leads to (RFC 9162 §2.1.3.2, steps 1-5).

    Args:
        index: the leaf's index, ``0 <= index < tree_size``.
        tree_size: the size of the tree the proof is for.
        leaf_hash: the leaf's 32-byte hash.
        proof: the audit path, lowest level first.

    Returns:
        The root this proof implies; compare it with a trusted root (or use
        :func:`verify_inclusion`).

    Raises:
        ProofVerificationFailed: bad sizes, a hash of the wrong length, or a proof of the wrong
            length for this index and size.
    """
    if not (_is_size(index) and _is_size(tree_size)) or index >= tree_size:
        raise _fail("leaf index not below tree size")
    if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_SIZE:
        raise _fail("leaf hash of the wrong length")
    path = _checked_proof(proof)
    fn, sn = index, tree_size - 1
    result = leaf_hash
    for sibling in path:
        if sn == 0:
            raise _fail("proof too long")
        if fn & 1 or fn == sn:
            result = _node(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = _node(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("proof too short")
    return result


def verify_inclusion(
    *, index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` leaves whose root
    is ``root``.

    Args:
        index: the leaf's index.
        tree_size: the tree size the proof is for (from a verified checkpoint).
        leaf_hash: the leaf's 32-byte hash (computed by the caller from the leaf's bytes).
        proof: the audit path, lowest level first.
        root: the trusted root (from a verified checkpoint).

    Raises:
        ProofVerificationFailed: the proof does not verify, for any reason.

    Security: exact proof length, no spare hashes accepted, constant-time root comparison.
    """
    # PCI-DSS 10.3.4: change detection on audit logs (an altered event no longer proves in).
    calculated = root_from_inclusion_proof(
        index=index, tree_size=tree_size, leaf_hash=leaf_hash, proof=proof
    )
    if not _same(calculated, root):
        raise _fail("root mismatch")


def verify_subtree_inclusion(
    *,
    index: int,
    start: int,
    end: int,
    leaf_hash: bytes,
    proof: Sequence[bytes],
    subtree_root: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the subtree ``[start, end)`` whose hash is
    ``subtree_root`` (an inclusion proof within the subtree's own leaves).

    Raises:
        ProofVerificationFailed: not a valid non-empty subtree, ``index`` outside it, or the proof
            does not verify.
    """
    if not is_valid_subtree(start, end):
        raise _fail("not a valid subtree")
    if not _is_size(index) or not start <= index < end:
        raise _fail("leaf index outside the subtree")
    verify_inclusion(
        index=index - start,
        tree_size=end - start,
        leaf_hash=leaf_hash,
        proof=proof,
        root=subtree_root,
    )


def _root_from_subtree_proof(
    start: int, end: int, size: int, proof: list[bytes], subtree_root: bytes
) -> bytes:
    """The core of subtree consistency verification: RFC 9162 §2.1.4.2 generalized to a subtree
    ``[start, end)`` (which it is for ``start == 0``). Checks the part of the proof that rebuilds
    ``subtree_root`` and returns the root of the tree of ``size`` leaves that the proof implies.

    ``fn``, ``sn`` and ``tn`` are the subtree's first leaf, its last leaf and the tree's last leaf;
    shifting all three right climbs one level. ``fr`` rebuilds the subtree hash, ``sr`` the root.
    """
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:
        # The subtree ends at the tree's right edge: climb to the subtree's own node.
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:
        # Climb while the subtree's last node is a right child (its left sibling is inside it).
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if fn == sn:
        # The climb reached the node of the subtree itself: its hash is the seed, not in the proof.
        first = second = subtree_root
        rest = proof
    else:
        if not proof:
            raise _fail("proof too short")
        first = second = proof[0]
        rest = proof[1:]
    for sibling in rest:
        if tn == 0:
            raise _fail("proof too long")
        if sn & 1 or sn == tn:
            if fn < sn:
                first = _node(sibling, first)
            second = _node(sibling, second)
            while not sn & 1 and sn != 0:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            second = _node(second, sibling)
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if tn != 0:
        raise _fail("proof too short")
    if not _same(first, subtree_root):
        raise _fail("old root mismatch")
    return second


def root_from_consistency_proof(
    *, old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> bytes:
    """Check a consistency proof against the old root and return the new root it implies
    (RFC 9162 §2.1.4.2, all but the last comparison).

    Raises:
        ProofVerificationFailed: sizes out of order, ``old_size == 0`` (a proof from the empty
            tree is meaningless), a non-empty proof for equal sizes, a hash of the wrong length,
            a proof of the wrong length, or the proof does not rebuild ``old_root``.
    """
    if not (_is_size(old_size) and _is_size(new_size)) or old_size > new_size:
        raise _fail("old size greater than new size")
    if old_size == 0:
        raise _fail("consistency from the empty tree is meaningless")
    return _root_from_subtree_proof(0, old_size, new_size, _checked_proof(proof), old_root)


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves with root ``old_root`` is a prefix of the tree
    of ``new_size`` leaves with root ``new_root``: the log only grew, nothing was rewritten.

    Args:
        old_size: the earlier tree size (``0 < old_size <= new_size``).
        new_size: the later tree size.
        old_root: the trusted earlier root (e.g. from a saved checkpoint).
        new_root: the later root (from a newly verified checkpoint).
        proof: the consistency proof; empty when the sizes are equal.

    Raises:
        ProofVerificationFailed: the proof does not verify, for any reason. Equal sizes verify
            only with an empty proof and equal roots.

    Security: exact proof length, every proof hash 32 bytes, constant-time comparisons.
    """
    # PCI-DSS 10.3.4: change detection on audit logs (history rewritten after a checkpoint).
    calculated = root_from_consistency_proof(
        old_size=old_size, new_size=new_size, old_root=old_root, proof=proof
    )
    if not _same(calculated, new_root):
        raise _fail("new root mismatch")


def verify_subtree_consistency(
    *,
    start: int,
    end: int,
    tree_size: int,
    proof: Sequence[bytes],
    subtree_root: bytes,
    root: bytes,
) -> None:
    """Check that the subtree ``[start, end)`` with hash ``subtree_root`` sits at those leaves of
    the tree of ``tree_size`` leaves whose root is ``root`` (Merkle Tree Certificates draft).

    An empty subtree (``start == end <= tree_size``) verifies with an empty proof when
    ``subtree_root`` is the empty tree's hash, whatever ``root`` is: the empty range is part of
    every tree.

    Raises:
        ProofVerificationFailed: an invalid subtree, ``end > tree_size``, or the proof does not
            verify.
    """
    if not (_is_size(start) and _is_size(end) and _is_size(tree_size)):
        raise _fail("sizes out of range")
    if start > end or end > tree_size:
        raise _fail("subtree not within the tree")
    hashes = _checked_proof(proof)
    if start == end:
        if hashes:
            raise _fail("proof too long")
        if not _same(subtree_root, EMPTY_ROOT):
            raise _fail("old root mismatch")
        return
    if not is_valid_subtree(start, end):
        raise _fail("not a valid subtree")
    calculated = _root_from_subtree_proof(start, end, tree_size, hashes, subtree_root)
    if not _same(calculated, root):
        raise _fail("new root mismatch")
