"""The user's own keys: key backends configured in ``keys.json``, and what they wrap.

A key-encryption key (KEK) is created inside a ``kms_plugins`` backend the user controls (a local
keystore, an HSM over PKCS#11, a TPM, a KMS over KMIP) and never leaves it. ``cvault`` sends the
backend a fresh data key (DEK) per object version and keeps the wrapped result in the envelope's
recipient stanzas. An optional recovery key (a second backend) gets a stanza on every new upload.

``keys.json`` records, per role (``primary``, ``recovery``): the backend kind, its options, the
paths of files holding its secrets (a PIN file, a passphrase file; never the secret itself) and
the key id. It also holds the *name secret* (see ``vault.client.names``), wrapped by every
configured key, so that it too is only usable with the user's backend.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms_plugins.base import KeyBackend
from kms_plugins.config import BUILT_IN, backend_class
from kms_plugins.errors import (
    KeyBackendError,
    KeyDestroyed,
    KeyNotFound,
    KeyStateError,
    UnwrapFailed,
)
from kms_plugins.types import KeyRef, KeyState, WrappedKey
from vault.client import config as cfg
from vault.client.errors import (
    ConfigurationError,
    DecryptionFailed,
    KeyBackendFailure,
    NoKeyConfigured,
    WrongKey,
)
from vault.client.names import NAME_SECRET_SIZE, NameCipher
from vault.crypto import AuthenticationFailed, EnvelopeHeader

FORMAT = "cvault-keys/1"
ROLES = ("primary", "recovery")
NAME_SECRET_CONTEXT = {"cvault": "name-secret", "format": "1"}
# Options whose value is read from a file at run time and never stored in keys.json.
SECRET_FROM_FILE = {"local": {"PASSPHRASE"}, "kmip": {"KEY_PASSWORD"}}


@dataclass
class KeySpec:
    """One configured key: the backend that holds it and its id there.

    Attributes:
        kind: ``local``, ``pkcs11``, ``tpm`` or ``kmip``.
        options: the backend's OPTIONS as stored (paths, labels; never a PIN or passphrase).
        secret_files: OPTIONS read from a file at run time (``{"PASSPHRASE": "/path"}``).
        key_id: the key's id in the backend (empty until created).
    """

    kind: str
    options: dict[str, Any]
    secret_files: dict[str, str] = field(default_factory=dict)
    key_id: str = ""
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record stored in ``keys.json``."""
        return {
            "backend": self.kind,
            "options": self.options,
            "secret_files": self.secret_files,
            "key_id": self.key_id,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeySpec:
        """Parse a ``keys.json`` record.

        Raises:
            ConfigurationError: the record is malformed.
        """
        try:
            kind = str(data["backend"])
            options = dict(data["options"])
            secret_files = {str(k): str(v) for k, v in dict(data.get("secret_files", {})).items()}
            return cls(kind, options, secret_files, str(data["key_id"]), str(data.get("created")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError("keys.json holds a malformed key record") from exc

    def backend(self, alias: str) -> KeyBackend:
        """A backend instance for this key (connects lazily, on first use).

        Raises:
            ConfigurationError: unknown kind, bad options, or an unreadable secret file.
        """
        if self.kind not in BUILT_IN:
            raise ConfigurationError(f"unknown key backend {self.kind!r}")
        options = dict(self.options)
        for option, path in self.secret_files.items():
            try:
                options[option] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read the {option.lower()} file {path} ({exc.strerror})"
                ) from exc
        try:
            return backend_class(self.kind)(alias, options)
        except KeyBackendError as exc:
            raise ConfigurationError(f"key backend {self.kind}: {exc}") from exc


def _stanza_json(wrapped: WrappedKey) -> dict[str, Any]:
    return {
        "backend": wrapped.backend,
        "key_id": wrapped.key.key_id,
        "version": wrapped.key.version,
        "mechanism": wrapped.mechanism,
        "ciphertext": base64.b64encode(wrapped.ciphertext).decode("ascii"),
    }


def _stanza_from_json(data: Mapping[str, Any]) -> WrappedKey:
    try:
        return WrappedKey(
            backend=str(data["backend"]),
            key=KeyRef(str(data["key_id"]), int(data["version"])),
            mechanism=str(data["mechanism"]),
            ciphertext=base64.b64decode(str(data["ciphertext"]), validate=True),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError("keys.json holds a malformed wrapped name secret") from exc


def backend_failure(exc: KeyBackendError, what: str) -> KeyBackendFailure:
    """A one-line client error for a key backend error (never echoes secrets)."""
    hint = " (it may work later)" if exc.transient else ""
    return KeyBackendFailure(f"key backend failed to {what}: {exc.code}: {exc}{hint}")


class KeyRing:
    """The user's configured keys, their backends, and the name secret they protect.

    Security: the KEKs stay in their backends; this object holds only backend handles, the
    wrapped name secret, and (once unwrapped, in memory) the name cipher. ``repr`` shows no
    secrets.
    """

    def __init__(self, directory: Path, data: Mapping[str, Any] | None = None) -> None:
        """Args:
            directory: the configuration directory ``keys.json`` lives in.
            data: the parsed ``keys.json`` (None: no key configured yet).

        Raises:
            ConfigurationError: ``keys.json`` is malformed.
        """
        self.directory = directory
        data = dict(data or {})
        if data and data.get("format") != FORMAT:
            raise ConfigurationError(f"keys.json is not in the {FORMAT} format")
        self.specs: dict[str, KeySpec] = {}
        for role in ROLES:
            if data.get(role):
                self.specs[role] = KeySpec.from_json(data[role])
        self.name_stanzas = [_stanza_from_json(s) for s in data.get("name_secret", [])]
        self._backends: dict[str, KeyBackend] = {}
        self._names: NameCipher | None = None

    def __repr__(self) -> str:
        roles = {role: spec.kind for role, spec in self.specs.items()}
        return f"<KeyRing {roles}>"

    # -- loading and saving ----------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> KeyRing:
        """The key ring of a configuration directory (empty if ``keys.json`` does not exist).

        Raises:
            ConfigurationError: ``keys.json`` is unreadable or malformed.
        """
        return cls(directory, cfg.read_json(directory / cfg.KEYS_FILE))

    def save(self) -> None:
        """Write ``keys.json`` (0600, atomically)."""
        data: dict[str, Any] = {"format": FORMAT}
        for role, spec in self.specs.items():
            data[role] = spec.to_json()
        data["name_secret"] = [_stanza_json(s) for s in self.name_stanzas]
        cfg.write_json(self.directory / cfg.KEYS_FILE, data)

    @property
    def configured(self) -> bool:
        """Whether a primary key exists."""
        return "primary" in self.specs

    def close(self) -> None:
        """Close every backend connection opened by this key ring."""
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def backend(self, role: str) -> KeyBackend:
        """The backend of ``role`` (``primary`` or ``recovery``), created once.

        Raises:
            NoKeyConfigured: no key for that role.
            ConfigurationError: the backend cannot be configured.
        """
        if role not in self.specs:
            raise NoKeyConfigured(
                "no key is configured: run 'cvault key init --backend local' (or pkcs11, tpm, kmip)"
                if role == "primary"
                else "no recovery key is configured"
            )
        if role not in self._backends:
            self._backends[role] = self.specs[role].backend(f"cvault-{role}")
        return self._backends[role]

    def _roles(self) -> Iterator[tuple[str, KeySpec]]:
        for role in ROLES:
            if role in self.specs:
                yield role, self.specs[role]

    # -- creating keys ---------------------------------------------------------------------

    def create(self, role: str, spec: KeySpec) -> KeyRef:
        """Create a KEK in ``spec``'s backend for ``role`` and wrap the name secret under it.

        For ``primary`` on an empty key ring a fresh name secret is drawn; for ``recovery`` the
        existing name secret is unwrapped with the primary key and wrapped again under the new
        key, so the recovery key alone can later recover names as well as data.

        Raises:
            ConfigurationError: a primary key exists already, or recovery without a primary.
            KeyBackendFailure: the backend failed.
        """
        if role == "primary" and self.configured:
            raise ConfigurationError(
                "a key is already configured (keys.json); use 'cvault key rotate' to rotate it"
            )
        if role == "recovery" and not self.configured:
            raise NoKeyConfigured("create the primary key first: 'cvault key init --backend ...'")
        secret = secrets.token_bytes(NAME_SECRET_SIZE) if role == "primary" else self.name_secret()
        backend = spec.backend(f"cvault-{role}")
        try:
            ref = backend.create_key()
            wrapped = backend.wrap(ref.key_id, secret, NAME_SECRET_CONTEXT)
        except KeyBackendError as exc:
            backend.close()
            raise backend_failure(exc, "create a key") from exc
        spec.key_id = ref.key_id
        spec.created = datetime.now(UTC).isoformat(timespec="seconds")
        self.specs[role] = spec
        self._backends[role] = backend
        self.name_stanzas = [
            s for s in self.name_stanzas if (s.backend, s.key.key_id) != (spec.kind, ref.key_id)
        ]
        self.name_stanzas.append(wrapped)
        self.save()
        return ref

    def rotate(self, role: str = "primary") -> KeyRef:
        """Rotate ``role``'s key in its backend: a new version becomes the one that wraps.

        Older versions keep unwrapping what they protected. The name secret is wrapped again
        under the new version (the old stanza is replaced).

        Raises:
            NoKeyConfigured: no key for ``role``.
            KeyBackendFailure: the backend failed or cannot rotate.
        """
        spec = self.specs.get(role)
        if spec is None:
            raise NoKeyConfigured(f"no {role} key is configured")
        secret = self.name_secret()
        backend = self.backend(role)
        try:
            ref = backend.rotate(spec.key_id)
            wrapped = backend.wrap(spec.key_id, secret, NAME_SECRET_CONTEXT)
        except KeyBackendError as exc:
            raise backend_failure(exc, "rotate the key") from exc
        self.name_stanzas = [
            s for s in self.name_stanzas if (s.backend, s.key.key_id) != (spec.kind, spec.key_id)
        ] + [wrapped]
        self.save()
        return ref

    def current_versions(self) -> dict[str, KeyRef]:
        """The version that wraps now (the backend's primary) of each configured key, by role.

        Raises:
            NoKeyConfigured: no primary key.
            KeyBackendFailure: a backend failed, or a key has no active version to wrap with.
        """
        if not self.configured:
            raise NoKeyConfigured(
                "no key is configured: run 'cvault key init --backend local' (or pkcs11, tpm, kmip)"
            )
        current: dict[str, KeyRef] = {}
        for role, spec, version in self.describe():
            if version is None:
                raise KeyBackendFailure(
                    f"the {role} key {spec.key_id} has no active version to wrap with"
                )
            current[role] = KeyRef(spec.key_id, version)
        return current

    def older_active_versions(self, role: str, current: KeyRef) -> list[int]:
        """The versions of ``role``'s key older than ``current`` that are still active.

        Raises:
            NoKeyConfigured, KeyBackendFailure.
        """
        try:
            description = self.backend(role).describe(current.key_id)
        except KeyBackendError as exc:
            raise backend_failure(exc, "describe the key") from exc
        return sorted(
            info.ref.version
            for info in description.versions
            if info.ref.version < current.version and info.state == KeyState.ACTIVE
        )

    def _stale_roles(
        self, stanzas: Sequence[WrappedKey], current: Mapping[str, KeyRef]
    ) -> list[str]:
        """The roles whose key has no stanza at its current version, or also an older one."""
        stale = []
        for role, spec in self._roles():
            versions = [
                s.key.version
                for s in stanzas
                if (s.backend, s.key.key_id) == (spec.kind, spec.key_id)
            ]
            wanted = current[role].version
            if not versions or min(versions) < wanted:
                stale.append(role)
        return stale

    def rewrap(
        self,
        header: EnvelopeHeader,
        context: Mapping[str, str],
        current: Mapping[str, KeyRef],
    ) -> EnvelopeHeader | None:
        """The header with its data key wrapped under the current version of each of our keys.

        A configured key (primary, recovery) whose stanza is missing or older than its current
        version gets a fresh stanza, wrapped under ``context`` (the one the old stanza was bound
        to); a configured key whose stanza is current keeps it as it is; stanzas of keys that
        are not configured here are kept unchanged. The data key is unwrapped by any of our keys
        (an older, even deactivated, version still unwraps) and checked against the header's
        key commitment first, so a rewrap never wraps the wrong key.

        Args:
            header: the stored header.
            context: the context the stanzas are bound to (the envelope's context and the
                ``cvault-name`` binding).
            current: ``current_versions()``.

        Returns:
            The new header (the fixed part is unchanged), or None if every configured key
            already has a stanza at its current version and no older one.

        Raises:
            WrongKey, DecryptionFailed: none of our keys opens the data key.
            KeyBackendFailure: a backend failed.
            InvalidEnvelopeParameters: the new stanzas cannot be encoded (too many).
        """
        stale = self._stale_roles(header.stanzas, current)
        if not stale:
            return None
        dek = self.unwrap(header, context)
        ours = {(spec.kind, spec.key_id) for _, spec in self._roles()}
        stanzas: list[WrappedKey] = []
        for role, spec in self._roles():
            if role in stale:
                try:
                    stanzas.append(self.backend(role).wrap(spec.key_id, dek, context))
                except KeyBackendError as exc:
                    raise backend_failure(exc, f"wrap with the {role} key") from exc
            else:
                stanzas.extend(
                    s
                    for s in header.stanzas
                    if (s.backend, s.key.key_id) == (spec.kind, spec.key_id)
                )
        stanzas.extend(s for s in header.stanzas if (s.backend, s.key.key_id) not in ours)
        del dek
        return header.with_stanzas(stanzas)

    def rewrap_name_secret(self, current: Mapping[str, KeyRef]) -> bool:
        """Wrap the name secret again under each key whose stanza is older than current.

        ``rotate`` does this already; this catches up a key rotated outside ``cvault``.

        Returns:
            Whether ``keys.json`` changed.

        Raises:
            NoKeyConfigured, DecryptionFailed, KeyBackendFailure.
        """
        stale = self._stale_roles(self.name_stanzas, current)
        if not stale:
            return False
        secret = self.name_secret()
        for role in stale:
            spec = self.specs[role]
            try:
                wrapped = self.backend(role).wrap(spec.key_id, secret, NAME_SECRET_CONTEXT)
            except KeyBackendError as exc:
                raise backend_failure(exc, f"wrap with the {role} key") from exc
            self.name_stanzas = [
                s
                for s in self.name_stanzas
                if (s.backend, s.key.key_id) != (spec.kind, spec.key_id)
            ] + [wrapped]
        self.save()
        return True

    def describe(self) -> list[tuple[str, KeySpec, int | None]]:
        """``(role, spec, primary version or None)`` for each configured key.

        Raises:
            KeyBackendFailure: a backend failed.
        """
        rows: list[tuple[str, KeySpec, int | None]] = []
        for role, spec in self._roles():
            try:
                primary = self.backend(role).describe(spec.key_id).primary
            except KeyBackendError as exc:
                raise backend_failure(exc, "describe the key") from exc
            rows.append((role, spec, primary.ref.version if primary else None))
        return rows

    # -- using keys ------------------------------------------------------------------------

    def _unwrap_with_any(self, stanzas: list[WrappedKey], context: Mapping[str, str]) -> bytes:
        """Unwrap the first stanza one of our keys opens (primary first, then recovery).

        A key that fails (refuses, or its backend is down) does not stop the next one from being
        tried: that is what a recovery key is for.
        """
        refused: KeyBackendError | None = None
        broken: KeyBackendError | None = None
        for role, spec in self._roles():
            for stanza in stanzas:
                if (stanza.backend, stanza.key.key_id) != (spec.kind, spec.key_id):
                    continue
                try:
                    return self.backend(role).unwrap(stanza, context)
                except (UnwrapFailed, KeyDestroyed, KeyNotFound, KeyStateError) as exc:
                    refused = exc
                except KeyBackendError as exc:
                    broken = exc
        if refused is not None:
            raise DecryptionFailed(
                "authentication failed: your key could not unwrap the data key (wrong key, or "
                "the object was tampered with or moved)"
            ) from refused
        if broken is not None:
            raise backend_failure(broken, "unwrap")
        raise WrongKey("authentication failed: this was encrypted for a key you do not have")

    def name_secret(self) -> bytes:
        """The 32-byte name secret, unwrapped by a configured key.

        Raises:
            NoKeyConfigured, DecryptionFailed, KeyBackendFailure.
        """
        if not self.configured:
            raise NoKeyConfigured(
                "no key is configured: run 'cvault key init --backend local' (or pkcs11, tpm, kmip)"
            )
        secret = self._unwrap_with_any(self.name_stanzas, NAME_SECRET_CONTEXT)
        if len(secret) != NAME_SECRET_SIZE:
            raise DecryptionFailed("the wrapped name secret is malformed")
        return secret

    def names(self) -> NameCipher:
        """The name cipher (the name secret is unwrapped once per key ring)."""
        if self._names is None:
            self._names = NameCipher(self.name_secret())
        return self._names

    def wrap(self, dek: bytes, context: Mapping[str, str]) -> list[WrappedKey]:
        """Wrap ``dek`` under every configured key (primary, then recovery), bound to ``context``.

        Raises:
            NoKeyConfigured: no primary key.
            KeyBackendFailure: a backend failed.
        """
        stanzas: list[WrappedKey] = []
        self.backend("primary")
        for role, spec in self._roles():
            try:
                stanzas.append(self.backend(role).wrap(spec.key_id, dek, context))
            except KeyBackendError as exc:
                raise backend_failure(exc, f"wrap with the {role} key") from exc
        return stanzas

    def unwrap(self, header: EnvelopeHeader, context: Mapping[str, str]) -> bytes:
        """The DEK of an envelope, unwrapped by one of our keys and checked against its commitment.

        Args:
            header: the parsed envelope header.
            context: the context each stanza's wrap is bound to.

        Raises:
            WrongKey: no stanza for any configured key.
            DecryptionFailed: a stanza failed to unwrap, or the key fails the commitment.
            KeyBackendFailure: the backend could not be reached.
        """
        if not self.configured:
            raise NoKeyConfigured("no key is configured: run 'cvault key init --backend local'")
        dek = self._unwrap_with_any(list(header.stanzas), context)
        try:
            header.verify_dek(dek)
        except (AuthenticationFailed, ValueError) as exc:
            raise DecryptionFailed(
                "authentication failed: the data key does not match the envelope"
            ) from exc
        return dek
