"""A real audit log for tests: canonical events, a Merkle tree, checkpoints signed with a real
P-256 key, and export bundles written by ``build_bundle``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto.auditbundle import build_bundle, leaf_columns
from vault.crypto.canonical import canonical_json
from vault.crypto.checkpoint import Checkpoint, CheckpointKey, SignedNote, sign_checkpoint
from vault.crypto.merkle import MerkleTree, leaf_hash

ORIGIN = "ciphervault.example/audit/acme"
EXPORTED_AT = "2025-03-01T12:00:00.000000Z"


def new_signer(origin: str = ORIGIN) -> tuple[ec.EllipticCurvePrivateKey, CheckpointKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, CheckpointKey(name=origin, public_key=private.public_key())


def event(number: int, *, log: str = ORIGIN, **changes: Any) -> dict[str, Any]:
    """A valid event; ``changes`` replace top-level members."""
    value: dict[str, Any] = {
        "v": 1,
        "log": log,
        "id": str(uuid.UUID(int=number + 1)),
        "time": f"2025-02-01T10:{number // 60:02d}:{number % 60:02d}.{number:06d}Z",
        "type": "object.read",
        "outcome": "success",
        "actor": {"kind": "user", "id": f"user-{number % 3}", "auth": "session"},
        "origin": {"ip": "192.0.2.7", "user_agent": "cvault/0.1 é", "request_id": f"r{number}"},
        "resource": {"type": "object", "id": str(100 + number)},
        "details": {"n": number, "tags": ["a", "b"], "ok": True, "none": None},
    }
    value.update(changes)
    return value


class Log:
    """An append-only audit log with signed checkpoints, as the server keeps one."""

    def __init__(
        self,
        private: ec.EllipticCurvePrivateKey,
        key: CheckpointKey,
        origin: str = ORIGIN,
    ) -> None:
        self.private = private
        self.key = key
        self.origin = origin
        self.leaves: list[bytes] = []
        self.columns: list[dict[str, str]] = []
        self.tree = MerkleTree()
        self.notes: list[bytes] = []

    def add(self, value: dict[str, Any], *, leaf: bytes | None = None) -> int:
        """Append an event (its canonical JSON, unless ``leaf`` gives other bytes)."""
        data = canonical_json(value) if leaf is None else leaf
        self.leaves.append(data)
        self.columns.append(leaf_columns(value))
        return self.tree.append(leaf_hash(data))

    def add_events(self, count: int) -> None:
        for _ in range(count):
            self.add(event(len(self.leaves), log=self.origin))

    def sign(self, size: int | None = None) -> bytes:
        """Sign a checkpoint of the log at ``size`` (default: now), without recording it."""
        size = self.tree.size if size is None else size
        checkpoint = Checkpoint(self.origin, size, self.tree.root(size))
        return sign_checkpoint(
            checkpoint,
            key=self.key,
            sign=lambda m: self.private.sign(m, ec.ECDSA(hashes.SHA256())),
        )

    def checkpoint(self) -> bytes:
        note = self.sign()
        self.notes.append(note)
        return note

    def bundle(
        self,
        start: int = 0,
        end: int | None = None,
        *,
        notes: list[bytes] | None = None,
    ) -> bytes:
        """The export of leaves ``[start, end)`` (default: up to the last checkpoint)."""
        notes = self.notes if notes is None else notes
        last = Checkpoint.from_text(SignedNote.parse(notes[-1]).text).size
        end = last if end is None else end
        return build_bundle(
            origin=self.origin,
            exported_at=EXPORTED_AT,
            range_from="2025-02-01T00:00:00Z",
            range_to=None,
            signing_keys=[self.key],
            checkpoints=notes,
            tree=self.tree,
            leaves=[(i, self.leaves[i], self.columns[i]) for i in range(start, end)],
        )


def standard_log(private: ec.EllipticCurvePrivateKey, key: CheckpointKey) -> Log:
    """Checkpoints at sizes 0, 3, 7 and 12."""
    log = Log(private, key)
    log.checkpoint()
    for count in (3, 4, 5):
        log.add_events(count)
        log.checkpoint()
    return log


def edit(bundle: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    """The bundle with ``change`` applied to its parsed JSON, written back."""
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode("utf-8")
