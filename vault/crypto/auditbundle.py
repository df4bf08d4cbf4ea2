"""Audit export bundles: building them on the server, verifying them offline. Django-free.

A bundle (``docs/audit-format.md``, "Export bundles") is one JSON document holding a range of a
log's events (the leaves, each with its database columns and its inclusion proof), every
checkpoint the log has issued, and the consistency proofs that chain those checkpoints. The
server writes it with :func:`build_bundle`; ``cvault audit verify`` checks it with
:func:`verify_bundle`, using nothing but the standard library, ``cryptography`` and
``vault.crypto``.

Verification follows the six rules of the specification, strictly: the exact document shape
(unknown or missing members, wrong types, non-canonical base64 and trailing data all fail),
checkpoints signed by a *trusted* key (never one the bundle names), strictly increasing sizes
chained by consistency proofs, contiguous leaves that are canonical events of this log agreeing
with their columns and proving into the last checkpoint, and, when the user saved a checkpoint
earlier, no rollback and no rewritten history relative to it. With no trusted key nothing is
verified and the outcome is :class:`BundleUnanchored`, distinct from a failure.

What a valid bundle does *not* show: that no event was left out before its first leaf or after
its last (the range's ends are the exporter's word), or that the log has no checkpoint newer
than the bundle's last one unless the user's saved checkpoint says so.

Docs: ``docs/audit-format.md`` (format and rules), ``docs/cli.md`` (the commands).
"""

from __future__ import annotations

import binascii
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from vault.crypto.canonical import (
    NotCanonicalizable,
    StrictJsonError,
    canonical_json,
    strict_decode,
)
from vault.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointKey,
    SignedNote,
    open_checkpoint,
)
from vault.crypto.merkle import (
    HASH_SIZE,
    MAX_PROOF_HASHES,
    MAX_TREE_SIZE,
    AuditProofError,
    InvalidProofParameters,
    MerkleTree,
    ProofVerificationFailed,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "BUNDLE_FORMAT",
    "LEAF_COLUMNS",
    "MAX_BUNDLE_BYTES",
    "AuditBundle",
    "BundleCheckpointInvalid",
    "BundleConsistencyFailed",
    "BundleError",
    "BundleFormatError",
    "BundleHistoryRewritten",
    "BundleInclusionFailed",
    "BundleLeaf",
    "BundleLeafInvalid",
    "BundleLeafOrderError",
    "BundleReport",
    "BundleRollback",
    "BundleSavedCheckpointMissing",
    "BundleUnanchored",
    "BundleVerificationFailed",
    "ConsistencyEntry",
    "InvalidBundleParameters",
    "LeafFormatError",
    "build_bundle",
    "format_time",
    "leaf_columns",
    "parse_bundle",
    "parse_leaf",
    "verify_bundle",
]

#: The value of a bundle's ``format`` member.
BUNDLE_FORMAT = "ciphervault-audit-export/1"
#: Largest bundle :func:`parse_bundle` reads (1 GiB, about 600,000 events). Verification holds the
#: decoded bundle in memory, about five times the file's size, and takes about 80 µs per event.
MAX_BUNDLE_BYTES = 1 << 30
#: The database columns exported beside each leaf, in the specification's order.
LEAF_COLUMNS: tuple[str, ...] = (
    "id",
    "time",
    "type",
    "outcome",
    "actor_kind",
    "actor_id",
    "auth",
    "ip",
    "user_agent",
    "request_id",
    "resource_type",
    "resource_id",
)
#: The values an event's ``outcome`` and ``actor.kind`` may take.
OUTCOMES = frozenset({"success", "failure"})
ACTOR_KINDS = frozenset({"user", "token", "system", "anonymous"})

_BUNDLE_MEMBERS = frozenset(
    {
        "format",
        "origin",
        "exported_at",
        "range",
        "signing_keys",
        "checkpoints",
        "consistency",
        "leaves",
    }
)
_RANGE_MEMBERS = frozenset({"from", "to"})
_CONSISTENCY_MEMBERS = frozenset({"from", "to", "proof"})
_LEAF_ENTRY_MEMBERS = frozenset({"index", "leaf", "columns", "proof"})
_COLUMN_SET = frozenset(LEAF_COLUMNS)
_EVENT_MEMBERS = frozenset(
    {"v", "log", "id", "time", "type", "outcome", "actor", "origin", "resource", "details"}
)
_ACTOR_MEMBERS = frozenset({"kind", "id", "auth"})
_ORIGIN_MEMBERS = frozenset({"ip", "user_agent", "request_id"})
_RESOURCE_MEMBERS = frozenset({"type", "id"})
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_SPACE = " \t\n\r"
_LEADING_SPACE = re.compile(r"[ \t\n\r]*")
_HASH_B64_LEN = 44  # base64 of 32 bytes


# --------------------------------------------------------------------------------------------
# Errors


class BundleError(AuditProofError):
    """Base of every bundle error: whatever the subclass, the bundle is **not** verified."""

    code = "audit_bundle_error"


class InvalidBundleParameters(BundleError, ValueError):
    """:func:`build_bundle` was given something a bundle cannot carry: no checkpoint, sizes out of
    order, leaves out of order or beyond the last checkpoint, a tree too small, columns of the
    wrong shape, a time in the wrong form."""

    code = "audit_bundle_invalid_parameters"


class BundleUnanchored(BundleError):
    """No trusted key was given, so nothing in the bundle could be verified (rule 2).

    Not a verification failure: the bundle may be perfectly good, but nothing ties it to the log
    the user means. The exit status of ``cvault audit verify`` is 2, not 1.

    Attributes:
        origin: the origin the bundle claims.
        signing_keys: the verifier keys the bundle names (unverified, to compare out of band).
    """

    code = "audit_bundle_unanchored"

    def __init__(self, message: str, *, origin: str, signing_keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.origin = origin
        self.signing_keys = signing_keys


class BundleVerificationFailed(BundleError):
    """Base of every verification failure: the bundle is malformed, or does not prove what it
    claims under the trusted keys. Each subclass names one condition."""

    code = "audit_bundle_verification_failed"


class BundleFormatError(BundleVerificationFailed):
    """Rule 1: not one JSON object of exactly the documented members and types (an unknown,
    missing or duplicated member, a wrong type, non-canonical base64, a proof hash that is not 32
    bytes, data after the document, too large)."""

    code = "audit_bundle_malformed"


class BundleCheckpointInvalid(BundleVerificationFailed):
    """Rule 3: a checkpoint (or the saved one) does not open under the trusted keys with the
    bundle's origin, or the checkpoints' sizes do not strictly increase."""

    code = "audit_bundle_checkpoint_invalid"


class BundleConsistencyFailed(BundleVerificationFailed):
    """Rule 4: a consistency proof between successive checkpoints is missing, extra, for other
    sizes, or does not verify."""

    code = "audit_bundle_consistency_failed"


class BundleLeafOrderError(BundleVerificationFailed):
    """Rule 5: leaf indices are not contiguous and ascending (a gap, a duplicate, a reordering),
    or an index is not below the last checkpoint's size."""

    code = "audit_bundle_leaf_order"


class BundleLeafInvalid(BundleVerificationFailed):
    """Rule 5: a leaf is not a canonical event of the documented form, names another log, or
    disagrees with its columns."""

    code = "audit_bundle_leaf_invalid"


class BundleInclusionFailed(BundleVerificationFailed):
    """Rule 5: a leaf's inclusion proof does not verify against the last checkpoint."""

    code = "audit_bundle_inclusion_failed"


class BundleHistoryRewritten(BundleVerificationFailed):
    """Rule 6: the bundle's checkpoint at the saved checkpoint's size has another root."""

    code = "audit_bundle_history_rewritten"


class BundleRollback(BundleVerificationFailed):
    """Rule 6: the bundle's last checkpoint is smaller than the saved one."""

    code = "audit_bundle_rollback"


class BundleSavedCheckpointMissing(BundleVerificationFailed):
    """Rule 6: no checkpoint of the bundle has the saved checkpoint's size, though the bundle
    claims every checkpoint the log issued."""

    code = "audit_bundle_saved_checkpoint_missing"


class LeafFormatError(AuditProofError, ValueError):
    """A leaf is not an event of the documented form in canonical JSON (raised by
    :func:`parse_leaf`; :func:`verify_bundle` reports it as :class:`BundleLeafInvalid`)."""

    code = "audit_leaf_malformed"


# --------------------------------------------------------------------------------------------
# Small strict codecs


# Internal: JSON the strict decoder refuses (duplicate member, float, NaN).
_Malformed = StrictJsonError


def _strict_json(text: str) -> tuple[Any, str]:
    """One JSON value at the start of ``text`` (after JSON whitespace), and what follows it.

    Raises:
        _Malformed: not JSON, a duplicated member, a float, NaN or infinity, nested too deeply.
    """
    leading = _LEADING_SPACE.match(text)
    value, end = strict_decode(text, leading.end() if leading else 0)
    return value, text[end:]


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Standard base64 with padding, canonical only; None when it is not."""
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError):  # ValueError: non-ASCII text
        return None
    if _b64(data) != text:  # non-zero pad bits, missing padding
        return None
    return data


def _is_size(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TREE_SIZE


def _time_ok(value: object) -> bool:
    if type(value) is not str or _TIME.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value[:-1])
    except ValueError:
        return False
    return True


def format_time(moment: datetime) -> str:
    """An aware datetime in the events' form, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC).

    Raises:
        InvalidBundleParameters: ``moment`` is naive.
    """
    if moment.tzinfo is not UTC:  # the common case (Django's now()) skips the conversion
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidBundleParameters("times must be timezone-aware")
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _line_ok(text: object) -> bool:
    """One non-empty line with no control character, valid Unicode, at most 1,024 UTF-8 bytes."""
    if type(text) is not str or not text or _CONTROL.search(text) is not None:
        return False
    try:
        return len(text.encode("utf-8")) <= 1024
    except UnicodeEncodeError:
        return False


# --------------------------------------------------------------------------------------------
# Leaves


def _object(
    value: object, members: frozenset[str], what: str, error: type[Exception]
) -> dict[str, Any]:
    """``value`` if it is a JSON object with exactly ``members``; else ``error`` naming the
    missing and (a few, escaped) unknown members."""
    if type(value) is not dict:
        raise error(f"{what} is not a JSON object")
    if value.keys() != members:
        parts = []
        missing = sorted(members - value.keys())
        unknown = sorted(value.keys() - members)
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(repr(u)[:40] for u in unknown[:5])}")
        raise error(f"{what} has the wrong members ({'; '.join(parts)})")
    return value


def _members(value: object, members: frozenset[str], what: str) -> dict[str, Any]:
    return _object(value, members, what, LeafFormatError)


def _strings(value: dict[str, Any], what: str) -> None:
    for name, item in value.items():
        if type(item) is not str:
            raise LeafFormatError(f"{what}.{name} is not a string")


def parse_leaf(leaf: bytes) -> dict[str, Any]:
    """Parse one leaf strictly as an audit event (``docs/audit-format.md``, "Events").

    Args:
        leaf: the leaf's bytes.

    Returns:
        The event, as parsed JSON.

    Raises:
        LeafFormatError: not UTF-8; not JSON; a duplicated member, a float, NaN; not exactly the
            documented members (top level, ``actor``, ``origin``, ``resource``); ``v`` not the
            integer 1; a member of the wrong type; ``id`` not a lowercase hyphenated UUID;
            ``time`` not ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; an unknown ``outcome`` or
            ``actor.kind``; ``details`` holding what canonical JSON does not carry; or bytes that
            are not exactly the canonical serialization of the parsed value.

    Security: the re-serialization check means one event has exactly one leaf, so nobody can
    alter a leaf's bytes (whitespace, escapes, member order) without changing what it says.
    """
    if type(leaf) is not bytes:
        raise LeafFormatError("a leaf is bytes")
    try:
        text = leaf.decode("utf-8")
    except UnicodeDecodeError:
        raise LeafFormatError("the leaf is not UTF-8") from None
    try:
        event, rest = _strict_json(text)
    except _Malformed as exc:
        raise LeafFormatError(f"the leaf is not strict JSON: {exc}") from None
    if rest:
        raise LeafFormatError("the leaf is not canonical JSON (data after the value)")
    _members(event, _EVENT_MEMBERS, "the event")
    if type(event["v"]) is not int or event["v"] != 1:
        raise LeafFormatError("the event's v is not 1")
    for name in ("log", "id", "time", "type", "outcome"):
        if type(event[name]) is not str:
            raise LeafFormatError(f"the event's {name} is not a string")
    if not event["log"]:
        raise LeafFormatError("the event's log is empty")
    if _UUID.fullmatch(event["id"]) is None:
        raise LeafFormatError("the event's id is not a lowercase hyphenated UUID")
    if not _time_ok(event["time"]):
        raise LeafFormatError("the event's time is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if not event["type"]:
        raise LeafFormatError("the event's type is empty")
    if event["outcome"] not in OUTCOMES:
        raise LeafFormatError("the event's outcome is neither success nor failure")
    actor = _members(event["actor"], _ACTOR_MEMBERS, "actor")
    _strings(actor, "actor")
    if actor["kind"] not in ACTOR_KINDS:
        raise LeafFormatError("actor.kind is not user, token, system or anonymous")
    _strings(_members(event["origin"], _ORIGIN_MEMBERS, "origin"), "origin")
    _strings(_members(event["resource"], _RESOURCE_MEMBERS, "resource"), "resource")
    if type(event["details"]) is not dict:
        raise LeafFormatError("details is not a JSON object")
    try:
        canonical = canonical_json(event)
    except NotCanonicalizable as exc:
        raise LeafFormatError(f"the event has no canonical form: {exc}") from None
    if canonical != leaf:
        raise LeafFormatError("the leaf is not the event's canonical JSON")
    return event


def leaf_columns(event: Mapping[str, Any]) -> dict[str, str]:
    """The database columns an event's leaf determines (``LEAF_COLUMNS``).

    Args:
        event: an event as :func:`parse_leaf` returns it.

    Returns:
        ``id``, ``time``, ``type``, ``outcome``, ``actor_kind`` (``actor.kind``), ``actor_id``,
        ``auth`` (``actor.auth``), ``ip``, ``user_agent``, ``request_id`` (from ``origin``),
        ``resource_type`` and ``resource_id`` (from ``resource``).
    """
    actor, origin, resource = event["actor"], event["origin"], event["resource"]
    return {
        "id": event["id"],
        "time": event["time"],
        "type": event["type"],
        "outcome": event["outcome"],
        "actor_kind": actor["kind"],
        "actor_id": actor["id"],
        "auth": actor["auth"],
        "ip": origin["ip"],
        "user_agent": origin["user_agent"],
        "request_id": origin["request_id"],
        "resource_type": resource["type"],
        "resource_id": resource["id"],
    }


# --------------------------------------------------------------------------------------------
# The parsed document


@dataclass(frozen=True, slots=True)
class ConsistencyEntry:
    """One member of a bundle's ``consistency`` list: the proof from ``from_size`` to
    ``to_size``."""

    from_size: int
    to_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BundleLeaf:
    """One member of a bundle's ``leaves`` list."""

    index: int
    leaf: bytes
    columns: dict[str, str]
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class AuditBundle:
    """A bundle whose *shape* was checked (rule 1) by :func:`parse_bundle`; nothing in it is
    verified yet, and nothing in it may be trusted before :func:`verify_bundle` says so.

    Attributes:
        origin: the log the bundle claims to be from.
        exported_at: when the server says it wrote the bundle (events' time form).
        range_from: the start of the exported time range, or None.
        range_to: its end, or None.
        signing_keys: verifier keys the bundle names (informative only, never trusted).
        checkpoints: the signed notes, oldest first.
        consistency: the consistency proofs, as given.
        leaves: the leaves, as given.
    """

    origin: str
    exported_at: str
    range_from: str | None
    range_to: str | None
    signing_keys: tuple[str, ...]
    checkpoints: tuple[bytes, ...]
    consistency: tuple[ConsistencyEntry, ...]
    leaves: tuple[BundleLeaf, ...]


def _shape(value: object, members: frozenset[str], what: str) -> dict[str, Any]:
    return _object(value, members, what, BundleFormatError)


def _list(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        raise BundleFormatError(f"{what} is not a list")
    return value


def _proof(value: object, what: str) -> tuple[bytes, ...]:
    items = _list(value, what)
    if len(items) > MAX_PROOF_HASHES:
        raise BundleFormatError(f"{what} has more than {MAX_PROOF_HASHES} hashes")
    hashes = []
    for item in items:
        decoded = _b64decode(item) if type(item) is str and len(item) == _HASH_B64_LEN else None
        if decoded is None or len(decoded) != HASH_SIZE:
            raise BundleFormatError(f"{what} holds a hash that is not canonical base64 of 32 bytes")
        hashes.append(decoded)
    return tuple(hashes)


def parse_bundle(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> AuditBundle:
    """Check a bundle's shape (rule 1) and decode it, verifying nothing.

    Args:
        data: the bundle file's bytes.
        max_bytes: the largest bundle accepted.

    Returns:
        The decoded bundle, for :func:`verify_bundle`.

    Raises:
        BundleFormatError: larger than ``max_bytes``; not UTF-8; not one strict JSON object (a
            duplicated member, a float, NaN) followed by nothing but JSON whitespace; not exactly
            the documented members at any level; a member of the wrong type; a wrong ``format``;
            no checkpoint; an origin that is not one printable line; ``exported_at`` not in the
            events' time form; a size or index that is not an integer in ``[0, 2**64 - 1]``; a
            leaf or hash that is not canonical base64; a proof hash that is not 32 bytes or a
            proof longer than 65 hashes; columns that are not exactly the documented strings.
    """
    if type(data) is not bytes:
        raise BundleFormatError("a bundle is bytes")
    if len(data) > max_bytes:
        raise BundleFormatError(f"the bundle is larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleFormatError("the bundle is not UTF-8") from None
    try:
        document, rest = _strict_json(text)
    except _Malformed as exc:
        raise BundleFormatError(f"the bundle is not strict JSON: {exc}") from None
    if rest.strip(_JSON_SPACE):
        raise BundleFormatError("data after the bundle's JSON document")
    del text, rest  # memory: the parsed document is several times the text's size already
    root = _shape(document, _BUNDLE_MEMBERS, "the bundle")
    if root["format"] != BUNDLE_FORMAT:
        raise BundleFormatError(f"the bundle's format is not {BUNDLE_FORMAT}")
    origin = root["origin"]
    if not _line_ok(origin):
        raise BundleFormatError("the bundle's origin is not one printable line")
    if not _time_ok(root["exported_at"]):
        raise BundleFormatError("exported_at is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    span = _shape(root["range"], _RANGE_MEMBERS, "range")
    for end in ("from", "to"):
        if span[end] is not None and type(span[end]) is not str:
            raise BundleFormatError(f"range.{end} is neither a string nor null")
    signing_keys = _list(root["signing_keys"], "signing_keys")
    if not all(type(key) is str for key in signing_keys):
        raise BundleFormatError("signing_keys holds something other than strings")
    notes = _list(root["checkpoints"], "checkpoints")
    if not notes:
        raise BundleFormatError("the bundle has no checkpoint")
    checkpoints = []
    for note in notes:
        if type(note) is not str:
            raise BundleFormatError("checkpoints holds something other than strings")
        try:
            checkpoints.append(note.encode("utf-8"))
        except UnicodeEncodeError:
            raise BundleFormatError("a checkpoint is not valid Unicode") from None
    consistency = []
    for position, raw in enumerate(_list(root["consistency"], "consistency")):
        what = f"consistency[{position}]"
        entry = _shape(raw, _CONSISTENCY_MEMBERS, what)
        if not (_is_size(entry["from"]) and _is_size(entry["to"])):
            raise BundleFormatError(f"{what}: from and to must be integers in [0, 2**64 - 1]")
        consistency.append(
            ConsistencyEntry(entry["from"], entry["to"], _proof(entry["proof"], f"{what}.proof"))
        )
    leaves = []
    raw_leaves = _list(root["leaves"], "leaves")
    for position, raw in enumerate(raw_leaves):
        raw_leaves[position] = None  # memory: free each parsed entry once decoded
        what = f"leaves[{position}]"
        entry = _shape(raw, _LEAF_ENTRY_MEMBERS, what)
        if not _is_size(entry["index"]):
            raise BundleFormatError(f"{what}: index must be an integer in [0, 2**64 - 1]")
        leaf = _b64decode(entry["leaf"]) if type(entry["leaf"]) is str else None
        if not leaf:
            raise BundleFormatError(f"{what}: leaf is not canonical base64 of a non-empty leaf")
        columns = _shape(entry["columns"], _COLUMN_SET, f"{what}.columns")
        if not all(type(value) is str for value in columns.values()):
            raise BundleFormatError(f"{what}.columns holds something other than strings")
        leaves.append(BundleLeaf(entry["index"], leaf, columns, _proof(entry["proof"], what)))
    return AuditBundle(
        origin=origin,
        exported_at=root["exported_at"],
        range_from=span["from"],
        range_to=span["to"],
        signing_keys=tuple(signing_keys),
        checkpoints=tuple(checkpoints),
        consistency=tuple(consistency),
        leaves=tuple(leaves),
    )


# --------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class BundleReport:
    """What a verified bundle proved.

    Attributes:
        origin: the log (every checkpoint opened with this origin under a trusted key).
        checkpoint_count: how many checkpoints verified and chained.
        last_size: the size of the last checkpoint, which every leaf proves into.
        last_root: the root of the last checkpoint.
        leaves_checked: how many leaves verified.
        first_index: the first leaf's index (None without leaves).
        last_index: the last leaf's index (None without leaves).
        anchored_to_saved: whether the bundle was checked against a saved checkpoint (no
            rollback, no rewritten history relative to it).
        saved_size: the saved checkpoint's size, or None.
        exported_at: when the server says it wrote the bundle (not verified).
    """

    origin: str
    checkpoint_count: int
    last_size: int
    last_root: bytes
    leaves_checked: int
    first_index: int | None
    last_index: int | None
    anchored_to_saved: bool
    saved_size: int | None
    exported_at: str


def verify_bundle(
    data: bytes | AuditBundle,
    *,
    trusted: Sequence[CheckpointKey],
    saved_checkpoint: bytes | None = None,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> BundleReport:
    """Verify an audit export bundle offline (``docs/audit-format.md``, rules 1 to 6).

    Args:
        data: the bundle's bytes, or a bundle :func:`parse_bundle` already decoded.
        trusted: the checkpoint keys the user trusts (trust store, ``--trust``); never the keys
            the bundle names.
        saved_checkpoint: a signed note the user saved earlier (``cvault trust save``); it must
            open under ``trusted`` with the bundle's origin.
        max_bytes: the largest bundle accepted (when ``data`` is bytes).

    Returns:
        What the bundle proved.

    Raises:
        BundleFormatError: rule 1 (see :func:`parse_bundle`).
        BundleUnanchored: ``trusted`` is empty: nothing was verified (not a failure, but not a
            success either).
        BundleCheckpointInvalid: a checkpoint (or the saved one) does not open under ``trusted``
            with the bundle's origin, or sizes do not strictly increase.
        BundleConsistencyFailed: a consistency proof is missing, extra, for other sizes, or
            does not verify.
        BundleRollback: the last checkpoint is smaller than the saved one.
        BundleSavedCheckpointMissing: no checkpoint has the saved checkpoint's size.
        BundleHistoryRewritten: the checkpoint of the saved size has another root.
        BundleLeafOrderError: leaf indices not contiguous and ascending, or not below the last
            checkpoint's size.
        BundleLeafInvalid: a leaf is not a canonical event, names another log, or disagrees with
            its columns.
        BundleInclusionFailed: a leaf's inclusion proof does not verify.

    Security: trust comes only from ``trusted``; each rule is checked for every element, with
    nothing skipped on the first success; every cost is linear in the bundle's size.
    """
    # PCI-DSS 10.3.4: change detection on exported audit logs, verifiable away from the server.
    bundle = data if isinstance(data, AuditBundle) else parse_bundle(data, max_bytes=max_bytes)
    keys = tuple(trusted)
    if not keys:
        raise BundleUnanchored(
            "no trusted key for this log: nothing in the bundle was verified",
            origin=bundle.origin,
            signing_keys=bundle.signing_keys,
        )
    checkpoints = _open_checkpoints(bundle, keys)
    _check_consistency(bundle, checkpoints)
    saved = _check_saved(bundle, keys, checkpoints, saved_checkpoint)
    last = checkpoints[-1]
    _check_leaves(bundle, last)
    leaves = bundle.leaves
    return BundleReport(
        origin=bundle.origin,
        checkpoint_count=len(checkpoints),
        last_size=last.size,
        last_root=last.root_hash,
        leaves_checked=len(leaves),
        first_index=leaves[0].index if leaves else None,
        last_index=leaves[-1].index if leaves else None,
        anchored_to_saved=saved is not None,
        saved_size=saved.size if saved is not None else None,
        exported_at=bundle.exported_at,
    )


def _open_checkpoints(bundle: AuditBundle, keys: tuple[CheckpointKey, ...]) -> list[Checkpoint]:
    """Rule 3: every checkpoint opens under a trusted key, with the bundle's origin, and sizes
    strictly increase."""
    checkpoints: list[Checkpoint] = []
    count = len(bundle.checkpoints)
    for position, note in enumerate(bundle.checkpoints, 1):
        try:
            checkpoint = open_checkpoint(note, keys=keys, origin=bundle.origin)
        except CheckpointError as exc:
            raise BundleCheckpointInvalid(
                f"checkpoint {position} of {count} does not verify: {exc} ({exc.code})"
            ) from exc
        if checkpoints and checkpoint.size <= checkpoints[-1].size:
            raise BundleCheckpointInvalid(
                f"checkpoint {position} of {count} (size {checkpoint.size}) is not larger than "
                f"the one before it (size {checkpoints[-1].size})"
            )
        checkpoints.append(checkpoint)
    return checkpoints


def _check_consistency(bundle: AuditBundle, checkpoints: list[Checkpoint]) -> None:
    """Rule 4: exactly one proof per pair of successive checkpoints of sizes ``0 < m < n``, in
    order, and each verifies."""
    pairs = [(old, new) for old, new in pairwise(checkpoints) if old.size]
    entries = bundle.consistency
    for position, (old, new) in enumerate(pairs):
        if position >= len(entries):
            raise BundleConsistencyFailed(
                f"the consistency proof from size {old.size} to {new.size} is missing"
            )
        entry = entries[position]
        if (entry.from_size, entry.to_size) != (old.size, new.size):
            raise BundleConsistencyFailed(
                f"consistency[{position}] is from {entry.from_size} to {entry.to_size}; "
                f"expected from {old.size} to {new.size}"
            )
        try:
            verify_consistency(
                old_size=old.size,
                new_size=new.size,
                old_root=old.root_hash,
                new_root=new.root_hash,
                proof=entry.proof,
            )
        except ProofVerificationFailed as exc:
            raise BundleConsistencyFailed(
                f"the checkpoint of size {new.size} does not extend the one of size {old.size}: "
                f"{exc}"
            ) from exc
    if len(entries) > len(pairs):
        raise BundleConsistencyFailed(
            f"{len(entries) - len(pairs)} consistency proof(s) more than the checkpoints call for"
        )


def _check_saved(
    bundle: AuditBundle,
    keys: tuple[CheckpointKey, ...],
    checkpoints: list[Checkpoint],
    saved_note: bytes | None,
) -> Checkpoint | None:
    """Rule 6: no rollback below, and no other root at, the saved checkpoint's size."""
    if saved_note is None:
        return None
    try:
        saved = open_checkpoint(saved_note, keys=keys, origin=bundle.origin)
    except CheckpointError as exc:
        raise BundleCheckpointInvalid(
            f"the saved checkpoint does not open under the trusted keys: {exc} ({exc.code})"
        ) from exc
    last = checkpoints[-1]
    if last.size < saved.size:
        raise BundleRollback(
            f"rollback: the bundle's last checkpoint has size {last.size}, smaller than the "
            f"saved checkpoint's {saved.size}"
        )
    if saved.size == 0:
        return saved  # the empty tree is a prefix of every tree
    match = next((c for c in checkpoints if c.size == saved.size), None)
    if match is None:
        raise BundleSavedCheckpointMissing(
            f"the bundle has no checkpoint of the saved size {saved.size}, though it must hold "
            "every checkpoint the log issued"
        )
    if not hmac.compare_digest(match.root_hash, saved.root_hash):
        raise BundleHistoryRewritten(
            f"history rewritten: the bundle's checkpoint of size {saved.size} has another root "
            "than the saved one"
        )
    return saved


def _check_leaves(bundle: AuditBundle, last: Checkpoint) -> None:
    """Rule 5: contiguous ascending indices below the last size; canonical events of this log,
    agreeing with their columns; inclusion in the last checkpoint."""
    expected: int | None = None
    for position, entry in enumerate(bundle.leaves):
        index = entry.index
        if expected is not None and index != expected:
            if index < expected:
                why = "out of order or repeated"
            else:
                why = f"a gap: index {expected} to {index - 1} missing"
            raise BundleLeafOrderError(
                f"leaves[{position}] has index {index} after {expected - 1} ({why})"
            )
        if index >= last.size:
            raise BundleLeafOrderError(
                f"leaves[{position}] has index {index}, not below the last checkpoint's size "
                f"{last.size}"
            )
        expected = index + 1
        try:
            event = parse_leaf(entry.leaf)
        except LeafFormatError as exc:
            raise BundleLeafInvalid(f"leaf {index}: {exc}") from exc
        if event["log"] != bundle.origin:
            raise BundleLeafInvalid(f"leaf {index} names another log than the bundle's origin")
        derived = leaf_columns(event)
        if derived != entry.columns:
            wrong = sorted(name for name in LEAF_COLUMNS if derived[name] != entry.columns[name])
            raise BundleLeafInvalid(
                f"leaf {index}: column(s) {', '.join(wrong)} disagree with the leaf"
            )
        try:
            verify_inclusion(
                index=index,
                tree_size=last.size,
                leaf_hash=leaf_hash(entry.leaf),
                proof=entry.proof,
                root=last.root_hash,
            )
        except ProofVerificationFailed as exc:
            raise BundleInclusionFailed(
                f"leaf {index} is not in the log of size {last.size}: {exc}"
            ) from exc


# --------------------------------------------------------------------------------------------
# Building


def _time_arg(value: datetime | str, what: str) -> str:
    text = format_time(value) if isinstance(value, datetime) else value
    if not _time_ok(text):
        raise InvalidBundleParameters(f"{what} must be YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return text


def _range_arg(value: datetime | str | None, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_time(value)
    if type(value) is not str:
        raise InvalidBundleParameters(f"{what} must be a datetime, a string or None")
    return value


def build_bundle(
    *,
    origin: str,
    exported_at: datetime | str,
    range_from: datetime | str | None,
    range_to: datetime | str | None,
    signing_keys: Sequence[CheckpointKey],
    checkpoints: Sequence[bytes],
    tree: MerkleTree,
    leaves: Sequence[tuple[int, bytes, Mapping[str, str]]],
) -> bytes:
    """Write an export bundle (``docs/audit-format.md``, "Export bundles").

    Args:
        origin: the log's origin; every checkpoint must carry it.
        exported_at: when the export is made (an aware datetime, or a string in the events'
            time form).
        range_from: the start of the exported time range (inclusive), or None.
        range_to: its end (exclusive), or None. Datetimes are written in the events' form.
        signing_keys: the log's checkpoint keys, written as verifier keys (informative).
        checkpoints: every signed note the log has issued, oldest first (not verified here).
        tree: the log's leaf hashes, at least up to the last checkpoint's size.
        leaves: ``(index, leaf bytes, columns)`` of the exported events, contiguous and in index
            order, all below the last checkpoint's size.

    Returns:
        The bundle: ASCII JSON followed by a newline.

    Raises:
        InvalidBundleParameters: no checkpoint; a malformed note or one for another origin;
            sizes not strictly increasing; a tree smaller than the last checkpoint; leaves out of
            order or not below the last size; columns other than exactly ``LEAF_COLUMNS`` as
            strings; a time in the wrong form.

    Security: nothing checks that the leaves match the tree or the tree the checkpoints. A log
    that was tampered with still exports, and its bundle then fails verification, in the hands of
    whoever checks it: that is where the evidence belongs.
    """
    if not _line_ok(origin):
        raise InvalidBundleParameters("origin must be one printable line")
    if not checkpoints:
        raise InvalidBundleParameters("a bundle needs at least one checkpoint")
    sizes: list[int] = []
    notes: list[str] = []
    for note in checkpoints:
        try:
            checkpoint = Checkpoint.from_text(SignedNote.parse(note).text)
        except CheckpointError as exc:
            raise InvalidBundleParameters(f"a checkpoint is malformed: {exc}") from exc
        if checkpoint.origin != origin:
            raise InvalidBundleParameters("a checkpoint is for another origin")
        if sizes and checkpoint.size <= sizes[-1]:
            raise InvalidBundleParameters("checkpoint sizes must strictly increase")
        sizes.append(checkpoint.size)
        notes.append(note.decode("utf-8"))
    last_size = sizes[-1]
    if tree.size < last_size:
        raise InvalidBundleParameters("the tree is smaller than the last checkpoint")
    consistency = [
        {
            "from": old,
            "to": new,
            "proof": [_b64(h) for h in tree.consistency_proof(old, new)],
        }
        for old, new in pairwise(sizes)
        if old > 0
    ]
    entries = []
    previous: int | None = None
    for index, leaf, columns in leaves:
        if type(index) is not int or not 0 <= index < last_size:
            raise InvalidBundleParameters(f"leaf index {index} is not below the last size")
        if previous is not None and index != previous + 1:
            raise InvalidBundleParameters("leaf indices must be contiguous and ascending")
        previous = index
        if type(leaf) is not bytes or not leaf:
            raise InvalidBundleParameters(f"leaf {index} must be non-empty bytes")
        if set(columns) != _COLUMN_SET or not all(type(v) is str for v in columns.values()):
            raise InvalidBundleParameters(f"leaf {index}: columns must be LEAF_COLUMNS, strings")
        try:
            proof = tree.inclusion_proof(index, last_size)
        except InvalidProofParameters as exc:  # unreachable after the checks above
            raise InvalidBundleParameters(f"leaf {index}: {exc}") from exc
        entries.append(
            {
                "index": index,
                "leaf": _b64(leaf),
                "columns": {name: columns[name] for name in LEAF_COLUMNS},
                "proof": [_b64(h) for h in proof],
            }
        )
    document = {
        "format": BUNDLE_FORMAT,
        "origin": origin,
        "exported_at": _time_arg(exported_at, "exported_at"),
        "range": {
            "from": _range_arg(range_from, "range_from"),
            "to": _range_arg(range_to, "range_to"),
        },
        "signing_keys": [key.vkey for key in signing_keys],
        "checkpoints": notes,
        "consistency": consistency,
        "leaves": entries,
    }
    return (json.dumps(document, separators=(",", ":")) + "\n").encode("ascii")
