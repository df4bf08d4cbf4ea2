"""Audit export bundles: built from a real log signed with a real P-256 key, verified offline,
and every tampering caught by the check meant for it (each test names the exception class of
its check, so removing that check makes the test fail)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.crypto.audit_helpers import (
    EXPORTED_AT,
    ORIGIN,
    Log,
    edit,
    event,
    new_signer,
    standard_log,
)
from vault.crypto.auditbundle import (
    BUNDLE_FORMAT,
    LEAF_COLUMNS,
    BundleCheckpointInvalid,
    BundleConsistencyFailed,
    BundleError,
    BundleFormatError,
    BundleHistoryRewritten,
    BundleInclusionFailed,
    BundleLeafInvalid,
    BundleLeafOrderError,
    BundleRollback,
    BundleSavedCheckpointMissing,
    BundleUnanchored,
    BundleVerificationFailed,
    InvalidBundleParameters,
    LeafFormatError,
    build_bundle,
    leaf_columns,
    parse_bundle,
    parse_leaf,
    verify_bundle,
)
from vault.crypto.canonical import canonical_json
from vault.crypto.checkpoint import CheckpointKey, SignedNote
from vault.crypto.merkle import AuditProofError, MerkleTree

pytestmark: list[pytest.MarkDecorator] = []

Signer = tuple[ec.EllipticCurvePrivateKey, CheckpointKey]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return new_signer()


@pytest.fixture(scope="module")
def other_signer() -> Signer:
    return new_signer()


@pytest.fixture(scope="module")
def log(signer: Signer) -> Log:
    return standard_log(*signer)


@pytest.fixture(scope="module")
def bundle(log: Log) -> bytes:
    return log.bundle(2, 10)


@pytest.fixture(scope="module")
def key(signer: Signer) -> CheckpointKey:
    return signer[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _flip(encoded: str) -> str:
    data = bytearray(base64.b64decode(encoded))
    data[0] ^= 1
    return _b64(bytes(data))


def _fails(exc_type: type[BundleError], data: bytes, **kwargs: Any) -> BundleError:
    with pytest.raises(exc_type) as caught:
        verify_bundle(data, **kwargs)
    assert type(caught.value) is exc_type
    return caught.value


# --------------------------------------------------------------------------------------------
# Building and verifying


def test_it_verifies_a_bundle_of_a_real_log(bundle: bytes, key: CheckpointKey) -> None:
    report = verify_bundle(bundle, trusted=[key])
    assert report.origin == ORIGIN
    assert report.checkpoint_count == 4
    assert report.last_size == 12
    assert (report.leaves_checked, report.first_index, report.last_index) == (8, 2, 9)
    assert report.anchored_to_saved is False
    assert report.saved_size is None
    assert report.exported_at == EXPORTED_AT


def test_it_writes_exactly_the_documented_document(bundle: bytes, log: Log) -> None:
    assert bundle.endswith(b"}\n")
    assert bundle.isascii()
    document = json.loads(bundle)
    assert list(document) == [
        "format",
        "origin",
        "exported_at",
        "range",
        "signing_keys",
        "checkpoints",
        "consistency",
        "leaves",
    ]
    assert document["format"] == BUNDLE_FORMAT
    assert document["range"] == {"from": "2025-02-01T00:00:00Z", "to": None}
    assert document["signing_keys"] == [log.key.vkey]
    assert [note.encode() for note in document["checkpoints"]] == log.notes
    # No proof from the size-0 checkpoint; one per later pair.
    assert [(c["from"], c["to"]) for c in document["consistency"]] == [(3, 7), (7, 12)]
    assert document["consistency"][0]["proof"] == [
        _b64(h) for h in log.tree.consistency_proof(3, 7)
    ]
    first = document["leaves"][0]
    assert list(first) == ["index", "leaf", "columns", "proof"]
    assert first["index"] == 2
    assert base64.b64decode(first["leaf"]) == log.leaves[2]
    assert list(first["columns"]) == list(LEAF_COLUMNS)
    assert first["proof"] == [_b64(h) for h in log.tree.inclusion_proof(2, 12)]


def test_it_verifies_an_export_with_no_leaves_and_one_checkpoint(signer: Signer) -> None:
    log = Log(*signer)
    log.add_events(5)
    log.checkpoint()
    report = verify_bundle(log.bundle(0, 0), trusted=[signer[1]])
    assert (report.leaves_checked, report.first_index, report.last_index) == (0, None, None)
    assert report.last_size == 5


def test_it_verifies_under_a_rotated_key_when_both_are_trusted(
    signer: Signer, other_signer: Signer
) -> None:
    log = Log(*signer)
    log.add_events(4)
    log.checkpoint()
    log.private, log.key = other_signer[0], CheckpointKey(ORIGIN, other_signer[1].public_key)
    log.add_events(3)
    log.checkpoint()
    bundle = log.bundle()
    assert verify_bundle(bundle, trusted=[signer[1], log.key]).checkpoint_count == 2
    error = _fails(BundleCheckpointInvalid, bundle, trusted=[signer[1]])
    assert "checkpoint 2 of 2" in str(error)


def test_it_accepts_json_whitespace_around_the_document(bundle: bytes, key: CheckpointKey) -> None:
    assert verify_bundle(b" \r\n" + bundle + b"\n\t ", trusted=[key]).leaves_checked == 8


# --------------------------------------------------------------------------------------------
# Rule 2: trust comes from the user only


def test_it_is_unanchored_without_trusted_keys(bundle: bytes, log: Log) -> None:
    with pytest.raises(BundleUnanchored) as caught:
        verify_bundle(bundle, trusted=[])
    assert not isinstance(caught.value, BundleVerificationFailed)
    assert caught.value.code == "audit_bundle_unanchored"
    assert caught.value.origin == ORIGIN
    assert caught.value.signing_keys == (log.key.vkey,)


def test_it_never_trusts_the_keys_the_bundle_names(
    signer: Signer, other_signer: Signer, key: CheckpointKey
) -> None:
    forged = Log(other_signer[0], CheckpointKey(ORIGIN, other_signer[1].public_key))
    forged.add_events(4)
    forged.checkpoint()
    bundle = forged.bundle()
    assert json.loads(bundle)["signing_keys"] == [forged.key.vkey]
    error = _fails(BundleCheckpointInvalid, bundle, trusted=[key])
    assert "audit_checkpoint_not_trusted" in str(error)


# --------------------------------------------------------------------------------------------
# Rule 5: leaves

# PCI-DSS 10.3.4: tampering with an exported audit log is detected offline.


def test_it_rejects_an_edited_leaf(bundle: bytes, log: Log, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        entry = document["leaves"][3]
        value = json.loads(base64.b64decode(entry["leaf"]))
        value["details"]["n"] += 1000  # still canonical, columns still agree
        entry["leaf"] = _b64(canonical_json(value))

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_a_flipped_byte_in_a_leaf(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        entry = document["leaves"][0]
        leaf = base64.b64decode(entry["leaf"])
        entry["leaf"] = _b64(leaf.replace(b'["a",', b'["c",'))

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_an_edited_column(bundle: bytes, key: CheckpointKey) -> None:
    error = _fails(
        BundleLeafInvalid,
        edit(bundle, lambda d: d["leaves"][4]["columns"].update(actor_id="someone-else")),
        trusted=[key],
    )
    assert "actor_id" in str(error)


@pytest.mark.parametrize("column", LEAF_COLUMNS)
def test_it_checks_every_column(bundle: bytes, key: CheckpointKey, column: str) -> None:
    def change(document: dict[str, Any]) -> None:
        document["leaves"][1]["columns"][column] += "x"

    _fails(BundleLeafInvalid, edit(bundle, change), trusted=[key])


def test_it_rejects_a_deleted_leaf(bundle: bytes, key: CheckpointKey) -> None:
    error = _fails(BundleLeafOrderError, edit(bundle, lambda d: d["leaves"].pop(3)), trusted=[key])
    assert "gap" in str(error)


def test_it_rejects_an_inserted_leaf_at_a_taken_index(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        entry = dict(document["leaves"][2])
        entry["leaf"] = _b64(canonical_json(event(4)))
        document["leaves"].insert(3, entry)

    _fails(BundleLeafOrderError, edit(bundle, change), trusted=[key])


def test_it_rejects_an_inserted_leaf_with_the_rest_renumbered(
    bundle: bytes, key: CheckpointKey
) -> None:
    def change(document: dict[str, Any]) -> None:
        leaves = document["leaves"]
        forged = dict(leaves[2], leaf=_b64(canonical_json(event(999))))
        forged["columns"] = leaf_columns(event(999))
        leaves.insert(2, forged)
        for entry in leaves[3:]:
            entry["index"] += 1

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_reordered_leaves(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        leaves = document["leaves"]
        leaves[2], leaves[3] = leaves[3], leaves[2]  # each still proves on its own

    _fails(BundleLeafOrderError, edit(bundle, change), trusted=[key])


def test_it_rejects_leaves_swapped_between_indices(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        a, b = document["leaves"][2], document["leaves"][3]
        a["leaf"], b["leaf"] = b["leaf"], a["leaf"]
        a["columns"], b["columns"] = b["columns"], a["columns"]

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_an_index_not_below_the_last_size(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        leaves = document["leaves"]
        del leaves[:-1]
        leaves[0]["index"] = 12

    _fails(BundleLeafOrderError, edit(bundle, change), trusted=[key])


def test_it_rejects_an_altered_inclusion_proof_hash(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        proof = document["leaves"][5]["proof"]
        proof[1] = _flip(proof[1])

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_an_inclusion_proof_with_a_hash_too_many(
    bundle: bytes, key: CheckpointKey
) -> None:
    def change(document: dict[str, Any]) -> None:
        proof = document["leaves"][5]["proof"]
        proof.append(proof[0])

    _fails(BundleInclusionFailed, edit(bundle, change), trusted=[key])


def _log_with(signer: Signer, value: dict[str, Any], leaf: bytes | None = None) -> Log:
    """A log whose leaf 2 is ``value`` (its bytes ``leaf``), properly included and signed: only
    the leaf-form checks can catch it."""
    log = Log(*signer)
    log.add_events(2)
    log.add(value, leaf=leaf)
    log.add_events(2)
    log.checkpoint()
    return log


def test_it_rejects_a_non_canonical_leaf(signer: Signer) -> None:
    value = event(2)
    spaced = json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    error = _fails(
        BundleLeafInvalid, _log_with(signer, value, spaced).bundle(), trusted=[signer[1]]
    )
    assert "leaf 2" in str(error)


@pytest.mark.parametrize(
    "leaf",
    [
        # members out of order
        b'{"v":1,' + canonical_json(event(2))[1:].replace(b'"v":1,', b""),
        # ASCII escape where the canonical form has the character
        canonical_json(event(2)).replace("é".encode(), b"\\u00e9"),
        # an escaped slash
        canonical_json(event(2)).replace(b"cvault/0.1", b"cvault\\/0.1"),
        # a duplicated member
        canonical_json(event(2))[:-1] + b',"v":1}',
    ],
    ids=["order", "escape", "slash", "duplicate"],
)
def test_it_rejects_other_non_canonical_forms(signer: Signer, leaf: bytes) -> None:
    _fails(BundleLeafInvalid, _log_with(signer, event(2), leaf).bundle(), trusted=[signer[1]])


def test_it_rejects_a_float_in_details(signer: Signer) -> None:
    value = event(2)
    leaf = canonical_json(value).replace(b'"n":2', b'"n":2.5')
    error = _fails(BundleLeafInvalid, _log_with(signer, value, leaf).bundle(), trusted=[signer[1]])
    assert "floating-point" in str(error)


def test_it_rejects_a_leaf_of_another_log(signer: Signer) -> None:
    value = event(2, log="ciphervault.example/audit/other")
    error = _fails(BundleLeafInvalid, _log_with(signer, value).bundle(), trusted=[signer[1]])
    assert "another log" in str(error)


# --------------------------------------------------------------------------------------------
# Rules 3 and 4: checkpoints and consistency


def test_it_rejects_a_dropped_consistency_proof(bundle: bytes, key: CheckpointKey) -> None:
    error = _fails(
        BundleConsistencyFailed, edit(bundle, lambda d: d["consistency"].pop()), trusted=[key]
    )
    assert "missing" in str(error)


def test_it_rejects_an_extra_consistency_proof(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        document["consistency"].append(dict(document["consistency"][-1]))

    _fails(BundleConsistencyFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_a_consistency_proof_for_other_sizes(
    bundle: bytes, log: Log, key: CheckpointKey
) -> None:
    def change(document: dict[str, Any]) -> None:
        proof = [_b64(h) for h in log.tree.consistency_proof(3, 12)]
        document["consistency"][0] = {"from": 3, "to": 12, "proof": proof}

    _fails(BundleConsistencyFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_a_consistency_proof_labelled_with_other_sizes(
    bundle: bytes, key: CheckpointKey
) -> None:
    for member, value in (("from", 4), ("to", 8)):

        def change(document: dict[str, Any], m: str = member, v: int = value) -> None:
            document["consistency"][0][m] = v

        changed = edit(bundle, change)
        error = _fails(BundleConsistencyFailed, changed, trusted=[key])
        assert "expected from 3 to 7" in str(error)


def test_it_rejects_an_altered_consistency_proof_hash(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        proof = document["consistency"][1]["proof"]
        proof[-1] = _flip(proof[-1])

    _fails(BundleConsistencyFailed, edit(bundle, change), trusted=[key])


def test_it_rejects_checkpoints_that_do_not_chain(signer: Signer, log: Log) -> None:
    """Two checkpoints, each validly signed, of trees that do not extend one another."""
    forked = Log(*signer)
    forked.add_events(5)
    forked.add(event(70))  # differs from the real log at index 5, inside the first 7
    forked.add_events(6)
    notes = [log.notes[2], forked.sign(12)]  # sizes 7 (the real log) and 12 (the fork)

    def change(document: dict[str, Any]) -> None:
        document["consistency"] = [
            {"from": 7, "to": 12, "proof": [_b64(h) for h in forked.tree.consistency_proof(7)]}
        ]

    bundle = edit(log.bundle(notes=notes), change)
    _fails(BundleConsistencyFailed, bundle, trusted=[signer[1]])


def test_it_rejects_sizes_that_do_not_increase(bundle: bytes, key: CheckpointKey) -> None:
    def swap(document: dict[str, Any]) -> None:
        notes = document["checkpoints"]
        notes[2], notes[3] = notes[3], notes[2]

    def repeat(document: dict[str, Any]) -> None:
        document["checkpoints"].insert(2, document["checkpoints"][2])

    for change in (swap, repeat):
        error = _fails(BundleCheckpointInvalid, edit(bundle, change), trusted=[key])
        assert "not larger" in str(error)


def test_it_rejects_a_checkpoint_resigned_with_an_untrusted_key(
    bundle: bytes, log: Log, other_signer: Signer, key: CheckpointKey
) -> None:
    impostor = Log(other_signer[0], CheckpointKey(ORIGIN, other_signer[1].public_key))
    impostor.tree = log.tree
    resigned = impostor.sign(12)  # the same checkpoint text, another key

    def change(document: dict[str, Any]) -> None:
        document["checkpoints"][-1] = resigned.decode()

    error = _fails(BundleCheckpointInvalid, edit(bundle, change), trusted=[key])
    assert "checkpoint 4 of 4" in str(error)


def test_it_rejects_an_altered_checkpoint(bundle: bytes, log: Log, key: CheckpointKey) -> None:
    parsed = SignedNote.parse(log.notes[-1])
    text = parsed.text.replace(b"\n12\n", b"\n13\n")
    altered = SignedNote(text=text, signatures=parsed.signatures).to_bytes()

    def change(document: dict[str, Any]) -> None:
        document["checkpoints"][-1] = altered.decode()

    error = _fails(BundleCheckpointInvalid, edit(bundle, change), trusted=[key])
    assert "audit_checkpoint_signature_invalid" in str(error)


def test_it_rejects_a_checkpoint_of_another_origin(signer: Signer) -> None:
    other = Log(signer[0], CheckpointKey("ciphervault.example/audit/other", signer[1].public_key))
    other.origin = "ciphervault.example/audit/other"
    other.add_events(3)
    other.checkpoint()
    bundle = edit(other.bundle(), lambda d: d.update(origin=ORIGIN))
    other_key = other.key
    _fails(BundleCheckpointInvalid, bundle, trusted=[other_key])


# --------------------------------------------------------------------------------------------
# Rule 6: the saved checkpoint

# PCI-DSS 10.3.4: a rewritten or rolled-back audit log is detected against a saved checkpoint.


def test_it_anchors_to_a_saved_checkpoint(bundle: bytes, log: Log, key: CheckpointKey) -> None:
    for position, size in ((1, 3), (2, 7), (3, 12)):
        report = verify_bundle(bundle, trusted=[key], saved_checkpoint=log.notes[position])
        assert report.anchored_to_saved is True
        assert report.saved_size == size
    report = verify_bundle(bundle, trusted=[key], saved_checkpoint=log.notes[0])
    assert (report.anchored_to_saved, report.saved_size) == (True, 0)


def _rewritten(signer: Signer) -> Log:
    """The standard log with event 5 replaced, re-checkpointed at the same sizes."""
    log = Log(*signer)
    log.checkpoint()
    for number in range(12):
        log.add(event(number if number != 5 else 500))
        if log.tree.size in (3, 7, 12):
            log.checkpoint()
    return log


def test_it_detects_rewritten_history(signer: Signer, log: Log, key: CheckpointKey) -> None:
    rewritten = _rewritten(signer).bundle()
    assert verify_bundle(rewritten, trusted=[key]).last_size == 12  # consistent on its own
    assert verify_bundle(rewritten, trusted=[key], saved_checkpoint=log.notes[1]).saved_size == 3
    error = _fails(BundleHistoryRewritten, rewritten, trusted=[key], saved_checkpoint=log.notes[2])
    assert "history rewritten" in str(error)


def test_it_detects_history_rewritten_under_another_trusted_key(
    log: Log, other_signer: Signer, key: CheckpointKey
) -> None:
    other_key = CheckpointKey(ORIGIN, other_signer[1].public_key)
    rewritten = _rewritten((other_signer[0], other_key)).bundle()
    _fails(BundleCheckpointInvalid, rewritten, trusted=[key], saved_checkpoint=log.notes[3])
    _fails(
        BundleHistoryRewritten,
        rewritten,
        trusted=[key, other_key],
        saved_checkpoint=log.notes[3],
    )


def test_it_detects_a_rollback(log: Log, key: CheckpointKey) -> None:
    older = log.bundle(0, 5, notes=log.notes[:3])  # as exported when the log had 7 leaves
    assert verify_bundle(older, trusted=[key], saved_checkpoint=log.notes[2]).last_size == 7
    error = _fails(BundleRollback, older, trusted=[key], saved_checkpoint=log.notes[3])
    assert "rollback" in str(error)


def test_it_requires_the_saved_checkpoint_among_the_bundles(
    bundle: bytes, log: Log, key: CheckpointKey
) -> None:
    saved = log.sign(9)  # a checkpoint the bundle leaves out
    _fails(BundleSavedCheckpointMissing, bundle, trusted=[key], saved_checkpoint=saved)


def test_it_requires_the_saved_checkpoint_to_open(
    bundle: bytes, log: Log, other_signer: Signer, key: CheckpointKey
) -> None:
    foreign = Log(other_signer[0], CheckpointKey(ORIGIN, other_signer[1].public_key))
    foreign.tree = log.tree
    error = _fails(BundleCheckpointInvalid, bundle, trusted=[key], saved_checkpoint=foreign.sign(7))
    assert "saved checkpoint" in str(error)


# --------------------------------------------------------------------------------------------
# Rule 1: the document's shape


def test_it_rejects_trailing_data(bundle: bytes, key: CheckpointKey) -> None:
    for tail in (b"x", b"{}", b"\n\x00", b" []"):
        error = _fails(BundleFormatError, bundle + tail, trusted=[key])
        assert "after" in str(error)


def _drop(member: str) -> Any:
    return lambda d: d.pop(member)


@pytest.mark.parametrize(
    "change",
    [
        _drop("format"),
        _drop("signing_keys"),
        _drop("range"),
        lambda d: d.update(extra=1),
        lambda d: d.update(format="ciphervault-audit-export/2"),
        lambda d: d.update(origin=""),
        lambda d: d.update(origin="two\nlines"),
        lambda d: d.update(exported_at="2025-03-01T12:00:00Z"),
        lambda d: d.update(exported_at="2025-02-30T12:00:00.000000Z"),
        lambda d: d.update(range={"from": None}),
        lambda d: d.update(range={"from": None, "to": 5}),
        lambda d: d.update(signing_keys="k"),
        lambda d: d.update(signing_keys=[1]),
        lambda d: d.update(checkpoints=[]),
        lambda d: d.update(checkpoints=[1]),
        lambda d: d.update(consistency={}),
        lambda d: d["consistency"][0].pop("proof"),
        lambda d: d["consistency"][0].update(extra=[]),
        lambda d: d["consistency"][0].update({"from": "3"}),
        lambda d: d["consistency"][0].update({"from": True}),
        lambda d: d["consistency"][0].update({"to": -1}),
        lambda d: d["consistency"][0].update({"to": 2**64}),
        lambda d: d["consistency"][0].update(proof="x"),
        lambda d: d["consistency"][0].update(proof=[_b64(b"\x00" * 31)]),
        lambda d: d["consistency"][0].update(proof=[_b64(b"\x00" * 33)]),
        lambda d: d["consistency"][0].update(proof=[_b64(b"\x00" * 32)] * 66),
        lambda d: d["leaves"][0].pop("columns"),
        lambda d: d["leaves"][0].update(extra=None),
        lambda d: d["leaves"][0].update(index=True),
        lambda d: d["leaves"][0].update(index="2"),
        lambda d: d["leaves"][0].update(leaf=""),
        lambda d: d["leaves"][0].update(leaf=d["leaves"][0]["leaf"].rstrip("=")),
        lambda d: d["leaves"][0].update(leaf="-" + d["leaves"][0]["leaf"][1:]),
        lambda d: d["leaves"][0]["columns"].pop("ip"),
        lambda d: d["leaves"][0]["columns"].update(extra=""),
        lambda d: d["leaves"][0]["columns"].update(ip=None),
        lambda d: d["leaves"][0].update(proof=[None]),
        lambda d: d["leaves"][0]["proof"].__setitem__(0, d["leaves"][0]["proof"][0][:-1]),
    ],
)
def test_it_rejects_a_malformed_document(bundle: bytes, key: CheckpointKey, change: Any) -> None:
    _fails(BundleFormatError, edit(bundle, change), trusted=[key])


def test_it_rejects_a_proof_hash_in_non_canonical_base64(bundle: bytes, key: CheckpointKey) -> None:
    def change(document: dict[str, Any]) -> None:
        proof = document["leaves"][0]["proof"]
        # 32 bytes leave two pad bits in the 43rd character; setting one is not canonical.
        last = proof[0][42]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        proof[0] = proof[0][:42] + alphabet[alphabet.index(last) | 1] + "="
        assert base64.b64decode(proof[0]) == base64.b64decode(document["leaves"][0]["proof"][0])

    error = _fails(BundleFormatError, edit(bundle, change), trusted=[key])
    assert "canonical base64" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b"\xef\xbb\xbf{}",
        b'{"format": NaN}',
        b'{"format": 1.0}',
        b'{"format": 1, "format": 2}',
        b"\xff",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' + b"1" * 5000 + b"}",
    ],
)
def test_it_rejects_what_is_not_a_strict_json_object(text: bytes, key: CheckpointKey) -> None:
    _fails(BundleFormatError, text, trusted=[key])


def test_it_rejects_a_duplicated_member_in_the_bundle(bundle: bytes, key: CheckpointKey) -> None:
    text = bundle.replace(b'"format":', b'"format":"x","format":', 1)
    error = _fails(BundleFormatError, text, trusted=[key])
    assert "twice" in str(error)


def test_it_checks_the_shape_before_trust(bundle: bytes) -> None:
    _fails(BundleFormatError, bundle + b"x", trusted=[])


def test_it_bounds_the_bundle_size(bundle: bytes, key: CheckpointKey) -> None:
    assert parse_bundle(bundle, max_bytes=len(bundle)).origin == ORIGIN
    _fails(BundleFormatError, bundle, trusted=[key], max_bytes=len(bundle) - 1)


def test_every_bundle_error_is_an_audit_proof_error_with_a_code() -> None:
    for cls in (
        BundleFormatError,
        BundleCheckpointInvalid,
        BundleConsistencyFailed,
        BundleLeafOrderError,
        BundleLeafInvalid,
        BundleInclusionFailed,
        BundleHistoryRewritten,
        BundleRollback,
        BundleSavedCheckpointMissing,
    ):
        assert issubclass(cls, BundleVerificationFailed)
        assert issubclass(cls, AuditProofError)
        assert cls.code.startswith("audit_bundle_")
    codes = [
        c.code
        for c in (BundleError, BundleUnanchored, BundleVerificationFailed, InvalidBundleParameters)
    ]
    assert len(set(codes)) == 4


# --------------------------------------------------------------------------------------------
# Leaves on their own


def test_it_parses_a_canonical_event_and_derives_its_columns() -> None:
    value = event(7)
    assert parse_leaf(canonical_json(value)) == value
    assert leaf_columns(value) == {
        "id": "00000000-0000-0000-0000-000000000008",
        "time": "2025-02-01T10:00:07.000007Z",
        "type": "object.read",
        "outcome": "success",
        "actor_kind": "user",
        "actor_id": "user-1",
        "auth": "session",
        "ip": "192.0.2.7",
        "user_agent": "cvault/0.1 é",
        "request_id": "r7",
        "resource_type": "object",
        "resource_id": "107",
    }
    assert tuple(leaf_columns(value)) == LEAF_COLUMNS


def _with(path: str, value: Any) -> dict[str, Any]:
    result = event(1)
    *parents, last = path.split(".")
    target = result
    for name in parents:
        target = target[name]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return result


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("v", 2),
        ("v", True),
        ("v", "1"),
        ("v", _DELETE),
        ("log", ""),
        ("log", None),
        ("id", "00000000-0000-0000-0000-00000000000A"),
        ("id", "000000000000000000000000000000aa"),
        ("time", "2025-02-01T10:00:07Z"),
        ("time", "2025-02-01T10:00:07.000007+00:00"),
        ("time", "2025-02-01 10:00:07.000007Z"),
        ("time", "2025-13-01T10:00:07.000007Z"),
        ("time", "2025-02-01T24:00:00.000000Z"),
        ("type", ""),
        ("type", 3),
        ("outcome", "denied"),
        ("actor.kind", "robot"),
        ("actor.id", 5),
        ("actor.auth", _DELETE),
        ("actor.extra", ""),
        ("origin.ip", None),
        ("origin.extra", ""),
        ("resource.id", 7),
        ("resource.extra", ""),
        ("actor", "user"),
        ("details", []),
        ("details", _DELETE),
        ("extra", 1),
        ("details.big", 2**53),
        ("details.naïve", 1),
    ],
)
def test_it_rejects_events_of_another_form(path: str, value: Any) -> None:
    bad = _with(path, value)
    leaf = json.dumps(bad, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(LeafFormatError):
        parse_leaf(leaf)


@pytest.mark.parametrize(
    "leaf",
    [
        b"",
        b"\xff",
        canonical_json(event(1)) + b" ",
        canonical_json(event(1)) + b"\n",
        b" " + canonical_json(event(1)),
        canonical_json(event(1)).replace(b'"ok":true', b'"ok":1e0'),
        canonical_json(event(1)).replace(b'"ok":true', b'"ok":NaN'),
        canonical_json(event(1)).replace(b'"n":1', b'"n":01'),
        canonical_json(event(1)).replace(b'"none":null', b'"none":"\\ud800"'),
        b"[" * 10_000 + b"]" * 10_000,
    ],
)
def test_it_rejects_leaf_bytes_that_are_not_canonical(leaf: bytes) -> None:
    with pytest.raises(LeafFormatError):
        parse_leaf(leaf)


# --------------------------------------------------------------------------------------------
# Building: what the server may not ask for


def _build(log: Log, **changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "origin": log.origin,
        "exported_at": EXPORTED_AT,
        "range_from": None,
        "range_to": None,
        "signing_keys": [log.key],
        "checkpoints": log.notes,
        "tree": log.tree,
        "leaves": [(i, log.leaves[i], log.columns[i]) for i in range(3, 6)],
    }
    arguments.update(changes)
    return build_bundle(**arguments)


def test_it_writes_datetimes_in_the_events_form(log: Log, key: CheckpointKey) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2025, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    bundle = _build(
        log, exported_at=moment, range_from=moment, range_to=datetime(2026, 1, 1, tzinfo=UTC)
    )
    document = json.loads(bundle)
    assert document["exported_at"] == "2025-03-01T12:00:00.000000Z"
    assert document["range"] == {
        "from": "2025-03-01T12:00:00.000000Z",
        "to": "2026-01-01T00:00:00.000000Z",
    }
    assert verify_bundle(bundle, trusted=[key]).leaves_checked == 3
    with pytest.raises(InvalidBundleParameters):
        _build(log, exported_at=datetime(2025, 3, 1))


@pytest.mark.parametrize(
    "changes",
    [
        {"checkpoints": []},
        {"origin": "ciphervault.example/audit/other"},
        {"origin": ""},
        {"exported_at": "yesterday"},
        {"tree": MerkleTree()},
        {"leaves": [(3, b"x", {})]},
        {"leaves": [(12, b"x", dict.fromkeys(LEAF_COLUMNS, ""))]},
        {"leaves": [(-1, b"x", dict.fromkeys(LEAF_COLUMNS, ""))]},
        {"leaves": [(3, b"", dict.fromkeys(LEAF_COLUMNS, ""))]},
        {"leaves": [(i, b"x", dict.fromkeys(LEAF_COLUMNS, "")) for i in (3, 5)]},
        {"leaves": [(i, b"x", dict.fromkeys(LEAF_COLUMNS, "")) for i in (4, 3)]},
        {"leaves": [(3, b"x", dict.fromkeys(LEAF_COLUMNS, 1))]},
    ],
)
def test_it_refuses_to_build_what_the_format_cannot_carry(log: Log, changes: Any) -> None:
    with pytest.raises(InvalidBundleParameters):
        _build(log, **changes)


def test_it_refuses_checkpoints_out_of_order(log: Log) -> None:
    with pytest.raises(InvalidBundleParameters):
        _build(log, checkpoints=[log.notes[2], log.notes[1]])
    with pytest.raises(InvalidBundleParameters):
        _build(log, checkpoints=[b"not a note\n"])


def test_it_still_exports_a_tampered_log_so_verification_can_show_it(
    log: Log, key: CheckpointKey
) -> None:
    leaves = [(i, log.leaves[i], log.columns[i]) for i in range(3, 6)]
    leaves[1] = (4, canonical_json(event(400)), leaf_columns(event(400)))
    _fails(BundleInclusionFailed, _build(log, leaves=leaves), trusted=[key])
