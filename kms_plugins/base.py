"""The key-backend base class.

A backend does one job: protect data keys (DEKs) with key-encryption keys (KEKs) that never leave
it. Subclasses implement the ``_hooks``; the public methods here validate what comes in, call the
hooks under a per-process lock, map stray exceptions to this package's errors, and check what
comes out. They are final by convention: override the hooks, never the public methods.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms_plugins.context import canonical_context
from kms_plugins.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    KeyBackendError,
    KeyDestroyed,
    KeyNotFound,
    KeyStateError,
    UnsupportedCapability,
)
from kms_plugins.types import (
    Capability,
    Health,
    KeyDescription,
    KeyPurpose,
    KeyRef,
    KeyState,
    WrappedKey,
)

DEK_SIZES = frozenset({16, 24, 32})
ALLOWED_TRANSITIONS = {
    KeyState.PRE_ACTIVE: frozenset({KeyState.ACTIVE, KeyState.DEACTIVATED, KeyState.COMPROMISED}),
    KeyState.ACTIVE: frozenset({KeyState.DEACTIVATED, KeyState.COMPROMISED}),
    KeyState.DEACTIVATED: frozenset({KeyState.COMPROMISED}),
}
COMMON_OPTIONS = frozenset({"TIMEOUT"})
_T = TypeVar("_T")
_live: weakref.WeakSet[KeyBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_live):
        backend._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class KeyBackend:
    """Base class of key backends.

    Class attributes a subclass sets:
        kind: short name recorded in wrapped keys ("local", "pkcs11", "tpm", "kmip").
        capabilities: what it offers beyond wrap and unwrap (``Capability`` flags).
        production_safe: False for backends that keep keys in software (a system check refuses
            them when ``VAULT_ENV=production``).
        option_names, required_options: the OPTIONS it accepts and needs.
        sensitive_options: OPTIONS never shown in repr, logs or errors (PINs, passphrases).
        destroy_assurance: what ``destroy`` guarantees on this backend, in one sentence.
        serialize_calls: hold a per-process lock around every call (for libraries that are not
            thread-safe, such as python-pkcs11 with SoftHSM, or a TPM's ESAPI context).
    """

    kind: ClassVar[str] = ""
    capabilities: ClassVar[Capability] = Capability.NONE
    production_safe: ClassVar[bool] = False
    option_names: ClassVar[frozenset[str]] = frozenset()
    required_options: ClassVar[frozenset[str]] = frozenset()
    sensitive_options: ClassVar[frozenset[str]] = frozenset()
    destroy_assurance: ClassVar[str] = ""
    serialize_calls: ClassVar[bool] = True
    # Options naming files that must be readable at start-up; None means every ``*_FILE`` option.
    file_options: ClassVar[frozenset[str] | None] = None

    def __init__(self, alias: str, options: Mapping[str, Any] | None = None) -> None:
        """Validate the options; no connection is made until the first call.

        Raises:
            ConfigurationError: an unknown option, or a required one missing.
        """
        given = dict(options or {})
        unknown = set(given) - self.option_names - COMMON_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"key backend {alias!r} ({self.kind}): unknown option(s) {sorted(unknown)}; "
                f"known: {sorted(self.option_names | COMMON_OPTIONS)}"
            )
        missing = self.required_options - set(given)
        if missing:
            raise ConfigurationError(
                f"key backend {alias!r} ({self.kind}): missing option(s) {sorted(missing)}"
            )
        timeout = given.get("TIMEOUT", 10)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(f"key backend {alias!r}: TIMEOUT must be a positive number")
        self.alias = alias
        self.timeout = float(timeout)
        self._options = given
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._open = False
        self._configure(given)
        _live.add(self)

    def config_problems(self) -> list[str]:
        """What is wrong with the configuration, found without connecting (for start-up checks).

        Checks that every file option names a readable file, then the subclass's own checks.
        Messages name options and paths, never their contents.
        """
        names = self.file_options
        if names is None:
            names = frozenset(n for n in self._options if n.endswith("_FILE"))
        problems = []
        for name in sorted(names & set(self._options)):
            path = str(self._options[name])
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                problems.append(f"{name} names {path!r}, which is not a readable file")
        return problems + self._config_problems()

    def _config_problems(self) -> list[str]:
        """Subclass checks for ``config_problems`` (a library path that does not exist, say)."""
        return []

    # -- presentation: sensitive options never appear -------------------------------------------

    def redacted_options(self) -> dict[str, Any]:
        """The options with every sensitive one replaced by ``"***"``."""
        return {k: ("***" if k in self.sensitive_options else v) for k, v in self._options.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r} options={self.redacted_options()!r}>"

    __str__ = __repr__

    # -- connection lifecycle ---------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's handles without closing them, open anew lazily."""
        self._lock = threading.RLock()
        self._pid = os.getpid()
        if self._open:
            self._open = False
            self._after_fork()

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            self._forget_after_fork()
        if not self._open:
            self._connect()
            self._open = True

    def close(self) -> None:
        """Release the connection, session or handles; the next call opens them again."""
        with self._lock:
            if self._open:
                self._open = False
                self._disconnect()

    def _call(self, hook: Callable[..., _T], *args: Any) -> _T:
        lock = self._lock if self.serialize_calls else _NO_LOCK
        with lock:
            try:
                self._ensure_open()
                return hook(*args)
            except KeyBackendError as exc:
                if exc.transient:
                    self._drop_quietly()
                raise
            except (OSError, TimeoutError) as exc:
                self._drop_quietly()
                raise BackendUnavailable(
                    f"key backend {self.alias!r} is unreachable ({type(exc).__name__})"
                ) from exc
            except Exception as exc:
                # A library's own exception: its message may echo inputs, so only its type.
                raise KeyBackendError(
                    f"key backend {self.alias!r} failed ({type(exc).__name__})"
                ) from exc

    def _drop_quietly(self) -> None:
        """After a transient failure, forget the connection so the next call reconnects."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):  # the connection is already broken
                self._disconnect()

    def _require(self, capability: Capability, what: str) -> None:
        if capability not in self.capabilities:
            raise UnsupportedCapability(f"key backend {self.alias!r} ({self.kind}) cannot {what}")

    # -- the public operations --------------------------------------------------------------------

    def create_key(self, *, purpose: KeyPurpose = KeyPurpose.WRAP) -> KeyRef:
        """Generate a key inside the backend, non-extractable, active; return its version 1.

        Raises:
            UnsupportedCapability: a signing key on a backend that cannot sign.
            BackendUnavailable: the backend did not answer (transient).
        """
        if purpose == KeyPurpose.SIGN:
            self._require(Capability.SIGN, "sign")
        ref = self._call(self._create_key, KeyPurpose(purpose))
        if ref.version != 1:
            raise KeyBackendError(f"backend {self.alias!r} created version {ref.version}, not 1")
        return ref

    def rotate(self, key_id: str) -> KeyRef:
        """Add a new version, generated in the backend, which becomes the primary.

        Older versions keep their state: they still unwrap what they protected.

        ``rotate``, ``set_state`` and ``destroy`` change a key's record in the backend and are not
        atomic across processes: callers serialize them per key (the vault holds a lock on the
        key's binding row). Wraps and unwraps need no such care.
        """
        self._require(Capability.ROTATE, "rotate keys")
        ref = self._call(self._rotate, key_id)
        if ref.key_id != key_id or ref.version < 2:
            raise KeyBackendError(
                f"backend {self.alias!r} returned {ref} for a rotation of {key_id}"
            )
        return ref

    def wrap(self, key_id: str, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` under the primary version of ``key_id``, bound to ``context``.

        Raises:
            InvalidInput: the DEK is not 16, 24 or 32 bytes, or the context is malformed.
            KeyNotFound, KeyStateError: no such key, or no active version to wrap with.
            BackendUnavailable: the backend did not answer (transient).
        """
        if not isinstance(dek, bytes | bytearray) or len(dek) not in DEK_SIZES:
            raise InvalidInput("a data key is 16, 24 or 32 bytes")
        canonical_context(context)
        wrapped = self._call(self._wrap, key_id, bytes(dek), dict(context))
        if wrapped.backend != self.kind or wrapped.key.key_id != key_id:
            raise KeyBackendError(f"backend {self.alias!r} wrapped under the wrong key")
        if bytes(dek) in wrapped.ciphertext:
            raise KeyBackendError(f"backend {self.alias!r} returned the data key in clear")
        return wrapped

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Recover a data key, if ``context`` is the one it was wrapped with.

        Raises:
            UnwrapFailed: tampered, another context, another key or version (deliberately vague).
            KeyDestroyed, KeyStateError: the version was destroyed, or is not yet active.
            BackendUnavailable: the backend did not answer (transient).
        """
        if not isinstance(wrapped, WrappedKey) or wrapped.backend != self.kind:
            raise InvalidInput(f"not a key wrapped by a {self.kind} backend")
        canonical_context(context)
        dek = self._call(self._unwrap, wrapped, dict(context))
        if len(dek) not in DEK_SIZES:
            raise KeyBackendError(f"backend {self.alias!r} unwrapped a malformed data key")
        return dek

    def set_state(self, ref: KeyRef, state: KeyState) -> None:
        """Move a version to ACTIVE, DEACTIVATED or COMPROMISED (``destroy`` destroys)."""
        self._require(Capability.STATES, "change key states")
        state = KeyState(state)
        if state in (KeyState.DESTROYED, KeyState.PRE_ACTIVE):
            raise InvalidInput(f"set_state cannot move a key to {state}")
        info = self.describe(ref.key_id).version(ref.version)
        if info is None:
            raise KeyNotFound(f"no version {ref.version} of key {ref.key_id!r}")
        if info.state == KeyState.DESTROYED:
            raise KeyDestroyed(f"key {ref} was destroyed")
        if info.state == state:
            return
        # NIST SP 800-57 and KMIP: states only move forward; a deactivated or compromised key
        # never wraps again (rotate to get a new active version).
        if state not in ALLOWED_TRANSITIONS.get(info.state, frozenset()):
            raise KeyStateError(f"key {ref} cannot go from {info.state} to {state}")
        self._call(self._set_state, ref, state)

    def destroy(self, ref: KeyRef) -> None:
        """Destroy one version's material in the backend; what it protected is lost for good.

        See ``destroy_assurance`` for what this guarantees on a given backend.
        """
        self._require(Capability.DESTROY, "destroy keys")
        self._call(self._destroy, ref)

    def describe(self, key_id: str) -> KeyDescription:
        """Every version of a key with its state and attributes; never key material."""
        description = self._call(self._describe, key_id)
        if any(v.ref.key_id != key_id for v in description.versions):
            raise KeyBackendError(f"backend {self.alias!r} described another key")
        return description

    def health(self) -> Health:
        """Whether the backend answers now; never raises."""
        try:
            return self._call(self._health)
        except KeyBackendError as exc:
            return Health(ok=False, detail=f"{exc.code}: {exc}")
        except Exception as exc:
            return Health(ok=False, detail=f"health check failed ({type(exc).__name__})")

    def sign(self, key_id: str, data: bytes) -> tuple[KeyRef, bytes]:
        """ECDSA P-256 with SHA-256 over ``data`` with the primary version; a DER signature."""
        self._require(Capability.SIGN, "sign")
        return self._call(self._sign, key_id, bytes(data))

    def public_key(self, ref: KeyRef) -> bytes:
        """The PEM SubjectPublicKeyInfo of a signing key version."""
        self._require(Capability.SIGN, "sign")
        return self._call(self._public_key, ref)

    def verify(self, ref: KeyRef, data: bytes, signature: bytes) -> bool:
        """Check a signature locally against the version's public key."""
        public = serialization.load_pem_public_key(self.public_key(ref))
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise KeyBackendError(f"backend {self.alias!r} returned a non-EC public key")
        try:
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    # -- hooks for subclasses ---------------------------------------------------------------------

    def _configure(self, options: Mapping[str, Any]) -> None:
        """Check and keep the options; may raise ConfigurationError. No I/O beyond stat()."""

    def _connect(self) -> None:
        """Open the connection, session or file handles (called lazily, per process)."""

    def _disconnect(self) -> None:
        """Release what ``_connect`` opened."""

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's handles (do not close them)."""

    def _create_key(self, purpose: KeyPurpose) -> KeyRef:
        raise NotImplementedError

    def _rotate(self, key_id: str) -> KeyRef:
        raise NotImplementedError

    def _wrap(self, key_id: str, dek: bytes, context: dict[str, str]) -> WrappedKey:
        raise NotImplementedError

    def _unwrap(self, wrapped: WrappedKey, context: dict[str, str]) -> bytes:
        raise NotImplementedError

    def _set_state(self, ref: KeyRef, state: KeyState) -> None:
        raise NotImplementedError

    def _destroy(self, ref: KeyRef) -> None:
        raise NotImplementedError

    def _describe(self, key_id: str) -> KeyDescription:
        raise NotImplementedError

    def _health(self) -> Health:
        raise NotImplementedError

    def _sign(self, key_id: str, data: bytes) -> tuple[KeyRef, bytes]:
        raise NotImplementedError

    def _public_key(self, ref: KeyRef) -> bytes:
        raise NotImplementedError


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()
