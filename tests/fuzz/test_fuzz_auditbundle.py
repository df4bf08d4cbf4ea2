"""Fuzzing the audit bundle verifier (``vault.crypto.auditbundle``, ``docs/audit-format.md``).

Inputs: wholly random bytes and random JSON, and real export bundles of a real log (canonical
events, a Merkle tree, checkpoints signed with a real P-256 key, written by ``build_bundle``, as
``tests/crypto/audit_helpers.py`` makes them) edited byte by byte and as JSON: members deleted,
added, duplicated or retyped, sizes and indices moved, lists reordered, base64 hashes flipped
bit by bit, checkpoint notes edited line by line, leaves' events edited (with their columns kept
in step, so the edit reaches the inclusion proof). What every test proves, for every input:

- ``verify_bundle`` either returns or raises exactly one of its documented errors
  (``BundleFormatError``, ``BundleUnanchored``, ``BundleCheckpointInvalid``,
  ``BundleConsistencyFailed``, ``BundleLeafOrderError``, ``BundleLeafInvalid``,
  ``BundleInclusionFailed``, ``BundleRollback``, ``BundleSavedCheckpointMissing``,
  ``BundleHistoryRewritten``); never ``KeyError``, ``IndexError``, ``UnicodeDecodeError``,
  ``json.JSONDecodeError``, ``binascii.Error``, ``RecursionError`` or an undocumented
  ``ValueError``;
- a bundle that verifies proves only the truth: every checkpoint it holds is one the genuine
  log's key signed over the genuine tree, every leaf is the genuine log's leaf at its index with
  the genuine columns, the last size and root are the genuine tree's; and an unedited bundle
  verifies to the genuine report. (Members the format leaves unauthenticated, such as
  ``exported_at``, ``range`` and ``signing_keys``, JSON whitespace and member order, and which
  contiguous range of leaves is exported, may differ: docs/audit-format.md says so.)
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from tests.crypto.audit_helpers import ORIGIN, Log, new_signer, standard_log
from tests.fuzz.mutations import (
    byte_mutation,
    dumps,
    json_edit,
    json_mutated,
    only_documented,
    sized,
)
from vault.crypto.auditbundle import (
    BundleCheckpointInvalid,
    BundleConsistencyFailed,
    BundleFormatError,
    BundleHistoryRewritten,
    BundleInclusionFailed,
    BundleLeafInvalid,
    BundleLeafOrderError,
    BundleReport,
    BundleRollback,
    BundleSavedCheckpointMissing,
    BundleUnanchored,
    LeafFormatError,
    leaf_columns,
    parse_bundle,
    parse_leaf,
    verify_bundle,
)
from vault.crypto.checkpoint import CheckpointKey, open_checkpoint

pytestmark: list[pytest.MarkDecorator] = []

#: verify_bundle's documented errors (its docstring and docs/audit-format.md, "Errors").
VERIFY_ERRORS: tuple[type[BaseException], ...] = (
    BundleFormatError,
    BundleUnanchored,
    BundleCheckpointInvalid,
    BundleConsistencyFailed,
    BundleLeafOrderError,
    BundleLeafInvalid,
    BundleInclusionFailed,
    BundleRollback,
    BundleSavedCheckpointMissing,
    BundleHistoryRewritten,
)
_MEMBERS = (
    "format",
    "origin",
    "exported_at",
    "range",
    "signing_keys",
    "checkpoints",
    "consistency",
    "leaves",
)


@dataclass(frozen=True)
class World:
    """A real log, its key, genuine bundles of it, and a checkpoint the user saved."""

    log: Log
    key: CheckpointKey
    bundles: tuple[bytes, ...]
    reports: tuple[BundleReport, ...]
    saved: bytes


@pytest.fixture(scope="module")
def world() -> World:
    private, key = new_signer()
    log = standard_log(private, key)  # checkpoints at sizes 0, 3, 7 and 12
    bundles = (log.bundle(2, 10), log.bundle(0, 12), log.bundle(11, 12))
    reports = tuple(verify_bundle(b, trusted=[key]) for b in bundles)
    return World(log, key, bundles, reports, log.notes[2])


def _assert_only_the_truth(report: object, data: bytes, world: World) -> None:
    """What a verified bundle claims is what the genuine log holds."""
    assert isinstance(report, BundleReport)
    log = world.log
    assert report.origin == ORIGIN
    assert report.last_root == log.tree.root(report.last_size)
    bundle = parse_bundle(data)
    for note_bytes in bundle.checkpoints:
        checkpoint = open_checkpoint(note_bytes, keys=[world.key], origin=ORIGIN)
        assert checkpoint.root_hash == log.tree.root(checkpoint.size)
    assert report.leaves_checked == len(bundle.leaves)
    for leaf in bundle.leaves:
        assert leaf.leaf == log.leaves[leaf.index]
        assert leaf.columns == log.columns[leaf.index]


def _verify(data: bytes, world: World, *, saved: bool) -> tuple[object, BaseException | None]:
    return only_documented(
        lambda: verify_bundle(
            data, trusted=[world.key], saved_checkpoint=world.saved if saved else None
        ),
        VERIFY_ERRORS,
    )


def _check(data: bytes, world: World, which: int, *, saved: bool) -> None:
    report, error = _verify(data, world, saved=saved)
    if error is None:
        _assert_only_the_truth(report, data, world)
        if data == world.bundles[which] and not saved:
            assert report == world.reports[which]
        elif data != world.bundles[which]:
            event("verified: an edit of what the format does not authenticate")


# --------------------------------------------------------------------------------------------
# Wholly random input

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


def _random_bundles() -> st.SearchStrategy[bytes]:
    shaped = st.fixed_dictionaries(dict.fromkeys(_MEMBERS, _JSON)).map(
        lambda d: json.dumps(d).encode()
    )
    return st.one_of(
        st.binary(max_size=400),
        _JSON.map(lambda v: json.dumps(v).encode()),
        shaped,
        st.text(alphabet='{}[]":,0123456789 \\nul', max_size=200).map(str.encode),
    )


@sized(ci=120, torture=1000)
@given(data=_random_bundles())
def test_it_refuses_random_input_with_a_documented_error(world: World, data: bytes) -> None:
    report, error = _verify(data, world, saved=False)
    assert report is None
    assert error is not None
    # With no trusted key nothing is verified: unanchored, or malformed, nothing else.
    _, unanchored = only_documented(
        lambda: verify_bundle(data, trusted=[]), (BundleFormatError, BundleUnanchored)
    )
    assert unanchored is not None


# --------------------------------------------------------------------------------------------
# Real bundles, edited


def _hot(text: bytes) -> list[int]:
    """Offsets of JSON structure (quotes, brackets, colons, commas, digits runs)."""
    return [m.start() for m in re.finditer(rb'[{}\[\]":,]|[0-9]+', text)][:400]


@sized(ci=150, torture=1000)
@given(data=st.data(), saved=st.booleans())
def test_a_bundle_edited_byte_by_byte_verifies_only_to_the_truth(
    world: World, data: st.DataObject, saved: bool
) -> None:
    which = data.draw(st.integers(0, len(world.bundles) - 1), label="which")
    bundle = world.bundles[which]
    donors = [b for b in world.bundles if b is not bundle]
    mutated = bundle
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        mutated, what = data.draw(byte_mutation(mutated, hot=_hot(bundle), donors=donors))
        note(what)
    _check(mutated, world, which, saved=saved)


@sized(ci=250, torture=1500)
@given(data=st.data(), saved=st.booleans())
def test_a_bundle_edited_as_json_verifies_only_to_the_truth(
    world: World, data: st.DataObject, saved: bool
) -> None:
    which = data.draw(st.integers(0, len(world.bundles) - 1), label="which")
    document = json.loads(world.bundles[which])
    mutated, steps = data.draw(
        json_mutated(document, styles=("compact", "canonical", "spaced"), max_stack=3)
    )
    note(f"{steps}: {mutated[:2000]!r}")
    _check(mutated, world, which, saved=saved)


def _leaf_positions(document: dict[str, Any]) -> Sequence[int]:
    return range(len(document["leaves"]))


@sized(ci=120, torture=800)
@given(data=st.data())
def test_an_edited_event_with_its_columns_in_step_fails_its_inclusion_proof(
    world: World, data: st.DataObject
) -> None:
    """Edit one leaf's event, re-serialize it canonically and rewrite its columns from it, so
    that only the Merkle inclusion proof stands between the edit and a verified bundle."""
    which = data.draw(st.integers(0, 1), label="which")
    document = json.loads(world.bundles[which])
    position = data.draw(st.sampled_from(list(_leaf_positions(document))), label="leaf")
    entry = document["leaves"][position]
    event_value = json.loads(base64.b64decode(entry["leaf"]))
    edited = dumps(data.draw(json_edit(event_value)), style="canonical")
    entry["leaf"] = base64.b64encode(edited).decode()
    parsed, leaf_error = only_documented(lambda: parse_leaf(edited), (LeafFormatError,))
    if leaf_error is None:
        assert isinstance(parsed, dict)
        entry["columns"] = leaf_columns(parsed)
        event("edited event is a canonical event")
    mutated = json.dumps(document).encode()
    report, error = _verify(mutated, world, saved=False)
    if error is None:  # only if the edit changed nothing
        assert edited == world.log.leaves[entry["index"]]
        _assert_only_the_truth(report, mutated, world)
    elif leaf_error is None and edited != world.log.leaves[entry["index"]]:
        assert isinstance(parsed, dict)
        expected = BundleInclusionFailed if parsed["log"] == ORIGIN else BundleLeafInvalid
        assert type(error) is expected
