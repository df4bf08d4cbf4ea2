"""The audit log's checks on the user's side: the trust store, ``cvault trust save`` and
``cvault audit verify``. Django-free.

The trust store keeps, per audit log, the checkpoint keys the user decided to trust and the
latest checkpoint they saw, in ``<config dir>/trust/<first 32 hex digits of SHA-256(origin)>.json``
(mode 0600 in a 0700 directory)::

    {"origin": "<log origin>", "keys": ["<vkey>", ...], "checkpoint": "<signed note>",
     "url": "<server it came from>", "saved_at": "<UTC time>"}

``trust save`` trusts the server's keys on first use and from then on only moves the saved
checkpoint forward along a verified consistency proof, so a server that later rewrites or rolls
back its log is caught. ``audit verify`` checks an export bundle offline against the saved keys
(and any ``--trust`` keys) and the saved checkpoint (``vault.crypto.auditbundle``).

Security: a key is never trusted because a bundle or a server answer names it, except on the
first ``trust save`` of a log (or ``--replace-keys``), which is trust on first use and says so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from vault.client import config as cfg
from vault.client.errors import (
    AuditCheckFailed,
    AuditUnanchored,
    ConfigurationError,
    NetworkError,
    UnknownLogKey,
)
from vault.crypto.auditbundle import (
    MAX_BUNDLE_BYTES,
    AuditBundle,
    BundleError,
    BundleReport,
    BundleUnanchored,
    format_time,
    parse_bundle,
    verify_bundle,
)
from vault.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointKey,
    CheckpointNotTrusted,
    InvalidCheckpointParameters,
    open_checkpoint,
)
from vault.crypto.merkle import (
    HASH_SIZE,
    MAX_PROOF_HASHES,
    ProofVerificationFailed,
    verify_consistency,
)

__all__ = [
    "MAX_BUNDLE_BYTES",
    "TRUST_DIR",
    "AuditVerdict",
    "JsonApi",
    "TrustSaved",
    "TrustedLog",
    "audit_verify",
    "load_trust",
    "read_bundle",
    "save_trust",
    "trust_key",
    "trust_path",
    "trust_save",
]

TRUST_DIR = "trust"


class JsonApi(Protocol):
    """What ``trust_save`` needs of :class:`vault.client.api.Api`."""

    url: str

    def path(self, path: str, query: Mapping[str, str | int] | None = None) -> str: ...

    def json(self, method: str, target: str, payload: Any = None) -> Any: ...


# -- the trust store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedLog:
    """What the user trusts about one audit log.

    Attributes:
        origin: the log's origin.
        keys: its trusted checkpoint keys.
        note: the latest checkpoint seen, as a signed note.
        checkpoint: that note, opened under ``keys``.
        url: the server it was fetched from (informative).
        saved_at: when it was saved (UTC, informative).
    """

    origin: str
    keys: tuple[CheckpointKey, ...]
    note: bytes
    checkpoint: Checkpoint
    url: str
    saved_at: str


def trust_path(directory: Path, origin: str) -> Path:
    """The trust file of ``origin`` in the configuration directory ``directory``."""
    digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32]
    return directory / TRUST_DIR / f"{digest}.json"


def load_trust(directory: Path, origin: str) -> TrustedLog | None:
    """The trusted keys and saved checkpoint of ``origin``, or None if none were saved.

    Raises:
        ConfigurationError: the trust file is unreadable, for another origin, or damaged (a key
            that does not parse, a checkpoint that does not open under the saved keys).
    """
    path = trust_path(directory, origin)
    data = cfg.read_json(path)
    if data is None:
        return None
    damaged = f"the trust file {path} is damaged"
    if data.get("origin") != origin:
        raise ConfigurationError(f"{damaged}: it is for another log")
    vkeys, note = data.get("keys"), data.get("checkpoint")
    if not isinstance(vkeys, list) or not vkeys or not isinstance(note, str):
        raise ConfigurationError(f"{damaged}: it needs keys and a checkpoint")
    try:
        keys = tuple(CheckpointKey.from_vkey(vkey) for vkey in vkeys)
        checkpoint = open_checkpoint(note.encode("utf-8"), keys=keys, origin=origin)
    except (CheckpointError, UnicodeEncodeError) as exc:
        raise ConfigurationError(f"{damaged}: {exc}") from exc
    url, saved_at = data.get("url"), data.get("saved_at")
    return TrustedLog(
        origin=origin,
        keys=keys,
        note=note.encode("utf-8"),
        checkpoint=checkpoint,
        url=url if isinstance(url, str) else "",
        saved_at=saved_at if isinstance(saved_at, str) else "",
    )


def save_trust(directory: Path, log: TrustedLog) -> Path:
    """Write ``log``'s trust file (0600, atomically, in a 0700 directory); return its path.

    Raises:
        ConfigurationError: it cannot be written.
    """
    path = trust_path(directory, log.origin)
    cfg.ensure_dir(directory)
    cfg.write_json(
        path,
        {
            "origin": log.origin,
            "keys": [key.vkey for key in log.keys],
            "checkpoint": log.note.decode("utf-8"),
            "url": log.url,
            "saved_at": log.saved_at,
        },
    )
    return path


# -- trust save ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustSaved:
    """What ``trust_save`` did.

    Attributes:
        log: what is now trusted.
        path: the trust file.
        previous_size: the size of the checkpoint saved before, or None on first use.
        first_use: the keys were trusted on first use (no earlier file, or ``replace_keys``).
        keys_replaced: an earlier file's keys were replaced (``replace_keys``).
        previous_keys: the keys trusted before a replacement (else empty).
    """

    log: TrustedLog
    path: Path
    previous_size: int | None
    first_use: bool
    keys_replaced: bool
    previous_keys: tuple[CheckpointKey, ...] = ()


def _answer(
    api: JsonApi, path: str, query: Mapping[str, str | int] | None = None
) -> dict[str, Any]:
    data = api.json("GET", api.path(path, query))
    if not isinstance(data, dict):
        raise NetworkError(f"{api.url} did not answer {path} like a Ciphervault server")
    return data


def _server_keys(api: JsonApi) -> tuple[str, tuple[CheckpointKey, ...]]:
    data = _answer(api, "/audit/keys/")
    origin, entries = data.get("origin"), data.get("keys")
    if not isinstance(origin, str) or not origin or not isinstance(entries, list) or not entries:
        raise NetworkError(f"{api.url} did not answer /audit/keys/ like a Ciphervault server")
    keys = []
    for entry in entries:
        vkey = entry.get("vkey") if isinstance(entry, dict) else None
        if not isinstance(vkey, str):
            raise NetworkError(f"{api.url} did not answer /audit/keys/ like a Ciphervault server")
        try:
            keys.append(CheckpointKey.from_vkey(vkey))
        except InvalidCheckpointParameters as exc:
            raise AuditCheckFailed(
                f"the server's audit key is not a valid verifier key: {exc}", exc.code
            ) from exc
    return origin, tuple(keys)


def _server_checkpoint(api: JsonApi, origin: str) -> tuple[bytes, object]:
    """The latest signed note, and the size the answer states beside it."""
    data = _answer(api, "/audit/checkpoint/")
    note = data.get("note")
    if data.get("origin") != origin or not isinstance(note, str):
        raise AuditCheckFailed(
            "the server's checkpoint is not for the log its keys are for", "audit_log_mismatch"
        )
    try:
        return note.encode("utf-8"), data.get("size")
    except UnicodeEncodeError as exc:
        raise AuditCheckFailed("the server's checkpoint is not valid Unicode") from exc


def _hash(text: object) -> bytes | None:
    if not isinstance(text, str) or len(text) != 44:
        return None
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if len(data) != HASH_SIZE or base64.b64encode(data).decode("ascii") != text:
        return None
    return data


def _check_extends(api: JsonApi, saved: Checkpoint, new: Checkpoint) -> None:
    """The new checkpoint extends the saved one: same root at the same size, a verified
    consistency proof to a larger size, never a smaller size."""
    if new.size < saved.size:
        raise AuditCheckFailed(
            f"rollback: the server's checkpoint has size {new.size}, smaller than the saved "
            f"checkpoint's {saved.size}",
            "audit_rollback",
        )
    if new.size == saved.size:
        if not hmac.compare_digest(new.root_hash, saved.root_hash):
            raise AuditCheckFailed(
                f"history rewritten: the server's checkpoint of size {new.size} has another root "
                "than the saved one",
                "audit_history_rewritten",
            )
        return
    if saved.size == 0:
        return  # the empty tree is a prefix of every tree
    data = _answer(api, "/audit/proofs/consistency/", {"from": saved.size, "to": new.size})
    proof = data.get("proof")
    hashes = [_hash(item) for item in proof] if isinstance(proof, list) else [None]
    if (
        data.get("from") != saved.size
        or data.get("to") != new.size
        or len(hashes) > MAX_PROOF_HASHES
        or any(h is None for h in hashes)
    ):
        raise AuditCheckFailed(
            "the server's consistency proof is malformed", "audit_proof_verification_failed"
        )
    try:
        verify_consistency(
            old_size=saved.size,
            new_size=new.size,
            old_root=saved.root_hash,
            new_root=new.root_hash,
            proof=[h for h in hashes if h is not None],
        )
    except ProofVerificationFailed as exc:
        raise AuditCheckFailed(
            f"history rewritten: the server's checkpoint of size {new.size} does not extend the "
            f"saved one of size {saved.size} ({exc})",
            "audit_history_rewritten",
        ) from exc


def trust_save(api: JsonApi, directory: Path, *, replace_keys: bool = False) -> TrustSaved:
    """Save (or move forward) the trusted keys and checkpoint of the server's audit log.

    First use (no trust file for the log): the keys the server lists are trusted as they are,
    once its latest checkpoint opens under them. The caller must show them so that the user can
    compare them with copies obtained another way. Later: the new checkpoint must open under the
    *saved* keys and extend the saved checkpoint (same root at the same size, or a verified
    consistency proof to a larger size).

    Args:
        api: the logged-in API client.
        directory: the configuration directory.
        replace_keys: trust the server's current keys instead of the saved ones (trust on first
            use again). The new checkpoint must still extend the saved one.

    Returns:
        What was saved.

    Raises:
        UnknownLogKey: the checkpoint is signed by no saved key (without ``replace_keys``).
        AuditCheckFailed: a checkpoint that does not open, a rollback, rewritten history, a
            malformed or failing consistency proof, a server answer for another log.
        NetworkError, ServerError: the server could not be asked.
        ConfigurationError: the trust file is damaged or cannot be written.

    Security: after the first use, the server cannot make the saved state go back or sideways;
    it can only be moved forward along a proof, or the user explicitly re-trusts.
    """
    origin, server_keys = _server_keys(api)
    note, stated_size = _server_checkpoint(api, origin)
    saved = load_trust(directory, origin)
    first_use = saved is None or replace_keys
    keys = server_keys if first_use or saved is None else saved.keys
    try:
        checkpoint = open_checkpoint(note, keys=keys, origin=origin)
    except CheckpointNotTrusted as exc:
        if first_use:
            raise AuditCheckFailed(
                f"the latest checkpoint of {origin} is signed by none of the keys the server lists",
                exc.code,
            ) from exc
        listed = ", ".join(key.vkey for key in server_keys)
        raise UnknownLogKey(
            f"the latest checkpoint of {origin} is signed by none of the saved keys; the server "
            f"now lists {listed}. If your administrator confirms the new key out of band, run "
            "'cvault trust save --replace-keys'",
            exc.code,
        ) from exc
    except CheckpointError as exc:
        raise AuditCheckFailed(
            f"the latest checkpoint of {origin} does not verify: {exc}", exc.code
        ) from exc
    if stated_size != checkpoint.size:
        raise AuditCheckFailed(
            f"the server states size {stated_size!r} beside a checkpoint of size {checkpoint.size}",
            "audit_log_mismatch",
        )
    if saved is not None:
        _check_extends(api, saved.checkpoint, checkpoint)
    trusted = TrustedLog(
        origin=origin,
        keys=keys,
        note=note,
        checkpoint=checkpoint,
        url=api.url,
        saved_at=format_time(datetime.now(UTC)),
    )
    path = save_trust(directory, trusted)
    return TrustSaved(
        log=trusted,
        path=path,
        previous_size=saved.checkpoint.size if saved is not None else None,
        first_use=first_use,
        keys_replaced=saved is not None and replace_keys,
        previous_keys=saved.keys if saved is not None and replace_keys else (),
    )


# -- audit verify --------------------------------------------------------------------------------


def read_bundle(source: str, *, max_bytes: int = MAX_BUNDLE_BYTES) -> bytes:
    """Read a bundle file (``-``: standard input), refusing more than ``max_bytes``.

    Raises:
        AuditCheckFailed: the file is larger than ``max_bytes``.
        ConfigurationError: it cannot be read (a usage error: exit status 2).
    """
    try:
        if source == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source} ({exc.strerror})") from exc
    if len(data) > max_bytes:
        raise AuditCheckFailed(
            f"the bundle is larger than {max_bytes} bytes", "audit_bundle_malformed"
        )
    return data


def trust_key(value: str, origin: str) -> CheckpointKey:
    """A ``--trust`` key: a verifier key string, or the path of a PEM public key file (which is
    then named ``origin``, as the vault names its checkpoint keys).

    Raises:
        ConfigurationError: neither.
    """
    try:
        return CheckpointKey.from_vkey(value)
    except InvalidCheckpointParameters as exc:
        not_a_vkey = exc
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"--trust {value!r} is neither a verifier key ({not_a_vkey}) nor a PEM file"
        ) from not_a_vkey
    try:
        return CheckpointKey.from_pem(origin, path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path} ({exc.strerror})") from exc
    except InvalidCheckpointParameters as exc:
        raise ConfigurationError(f"{path} does not hold a P-256 PEM public key ({exc})") from exc


@dataclass(frozen=True)
class AuditVerdict:
    """A verified bundle.

    Attributes:
        report: what the bundle proved.
        saved: the trust store entry used (its keys and checkpoint), or None.
    """

    report: BundleReport
    saved: TrustedLog | None


def audit_verify(
    data: bytes | AuditBundle, *, directory: Path, trust: Sequence[str] = ()
) -> AuditVerdict:
    """Verify an export bundle offline with the trust store and ``--trust`` keys.

    Args:
        data: the bundle's bytes (or a bundle already parsed).
        directory: the configuration directory (its trust store).
        trust: extra trusted keys, each a verifier key or a PEM file's path.

    Returns:
        The verdict, when every check passed.

    Raises:
        AuditUnanchored: no trusted key for the bundle's log; nothing was verified.
        AuditCheckFailed: the bundle failed a check (``code`` names it).
        ConfigurationError: a ``--trust`` value is unusable, or the trust file is damaged.
    """
    try:
        bundle = data if isinstance(data, AuditBundle) else parse_bundle(data)
    except BundleError as exc:
        raise AuditCheckFailed(str(exc), exc.code) from exc
    saved = load_trust(directory, bundle.origin)
    keys = [
        *(saved.keys if saved is not None else ()),
        *(trust_key(t, bundle.origin) for t in trust),
    ]
    try:
        report = verify_bundle(
            bundle,
            trusted=keys,
            saved_checkpoint=saved.note if saved is not None else None,
        )
    except BundleUnanchored as exc:
        raise AuditUnanchored(
            f"no trusted key for {exc.origin}: nothing in the bundle was verified",
            origin=exc.origin,
            signing_keys=exc.signing_keys,
        ) from exc
    except BundleError as exc:
        raise AuditCheckFailed(str(exc), exc.code) from exc
    return AuditVerdict(report=report, saved=saved)
