"""The audit log's Merkle code against the transparency-dev/merkle vectors (read in place from
``../shared/reference/merkle-testdata/``) and against a deliberately naive recursive reference
written here from RFC 9162 §2.1, under hypothesis."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault.crypto.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_HASHES,
    MAX_TREE_SIZE,
    AuditProofError,
    InvalidProofParameters,
    MerkleTree,
    ProofVerificationFailed,
    consistency_proof,
    inclusion_proof,
    is_valid_subtree,
    leaf_hash,
    leaf_hashes,
    node_hash,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
    verify_subtree_consistency,
    verify_subtree_inclusion,
)

pytestmark: list[pytest.MarkDecorator] = []

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "merkle-testdata"
KINDS = ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# transparency-dev/merkle vectors


def _vector_files() -> list[Any]:
    if not VECTORS.is_dir():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(reason=f"[merkle-vectors] folder missing: {VECTORS}"),
                id="missing",
            )
        ]
    files = sorted(VECTORS.rglob("*.json"))
    return [pytest.param(f, id=str(f.relative_to(VECTORS))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in case["proof"] or []]


def _check_vector(kind: str, case: dict[str, Any]) -> None:
    """Run one vector through the matching verifier; raise if it does not verify."""
    proof = _proof(case)
    if kind == "inclusion":
        verify_inclusion(
            index=case["leafIdx"],
            tree_size=case["treeSize"],
            leaf_hash=_b64(case["leafHash"]),
            proof=proof,
            root=_b64(case["root"]),
        )
    elif kind == "subtreeinclusion":
        verify_subtree_inclusion(
            index=case["leafIdx"],
            start=case["start"],
            end=case["end"],
            leaf_hash=_b64(case["leafHash"]),
            proof=proof,
            subtree_root=_b64(case["root"]),
        )
    elif kind == "consistency":
        verify_consistency(
            old_size=case["size1"],
            new_size=case["size2"],
            old_root=_b64(case["root1"]),
            new_root=_b64(case["root2"]),
            proof=proof,
        )
    elif kind == "subtreeconsistency":
        verify_subtree_consistency(
            start=case["start"],
            end=case["end"],
            tree_size=case["size"],
            proof=proof,
            subtree_root=_b64(case["root1"]),
            root=_b64(case["root2"]),
        )
    else:  # a new kind of vector must not pass unnoticed
        pytest.fail(f"unknown vector kind {kind!r}")


@pytest.mark.parametrize("path", _vector_files())
def test_it_agrees_with_the_transparency_dev_vector(path: Path) -> None:
    kind = path.relative_to(VECTORS).parts[0]
    case = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(case["wantErr"], bool)
    if case["wantErr"]:
        with pytest.raises(ProofVerificationFailed):
            _check_vector(kind, case)
    else:
        _check_vector(kind, case)


def test_it_reads_every_kind_of_vector() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"[merkle-vectors] folder missing: {VECTORS}")
    files = list(VECTORS.rglob("*.json"))
    kinds = {f.relative_to(VECTORS).parts[0] for f in files}
    assert kinds == set(KINDS)
    assert len(files) > 500
    cases = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    assert any(c["wantErr"] for c in cases)
    assert any(not c["wantErr"] for c in cases)


def test_it_recomputes_the_roots_of_valid_vectors() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"[merkle-vectors] folder missing: {VECTORS}")
    checked = 0
    for path in sorted(VECTORS.glob("inclusion/*/happy-path.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        got = root_from_inclusion_proof(
            index=case["leafIdx"],
            tree_size=case["treeSize"],
            leaf_hash=_b64(case["leafHash"]),
            proof=_proof(case),
        )
        assert got == _b64(case["root"])
        checked += 1
    for path in sorted(VECTORS.glob("consistency/*/happy-path.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        got = root_from_consistency_proof(
            old_size=case["size1"],
            new_size=case["size2"],
            old_root=_b64(case["root1"]),
            proof=_proof(case),
        )
        assert got == _b64(case["root2"])
        checked += 1
    assert checked >= 10


# --------------------------------------------------------------------------------------------
# Naive reference: RFC 9162 §2.1 transcribed as recursion over the leaves themselves


def _ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _ref_split(n)
    return hashlib.sha256(b"\x01" + _ref_mth(leaves[:k]) + _ref_mth(leaves[k:])).digest()


def _ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _ref_split(n)
    if m < k:
        return [*_ref_path(m, leaves[:k]), _ref_mth(leaves[k:])]
    return [*_ref_path(m - k, leaves[k:]), _ref_mth(leaves[:k])]


def _ref_subproof(m: int, leaves: list[bytes], known: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if known else [_ref_mth(leaves)]
    k = _ref_split(n)
    if m <= k:
        return [*_ref_subproof(m, leaves[:k], known), _ref_mth(leaves[k:])]
    return [*_ref_subproof(m - k, leaves[k:], False), _ref_mth(leaves[:k])]


def _ref_subtree_subproof(start: int, end: int, leaves: list[bytes], known: bool) -> list[bytes]:
    n = len(leaves)
    if start == 0 and end == n:
        return [] if known else [_ref_mth(leaves)]
    k = _ref_split(n)
    if end <= k:
        return [*_ref_subtree_subproof(start, end, leaves[:k], known), _ref_mth(leaves[k:])]
    if k <= start:
        return [
            *_ref_subtree_subproof(start - k, end - k, leaves[k:], known),
            _ref_mth(leaves[:k]),
        ]
    return [*_ref_subtree_subproof(0, end - k, leaves[k:], False), _ref_mth(leaves[:k])]


def _leaves(n: int, salt: bytes) -> list[bytes]:
    return [salt + i.to_bytes(4, "big") for i in range(n)]  # distinct leaves


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    tampered = list(proof)
    tampered[i] = bytes([tampered[i][0] ^ (1 << bit)]) + tampered[i][1:]
    return tampered


@FAST
@given(n=st.integers(min_value=0, max_value=300), salt=st.binary(max_size=8))
def test_it_computes_the_same_roots_as_the_reference(n: int, salt: bytes) -> None:
    leaves = _leaves(n, salt)
    want = _ref_mth(leaves)
    assert root_from_leaves(leaves) == want
    hashes = leaf_hashes(leaves)
    assert hashes == [leaf_hash(leaf) for leaf in leaves]
    assert root_from_leaf_hashes(hashes) == want
    bulk = MerkleTree(hashes)
    one_by_one = MerkleTree()
    for i, h in enumerate(hashes):
        assert one_by_one.append(h) == i
    assert bulk.root() == one_by_one.root() == want
    assert bulk.size == len(one_by_one) == n
    for m in {0, n // 3, n // 2, max(n - 1, 0)}:
        assert bulk.root(m) == one_by_one.root(m) == _ref_mth(leaves[:m])


@FAST
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6),
    salt=st.binary(max_size=4),
)
def test_it_extends_in_batches_like_the_reference(sizes: list[int], salt: bytes) -> None:
    leaves = _leaves(sum(sizes), salt)
    tree = MerkleTree()
    done = 0
    for size in sizes:
        tree.extend(leaf_hashes(leaves[done : done + size]))
        done += size
        assert tree.root() == _ref_mth(leaves[:done])


@FAST
@given(data=st.data(), n=st.integers(min_value=1, max_value=200), salt=st.binary(max_size=8))
# PCI-DSS 10.3.4: tampering with the audit log is detected.
def test_it_proves_inclusion_like_the_reference(data: st.DataObject, n: int, salt: bytes) -> None:
    leaves = _leaves(n, salt)
    tree = MerkleTree(leaf_hashes(leaves))
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    size = data.draw(st.integers(min_value=index + 1, max_value=n))
    proof = tree.inclusion_proof(index, size)
    assert proof == _ref_path(index, leaves[:size])
    root = _ref_mth(leaves[:size])
    lh = leaf_hash(leaves[index])
    verify_inclusion(index=index, tree_size=size, leaf_hash=lh, proof=proof, root=root)
    if size == n:
        assert inclusion_proof(index, leaf_hashes(leaves)) == proof

    bad: list[dict[str, Any]] = [
        {"proof": [*proof, proof[-1] if proof else root]},
        {"proof": [root, *proof]},
        {"leaf_hash": leaf_hash(leaves[index] + b"x")},
        {"root": leaf_hash(b"other")},
        {"tree_size": index},
    ]
    # No probes that only change the tree size: a root does not commit to its size, so a proof
    # can also fit another size with the same shape. Size and root always come together from one
    # signed checkpoint (the upstream vectors probe the sizes where the shape differs).
    if proof:
        bad.append({"proof": proof[:-1]})
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad.append({"proof": _flip(proof, i, data.draw(st.integers(0, 7)))})
    if size > 1:
        other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda j: j != index))
        bad.append({"index": other})
    for change in bad:
        args: dict[str, Any] = {
            "index": index,
            "tree_size": size,
            "leaf_hash": lh,
            "proof": proof,
            "root": root,
        }
        args.update(change)
        with pytest.raises(ProofVerificationFailed):
            verify_inclusion(**args)


@FAST
@given(data=st.data(), n=st.integers(min_value=1, max_value=200), salt=st.binary(max_size=8))
# PCI-DSS 10.3.4: tampering with the audit log is detected.
def test_it_proves_consistency_like_the_reference(data: st.DataObject, n: int, salt: bytes) -> None:
    leaves = _leaves(n, salt)
    tree = MerkleTree(leaf_hashes(leaves))
    new = data.draw(st.integers(min_value=1, max_value=n))
    old = data.draw(st.integers(min_value=1, max_value=new))
    proof = tree.consistency_proof(old, new)
    assert proof == _ref_subproof(old, leaves[:new], True)
    old_root, new_root = _ref_mth(leaves[:old]), _ref_mth(leaves[:new])
    good: dict[str, Any] = {
        "old_size": old,
        "new_size": new,
        "old_root": old_root,
        "new_root": new_root,
    }
    verify_consistency(proof=proof, **good)
    assert root_from_consistency_proof(old_size=old, new_size=new, old_root=old_root, proof=proof)
    # The same proof, read as a subtree consistency proof of [0, old).
    verify_subtree_consistency(
        start=0, end=old, tree_size=new, proof=proof, subtree_root=old_root, root=new_root
    )
    if new == n:
        assert consistency_proof(old, leaf_hashes(leaves)) == proof

    bad: list[dict[str, Any]] = [
        {"proof": [*proof, old_root]},
        {"proof": [new_root, *proof]},
        {"old_root": new_root, "new_root": old_root} if old != new else {"old_size": 0},
        {"old_root": leaf_hash(b"other")},
        {"new_root": leaf_hash(b"other")},
        {"old_size": new + 1},
        {"old_size": 0},
    ]  # no probes that only shift a size: see the inclusion test
    if proof:
        bad.append({"proof": proof[:-1]})
        bad.append({"proof": []})
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad.append({"proof": _flip(proof, i, data.draw(st.integers(0, 7)))})
    for change in bad:
        args: dict[str, Any] = {**good, "proof": proof, **change}
        with pytest.raises(ProofVerificationFailed):
            verify_consistency(**args)


@st.composite
def _subtrees(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(min_value=1, max_value=160))
    width = draw(st.integers(min_value=1, max_value=n))
    step = 1 << (width - 1).bit_length()
    start = step * draw(st.integers(min_value=0, max_value=(n - width) // step))
    return start, start + width, n


@FAST
@given(subtree=_subtrees(), data=st.data(), salt=st.binary(max_size=8))
def test_it_proves_subtrees_like_the_reference(
    subtree: tuple[int, int, int], data: st.DataObject, salt: bytes
) -> None:
    start, end, n = subtree
    assert is_valid_subtree(start, end)
    leaves = _leaves(n, salt)
    tree = MerkleTree(leaf_hashes(leaves))
    proof = tree.subtree_consistency_proof(start, end)
    assert proof == _ref_subtree_subproof(start, end, leaves, True)
    sub_root, root = _ref_mth(leaves[start:end]), _ref_mth(leaves)
    good: dict[str, Any] = {
        "start": start,
        "end": end,
        "tree_size": n,
        "subtree_root": sub_root,
        "root": root,
    }
    verify_subtree_consistency(proof=proof, **good)
    tampered = [[*proof, root], [root, *proof], proof[:-1] if proof else [root]]
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        tampered.append(_flip(proof, i, data.draw(st.integers(0, 7))))
    for bad in tampered:
        with pytest.raises(ProofVerificationFailed):
            verify_subtree_consistency(proof=bad, **good)
    with pytest.raises(ProofVerificationFailed):
        verify_subtree_consistency(proof=proof, **{**good, "subtree_root": leaf_hash(b"other")})

    index = data.draw(st.integers(min_value=start, max_value=end - 1))
    path = tree.subtree_inclusion_proof(index, start, end)
    assert path == _ref_path(index - start, leaves[start:end])
    verify_subtree_inclusion(
        index=index,
        start=start,
        end=end,
        leaf_hash=leaf_hash(leaves[index]),
        proof=path,
        subtree_root=sub_root,
    )


# --------------------------------------------------------------------------------------------
# Edge cases the vectors do not spell out


def test_it_hashes_with_the_rfc_9162_prefixes() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert root_from_leaves([b"a", b"b"]) == node_hash(left, right)
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert MerkleTree().root() == EMPTY_ROOT
    with pytest.raises(InvalidProofParameters):
        node_hash(left, right[:31])


def test_it_rejects_leaf_hashes_of_the_wrong_length() -> None:
    tree = MerkleTree([leaf_hash(b"a")])
    with pytest.raises(InvalidProofParameters):
        tree.extend([leaf_hash(b"b"), b"short"])
    assert tree.size == 1  # unchanged
    with pytest.raises(InvalidProofParameters):
        root_from_leaf_hashes([leaf_hash(b"a") + b"\x00"])
    with pytest.raises(InvalidProofParameters):
        MerkleTree(["not bytes"])  # type: ignore[list-item]


def test_it_rejects_out_of_range_proof_requests() -> None:
    tree = MerkleTree(leaf_hashes(_leaves(5, b"")))
    for call in (
        lambda: tree.inclusion_proof(5),
        lambda: tree.inclusion_proof(-1),
        lambda: tree.inclusion_proof(0, 6),
        lambda: tree.inclusion_proof(2, 2),
        lambda: tree.consistency_proof(0),
        lambda: tree.consistency_proof(4, 3),
        lambda: tree.consistency_proof(1, 6),
        lambda: tree.subtree_consistency_proof(1, 3),
        lambda: tree.subtree_inclusion_proof(0, 2, 4),
        lambda: tree.root(6),
        lambda: tree.leaf_hash(5),
    ):
        with pytest.raises(InvalidProofParameters):
            call()
    assert tree.consistency_proof(5) == []


def test_it_rejects_sizes_outside_uint64_and_non_integers() -> None:
    h = leaf_hash(b"a")
    for index, size in ((0, MAX_TREE_SIZE + 1), (-1, 1), (True, 2), (0, 1.0)):
        with pytest.raises(ProofVerificationFailed):
            verify_inclusion(index=index, tree_size=size, leaf_hash=h, proof=[], root=h)  # type: ignore[arg-type]
    with pytest.raises(ProofVerificationFailed):
        verify_consistency(old_size=1, new_size=MAX_TREE_SIZE + 1, old_root=h, new_root=h, proof=[])


def test_it_rejects_overlong_proofs_before_hashing() -> None:
    h = leaf_hash(b"a")
    with pytest.raises(ProofVerificationFailed, match="too long"):
        verify_inclusion(
            index=0,
            tree_size=MAX_TREE_SIZE,
            leaf_hash=h,
            proof=[h] * (MAX_PROOF_HASHES + 1),
            root=h,
        )


def test_it_accepts_the_largest_trees() -> None:
    # A tree of 2**64 - 1 leaves: the last leaf's path is 63 left siblings.
    h = leaf_hash(b"last")
    siblings = [leaf_hash(bytes([i])) for i in range(63)]
    root = h
    for s in siblings:
        root = node_hash(s, root)
    verify_inclusion(
        index=MAX_TREE_SIZE - 1, tree_size=MAX_TREE_SIZE, leaf_hash=h, proof=siblings, root=root
    )


def test_its_errors_share_one_base() -> None:
    assert issubclass(ProofVerificationFailed, AuditProofError)
    assert issubclass(InvalidProofParameters, AuditProofError)
    assert issubclass(InvalidProofParameters, ValueError)
