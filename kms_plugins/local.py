"""The local software keystore: the embedded default, for development and evaluation only.

Keys live in one JSON file, each version's material encrypted at rest with AES-256-GCM under a
master key that comes from a key file (generated on first use, mode 0600) or from a passphrase
through scrypt. Anyone who holds both the keystore and the key file (or the passphrase) holds
every key, and keys are handled in this process's memory: ``production_safe`` is False, and a
system check refuses this backend when ``VAULT_ENV=production``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kms_plugins.base import KeyBackend
from kms_plugins.context import wrap_aad
from kms_plugins.errors import (
    BackendUnavailable,
    ConfigurationError,
    KeyBackendError,
    KeyDestroyed,
    KeyNotFound,
    KeyStateError,
    UnwrapFailed,
)
from kms_plugins.types import (
    UNWRAP_STATES,
    Capability,
    Health,
    KeyDescription,
    KeyInfo,
    KeyPurpose,
    KeyRef,
    KeyState,
    WrappedKey,
)

FORMAT = "ciphervault-local-keystore/1"
MECHANISM = "A256GCM"
NONCE_SIZE = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
FINGERPRINT_LABEL = b"ciphervault/fingerprint/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class LocalKeyBackend(KeyBackend):
    """A software keystore in a file (kind ``local``).

    Options:
        PATH: the keystore file (created on first use, with its directory, mode 0600).
        KEY_FILE: a file holding the 32-byte master key (generated on first use), or
        PASSPHRASE: a passphrase from which scrypt derives the master key (sensitive).
    """

    kind = "local"
    capabilities = Capability.ROTATE | Capability.STATES | Capability.DESTROY | Capability.SIGN
    production_safe = False
    option_names = frozenset({"PATH", "KEY_FILE", "PASSPHRASE"})
    required_options = frozenset({"PATH"})
    sensitive_options = frozenset({"PASSPHRASE"})
    file_options = frozenset()  # the key file is generated on first use
    destroy_assurance = (
        "The version's encrypted material is removed from the keystore file; copies or backups "
        "of that file, with the key file or passphrase, still hold it."
    )

    def _configure(self, options: Mapping[str, Any]) -> None:
        if ("KEY_FILE" in options) == ("PASSPHRASE" in options):
            raise ConfigurationError(
                f"key backend {self.alias!r} (local): set exactly one of KEY_FILE and PASSPHRASE"
            )
        self._path = Path(str(options["PATH"]))
        self._key_file = Path(str(options["KEY_FILE"])) if "KEY_FILE" in options else None
        self._passphrase = options.get("PASSPHRASE")
        if self._passphrase is not None and not isinstance(self._passphrase, str):
            raise ConfigurationError(f"key backend {self.alias!r}: PASSPHRASE must be a string")
        self._master: AESGCM | None = None
        self._cache_stamp: tuple[int, int, int] | None = None
        self._store: dict[str, Any] = {}
        self._material: dict[tuple[str, int], bytes] = {}

    # -- files ------------------------------------------------------------------------------------

    def _connect(self) -> None:
        # The keystore is created on first use only: its lock file marks that it existed, so a
        # keystore gone missing later is reported as unavailable, never silently replaced.
        if not self._path.parent.is_dir():
            raise BackendUnavailable(f"the directory of keystore {self.alias!r} is missing")
        lock_file = Path(f"{self._path}.lock")
        first_use = not lock_file.exists() and not self._path.exists()
        with self._locked():
            if first_use and not self._path.exists():
                self._write(self._new_store())
        self._reload(force=True)

    def _disconnect(self) -> None:
        self._master = None
        self._material.clear()
        self._store = {}
        self._cache_stamp = None

    def _after_fork(self) -> None:
        self._disconnect()

    def _new_store(self) -> dict[str, Any]:
        store: dict[str, Any] = {"format": FORMAT, "keys": {}}
        if self._passphrase is not None:
            store["kdf"] = {
                "name": "scrypt",
                "salt": _b64(os.urandom(16)),
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
            }
        else:
            store["kdf"] = {"name": "key-file"}
        master = self._derive_master(store)
        nonce = os.urandom(NONCE_SIZE)
        store["check"] = _b64(nonce + master.encrypt(nonce, FORMAT.encode(), b"check"))
        return store

    def _master_key_bytes(self, store: Mapping[str, Any]) -> bytes:
        kdf = store["kdf"]
        if kdf["name"] == "scrypt":
            if self._passphrase is None:
                raise ConfigurationError(f"keystore of {self.alias!r} needs PASSPHRASE")
            return Scrypt(
                salt=_unb64(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]
            ).derive(self._passphrase.encode("utf-8"))
        if self._key_file is None:
            raise ConfigurationError(f"keystore of {self.alias!r} needs KEY_FILE")
        if not self._key_file.exists():
            self._key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        key = self._key_file.read_bytes()
        if len(key) != 32:
            raise ConfigurationError(f"KEY_FILE of {self.alias!r} must hold exactly 32 bytes")
        return key

    def _derive_master(self, store: Mapping[str, Any]) -> AESGCM:
        return AESGCM(self._master_key_bytes(store))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock across processes for read-modify-write of the keystore."""
        try:
            handle = open(f"{self._path}.lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise BackendUnavailable(f"keystore of {self.alias!r} is not reachable") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _stamp(self) -> tuple[int, int, int]:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            raise BackendUnavailable(f"keystore of {self.alias!r} is missing") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self, *, force: bool = False) -> None:
        stamp = self._stamp()
        if not force and stamp == self._cache_stamp:
            return
        try:
            store = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackendUnavailable(f"keystore of {self.alias!r} is missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyBackendError(f"keystore of {self.alias!r} is corrupt") from exc
        if store.get("format") != FORMAT:
            raise KeyBackendError(f"keystore of {self.alias!r} has an unknown format")
        if self._master is None:
            master = self._derive_master(store)
            check = _unb64(store["check"])
            try:
                master.decrypt(check[:NONCE_SIZE], check[NONCE_SIZE:], b"check")
            except InvalidTag:
                raise ConfigurationError(
                    f"keystore of {self.alias!r}: wrong passphrase or key file"
                ) from None
            self._master = master
        self._store = store
        self._cache_stamp = stamp

    def _write(self, store: Mapping[str, Any]) -> None:
        temp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(store, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self._path)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """Reload under the lock, let the caller change the store, write it back atomically."""
        with self._locked():
            self._reload(force=True)
            store = json.loads(json.dumps(self._store))
            yield store
            self._write(store)
            self._reload(force=True)

    # -- key material -----------------------------------------------------------------------------

    def _versions(self, key_id: str) -> list[dict[str, Any]]:
        self._reload()
        entry = self._store["keys"].get(key_id)
        if entry is None:
            raise KeyNotFound(f"no key {key_id!r} in keystore {self.alias!r}")
        return list(entry["versions"])

    def _version(self, ref: KeyRef) -> dict[str, Any]:
        for version in self._versions(ref.key_id):
            if version["version"] == ref.version:
                return version
        raise KeyNotFound(f"no version {ref.version} of key {ref.key_id!r}")

    def _secret(self, ref: KeyRef, version: Mapping[str, Any]) -> bytes:
        cached = self._material.get((ref.key_id, ref.version))
        if cached is not None:
            return cached
        if version.get("material") is None:
            raise KeyDestroyed(f"key {ref} was destroyed")
        assert self._master is not None  # noqa: S101  (set by _reload)
        blob = _unb64(version["material"])
        aad = json.dumps([ref.key_id, ref.version, version["purpose"]]).encode()
        try:
            material = self._master.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise KeyBackendError(f"keystore entry {ref} does not authenticate") from None
        self._material[(ref.key_id, ref.version)] = material
        return material

    def _new_version(self, key_id: str, number: int, purpose: KeyPurpose) -> dict[str, Any]:
        assert self._master is not None  # noqa: S101
        public_pem = None
        if purpose == KeyPurpose.SIGN:
            private = ec.generate_private_key(ec.SECP256R1())
            material = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            public_der = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            public_pem = (
                private.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode("ascii")
            )
            fingerprint = hashlib.sha256(public_der).hexdigest()
        else:
            material = secrets.token_bytes(32)
            fingerprint = hmac.new(material, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()
        nonce = os.urandom(NONCE_SIZE)
        aad = json.dumps([key_id, number, str(purpose)]).encode()
        now = _now()
        return {
            "version": number,
            "purpose": str(purpose),
            "state": str(KeyState.ACTIVE),
            "created": now,
            "activated": now,
            "deactivated": None,
            "destroyed": None,
            "material": _b64(nonce + self._master.encrypt(nonce, material, aad)),
            "fingerprint": fingerprint,
            "public_key": public_pem,
        }

    def _primary(self, key_id: str, purpose: KeyPurpose) -> tuple[KeyRef, dict[str, Any]]:
        versions = self._versions(key_id)
        active = [v for v in versions if v["state"] == KeyState.ACTIVE]
        if not active:
            raise KeyStateError(f"key {key_id!r} has no active version")
        version = max(active, key=lambda v: v["version"])
        if version["purpose"] != purpose:
            raise KeyStateError(f"key {key_id!r} is not a {purpose} key")
        return KeyRef(key_id, version["version"]), version

    # -- hooks ------------------------------------------------------------------------------------

    def _create_key(self, purpose: KeyPurpose) -> KeyRef:
        key_id = f"local-{uuid.uuid4().hex}"
        with self._changing() as store:
            store["keys"][key_id] = {
                "purpose": str(purpose),
                "versions": [self._new_version(key_id, 1, purpose)],
            }
        return KeyRef(key_id, 1)

    def _rotate(self, key_id: str) -> KeyRef:
        with self._changing() as store:
            entry = store["keys"].get(key_id)
            if entry is None:
                raise KeyNotFound(f"no key {key_id!r} in keystore {self.alias!r}")
            number = max(v["version"] for v in entry["versions"]) + 1
            entry["versions"].append(
                self._new_version(key_id, number, KeyPurpose(entry["purpose"]))
            )
        return KeyRef(key_id, number)

    def _wrap(self, key_id: str, dek: bytes, context: dict[str, str]) -> WrappedKey:
        ref, version = self._primary(key_id, KeyPurpose.WRAP)
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(self._secret(ref, version)).encrypt(
            nonce, dek, wrap_aad(ref, MECHANISM, context)
        )
        return WrappedKey(
            backend=self.kind, key=ref, mechanism=MECHANISM, ciphertext=nonce + sealed
        )

    def _unwrap(self, wrapped: WrappedKey, context: dict[str, str]) -> bytes:
        version = self._version(wrapped.key)
        state = KeyState(version["state"])
        if state == KeyState.DESTROYED:
            raise KeyDestroyed(f"key {wrapped.key} was destroyed")
        if state not in UNWRAP_STATES:
            raise KeyStateError(f"key {wrapped.key} is {state}")
        if wrapped.mechanism != MECHANISM or len(wrapped.ciphertext) < NONCE_SIZE + 16:
            raise UnwrapFailed("the wrapped key does not authenticate")
        blob = wrapped.ciphertext
        try:
            return AESGCM(self._secret(wrapped.key, version)).decrypt(
                blob[:NONCE_SIZE], blob[NONCE_SIZE:], wrap_aad(wrapped.key, MECHANISM, context)
            )
        except InvalidTag:
            raise UnwrapFailed("the wrapped key does not authenticate") from None

    def _set_state(self, ref: KeyRef, state: KeyState) -> None:
        with self._changing() as store:
            version = self._find(store, ref)
            if version["state"] == KeyState.DESTROYED:
                raise KeyDestroyed(f"key {ref} was destroyed")
            version["state"] = str(state)
            if state == KeyState.ACTIVE:
                version["activated"] = version["activated"] or _now()
                version["deactivated"] = None
            else:
                version["deactivated"] = version["deactivated"] or _now()

    def _destroy(self, ref: KeyRef) -> None:
        with self._changing() as store:
            version = self._find(store, ref)
            version["state"] = str(KeyState.DESTROYED)
            version["material"] = None
            version["destroyed"] = _now()
            version["deactivated"] = version["deactivated"] or version["destroyed"]
        self._material.pop((ref.key_id, ref.version), None)

    def _find(self, store: Mapping[str, Any], ref: KeyRef) -> dict[str, Any]:
        entry = store["keys"].get(ref.key_id)
        for version in (entry or {}).get("versions", []):
            if version["version"] == ref.version:
                return version  # the live dict inside ``store``
        raise KeyNotFound(f"no key {ref} in keystore {self.alias!r}")

    def _describe(self, key_id: str) -> KeyDescription:
        infos = []
        for version in self._versions(key_id):
            purpose = KeyPurpose(version["purpose"])
            infos.append(
                KeyInfo(
                    ref=KeyRef(key_id, version["version"]),
                    purpose=purpose,
                    algorithm="EC" if purpose == KeyPurpose.SIGN else "AES",
                    size=256,
                    state=KeyState(version["state"]),
                    created=_when(version["created"]),
                    activated=_when(version["activated"]),
                    deactivated=_when(version["deactivated"]),
                    extractable=True,
                    sensitive=False,
                    generated_in_backend=True,
                    fingerprint=version["fingerprint"],
                    destroy_assurance=self.destroy_assurance,
                )
            )
        return KeyDescription(key_id=key_id, backend=self.kind, versions=tuple(infos))

    def _health(self) -> Health:
        self._reload()
        return Health(ok=True, detail=f"keystore with {len(self._store['keys'])} key(s)")

    def _sign(self, key_id: str, data: bytes) -> tuple[KeyRef, bytes]:
        ref, version = self._primary(key_id, KeyPurpose.SIGN)
        private = serialization.load_der_private_key(self._secret(ref, version), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)  # noqa: S101
        return ref, private.sign(data, ec.ECDSA(hashes.SHA256()))

    def _public_key(self, ref: KeyRef) -> bytes:
        version = self._version(ref)
        if version["purpose"] != KeyPurpose.SIGN or not version.get("public_key"):
            raise KeyStateError(f"key {ref} is not a signing key")
        return str(version["public_key"]).encode("ascii")
