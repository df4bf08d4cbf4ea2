"""The PKCS#11 key backend: KEKs live on a hardware security module (or SoftHSM2 in tests).

Any PKCS#11 module works through python-pkcs11. Every key version is its own token object,
generated on the token (``CKA_LOCAL``) as sensitive and non-extractable, so the vault only ever
sees ciphertext and signatures.

Layout on the token (see ``docs/adr/0001-pkcs11-wrap-mechanism.md`` for the mechanism):

- a key is named ``cv-<24 hex digits>``; its id is the RFC 7512 URI
  ``pkcs11:token=<token label>;object=<name>``, percent-encoded;
- version N of it is the object with ``CKA_LABEL`` and ``CKA_ID`` both ``<name>.v<N>`` (an AES-256
  secret key; for a signing key, an EC P-256 private key and its public key);
- the key's metadata (purpose, and each version's state and times) is a private ``CKO_DATA``
  object with ``CKA_LABEL`` ``<name>`` and ``CKA_APPLICATION`` ``ciphervault/key-metadata/v1``
  holding JSON. SoftHSM refuses to modify a data object's ``CKA_VALUE``, so an update writes a new
  object with a higher ``seq`` and then destroys the old one; a reader takes the highest ``seq``
  and removes leftovers. State therefore survives a process restart with no file of ours.

Concurrency: python-pkcs11 initialises modules without locking callbacks, and SoftHSM then
crashes when two threads call it at once. A lock per module path, shared by every backend
instance in the process, wraps every PKCS#11 call (initialise, session open, login, look-ups,
crypto). One logged-in session per token is kept per process and shared by the instances; after
a fork the child forgets it and re-initialises the module before its first call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

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

try:  # python-pkcs11 is an optional dependency (extra "pkcs11")
    import pkcs11 as p11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11 import exceptions as p11e
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
except ImportError:  # pragma: no cover - reported by _configure
    p11 = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MECHANISM = "AES-256-GCM"
METADATA_APPLICATION = "ciphervault/key-metadata/v1"
IV_BYTES = 12
TAG_BYTES = 16
TOKEN_RETRY_DELAYS = (0.02, 0.08, 0.2)
NAME_RE = re.compile(r"^cv-[0-9a-f]{24}$")
# RFC 7512: pk11-pchar = unreserved / pk11-res-avail / pct-encoded.
_URI_SAFE = "-._~:[]@!$'()*+,="
_T = TypeVar("_T")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def key_uri(token_label: str, name: str) -> str:
    """The RFC 7512 URI of a key: ``pkcs11:token=<label>;object=<name>``, percent-encoded.

    Args:
        token_label: the token's CKA label, as configured in TOKEN_LABEL.
        name: the key's object name (``cv-`` and 24 hex digits).

    Returns:
        The URI, which is the key id this backend hands out.
    """
    token = urllib.parse.quote(token_label, safe=_URI_SAFE)
    obj = urllib.parse.quote(name, safe=_URI_SAFE)
    return f"pkcs11:token={token};object={obj}"


def parse_key_uri(uri: str) -> dict[str, str]:
    """The path attributes of a ``pkcs11:`` URI, percent-decoded.

    Args:
        uri: an RFC 7512 URI.

    Returns:
        A mapping of attribute names (``token``, ``object``, ...) to their decoded values.

    Raises:
        KeyNotFound: the string is not a ``pkcs11:`` URI or repeats an attribute.
    """
    if not isinstance(uri, str) or not uri.startswith("pkcs11:"):
        raise KeyNotFound("not a pkcs11: key id")
    path = uri[len("pkcs11:") :].split("?", 1)[0]
    attributes: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, sep, value = part.partition("=")
        if not sep or name in attributes:
            raise KeyNotFound("malformed pkcs11: key id")
        try:
            attributes[name] = urllib.parse.unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise KeyNotFound("malformed pkcs11: key id") from None
    return attributes


# -- one shared state per PKCS#11 module per process ----------------------------------------------


class _Stale(Exception):
    """The token or session stopped answering: re-initialise the module and retry once."""


class _HandleGone(Exception):
    """A cached object handle is no longer valid (replaced or destroyed): look it up again."""


@dataclass
class _TokenState:
    """The process's logged-in session on one token, and the handles found through it."""

    token: Any
    session: Any
    keys: dict[tuple[str, int, int], Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class _Module:
    """One PKCS#11 library in this process: its lock, and its sessions by token label."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.stale = False
        self.lib: Any = None
        self.tokens: dict[str, _TokenState] = {}
        self.users: dict[str, set[int]] = {}

    def forget(self) -> None:
        """Drop every session and handle without closing them; re-initialise on next use."""
        self.tokens.clear()
        self.stale = True

    def library(self) -> Any:
        """The initialised library (re-initialised when stale). Call with ``lock`` held."""
        if self.lib is None:
            self.lib = p11.lib(self.path)
            self.stale = False
        if self.stale:
            self.tokens.clear()
            # Not initialised in this process (after a fork, or a failed re-init): fine.
            with contextlib.suppress(p11e.PKCS11Error):
                self.lib.finalize()
            self.lib.initialize()
            self.stale = False
        elif not self.lib.initialized:
            self.lib.initialize()
        return self.lib


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _module(path: str) -> _Module:
    # One entry per library file, however it is named: two names for one library would mean two
    # locks around one non-thread-safe module.
    path = os.path.realpath(path)
    with _modules_lock:
        module = _modules.get(path)
        if module is None:
            module = _modules[path] = _Module(path)
        return module


def _before_fork() -> None:
    # Hold every module lock across fork() so that no PKCS#11 call is half done in the child.
    _modules_lock.acquire()
    for module in _modules.values():
        module.lock.acquire()


def _after_fork_in_parent() -> None:
    for module in _modules.values():
        module.lock.release()
    _modules_lock.release()


def _after_fork_in_child() -> None:
    global _modules_lock
    _modules_lock = threading.Lock()
    for module in _modules.values():
        module.lock = threading.RLock()
        module.users.clear()
        module.forget()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def forget_module_state(path: str) -> None:
    """Make the next call through ``path`` re-initialise the module (C_Finalize, C_Initialize).

    For tests and tools that change what the module sees (SoftHSM reads ``SOFTHSM2_CONF`` and
    scans its token directory only at C_Initialize). Sessions of this process are dropped; backend
    instances log in again on their next call.

    Args:
        path: the MODULE path, as configured.
    """
    module = _module(path)
    with module.lock:
        module.forget()


# -- the backend ----------------------------------------------------------------------------------


@dataclass
class _Metadata:
    handle: Any
    seq: int
    body: dict[str, Any]

    @property
    def purpose(self) -> KeyPurpose:
        return KeyPurpose(self.body["purpose"])

    def versions(self) -> dict[int, dict[str, Any]]:
        return {int(v["version"]): v for v in self.body["versions"]}


class Pkcs11KeyBackend(KeyBackend):
    """Keys on a PKCS#11 token: AES-256 KEKs (wrap by AES-GCM) and EC P-256 signing keys.

    OPTIONS:
        MODULE: path to the PKCS#11 library (``/usr/lib/softhsm/libsofthsm2.so``).
        TOKEN_LABEL: the label of the token holding the keys.
        PIN or PIN_FILE: the user PIN, or a file holding it (read at connect; trailing newline
            ignored). Exactly one of the two. The PIN never appears in a repr, log or error.
        TIMEOUT: accepted for uniformity; the module runs in-process.

    Security properties: every key is generated on the token with CKA_TOKEN, CKA_PRIVATE,
    CKA_SENSITIVE true and CKA_EXTRACTABLE, CKA_MODIFIABLE false; AES keys may only encrypt and
    decrypt, EC keys only sign. Wrapped keys are AES-256-GCM ciphertexts whose associated data
    binds the key version, the mechanism and the encryption context.
    """

    kind: ClassVar[str] = "pkcs11"
    capabilities: ClassVar[Capability] = (
        Capability.ROTATE | Capability.STATES | Capability.DESTROY | Capability.SIGN
    )
    production_safe: ClassVar[bool] = True  # an HSM; SoftHSM itself keeps keys in files
    option_names: ClassVar[frozenset[str]] = frozenset({"MODULE", "TOKEN_LABEL", "PIN", "PIN_FILE"})
    required_options: ClassVar[frozenset[str]] = frozenset({"MODULE", "TOKEN_LABEL"})
    sensitive_options: ClassVar[frozenset[str]] = frozenset({"PIN"})
    destroy_assurance: ClassVar[str] = (
        "The key object is destroyed on the token (C_DestroyObject); the token's own backups, "
        "and with SoftHSM any copy of its token directory, may still hold it."
    )

    # -- configuration ----------------------------------------------------------------------------

    def _configure(self, options: Mapping[str, Any]) -> None:
        if p11 is None:
            raise ConfigurationError(
                f"key backend {self.alias!r} (pkcs11) needs python-pkcs11: "
                "pip install 'ciphervault[pkcs11]'"
            )
        module = options["MODULE"]
        label = options["TOKEN_LABEL"]
        if not isinstance(module, str) or not module:
            raise ConfigurationError(f"key backend {self.alias!r}: MODULE must be a path")
        if not os.path.isfile(module):
            raise ConfigurationError(f"key backend {self.alias!r}: MODULE {module!r} is not a file")
        if not isinstance(label, str) or not label or len(label.encode()) > 32:
            raise ConfigurationError(
                f"key backend {self.alias!r}: TOKEN_LABEL must be 1 to 32 bytes of text"
            )
        if ("PIN" in options) == ("PIN_FILE" in options):
            raise ConfigurationError(
                f"key backend {self.alias!r}: give exactly one of PIN and PIN_FILE"
            )
        if "PIN" in options and (not isinstance(options["PIN"], str) or not options["PIN"]):
            raise ConfigurationError(f"key backend {self.alias!r}: PIN must be a non-empty string")
        pin_file = options.get("PIN_FILE")
        if pin_file is not None:
            if not isinstance(pin_file, str) or not pin_file:
                raise ConfigurationError(f"key backend {self.alias!r}: PIN_FILE must be a path")
            try:
                mode = os.stat(pin_file).st_mode
            except OSError as exc:
                raise ConfigurationError(
                    f"key backend {self.alias!r}: PIN_FILE {pin_file!r} cannot be read "
                    f"({type(exc).__name__})"
                ) from None
            if not stat.S_ISREG(mode):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: PIN_FILE {pin_file!r} is not a file"
                )
        self._module_path = module
        self._token_label = label
        self._pin: str | None = None
        self._pin_refused = False
        self._module_state = _module(module)

    def _read_pin(self) -> str:
        if "PIN" in self._options:
            return str(self._options["PIN"])
        path = str(self._options["PIN_FILE"])
        try:
            with open(path, encoding="utf-8") as handle:
                pin = handle.read().strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            # The path may be named; the contents never are.
            raise ConfigurationError(
                f"key backend {self.alias!r}: PIN_FILE {path!r} cannot be read "
                f"({type(exc).__name__})"
            ) from None
        if not pin:
            raise ConfigurationError(f"key backend {self.alias!r}: PIN_FILE {path!r} is empty")
        return pin

    # -- connection lifecycle ---------------------------------------------------------------------

    def _connect(self) -> None:
        self._pin = self._read_pin()
        self._pin_refused = False
        self._module_state = _module(self._module_path)
        with self._module_state.lock:
            self._module_state.users.setdefault(self._token_label, set()).add(id(self))
        logger.debug(
            "pkcs11 backend %r: using token %r through %s",
            self.alias,
            self._token_label,
            self._module_path,
        )

    def _disconnect(self) -> None:
        module = self._module_state
        with module.lock:
            users = module.users.setdefault(self._token_label, set())
            users.discard(id(self))
            state = module.tokens.get(self._token_label)
            if not users and state is not None:
                # The last user on this token: close the session (which logs the process out).
                del module.tokens[self._token_label]
                try:
                    state.session.close()
                except p11e.PKCS11Error:
                    module.stale = True
        self._pin = None

    def _after_fork(self) -> None:
        # The module-level fork hook already forgot the parent's sessions.
        self._pin = None

    def _find_token(self) -> Any:
        """Our token, re-initialising the module and retrying briefly if it is not seen.

        SoftHSM rewrites a token's files when another process logs in; a process initialising at
        that moment may not see the token. A few short retries (at most about 0.3 s) absorb that
        without hiding a real outage for long.
        """
        module = self._module_state
        for delay in (*TOKEN_RETRY_DELAYS, None):
            try:
                return module.library().get_token(token_label=self._token_label)
            except p11e.MultipleTokensReturned:
                raise ConfigurationError(
                    f"key backend {self.alias!r}: several tokens are labelled {self._token_label!r}"
                ) from None
            except p11e.PKCS11Error as exc:
                module.stale = True
                if delay is not None:
                    time.sleep(delay)
                    continue
                if isinstance(exc, p11e.NoSuchToken):
                    raise BackendUnavailable(
                        f"key backend {self.alias!r}: token {self._token_label!r} is not present"
                    ) from None
                raise BackendUnavailable(
                    f"key backend {self.alias!r}: the PKCS#11 module failed ({type(exc).__name__})"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _token_state(self) -> _TokenState:
        """The logged-in session on our token, opened if need be. Call with the module lock."""
        module = self._module_state
        state = module.tokens.get(self._token_label)
        if state is not None:
            return state
        if self._pin_refused:
            # Never try a refused PIN again: real HSMs lock the user after a few failures.
            raise ConfigurationError(
                f"key backend {self.alias!r}: the token refused the PIN; fix it and reconnect"
            )
        token = self._find_token()
        pin = self._pin if self._pin is not None else self._read_pin()
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                # Login belongs to the application: someone in this process already logged in.
                session = token.open(rw=True)
        except (
            p11e.PinIncorrect,
            p11e.PinInvalid,
            p11e.PinLenRange,
            p11e.PinExpired,
            p11e.PinLocked,
            p11e.UserPinNotInitialized,
        ) as exc:
            self._pin_refused = True
            raise ConfigurationError(
                f"key backend {self.alias!r}: the token refused the PIN ({type(exc).__name__})"
            ) from None
        except p11e.PKCS11Error as exc:
            module.stale = True
            raise BackendUnavailable(
                f"key backend {self.alias!r}: cannot open a session on {self._token_label!r} "
                f"({type(exc).__name__})"
            ) from exc
        state = module.tokens[self._token_label] = _TokenState(token=token, session=session)
        return state

    def _run(self, operation: Callable[[_TokenState], _T]) -> _T:
        """Run ``operation`` under the module lock, re-initialising once if the token broke."""
        module = self._module_state
        with module.lock:
            for attempt in range(2):
                state = self._token_state()
                try:
                    return operation(state)
                except _HandleGone:
                    state.keys.clear()
                    state.metadata.clear()
                except _Stale:
                    module.forget()
                if attempt:
                    break
            raise BackendUnavailable(
                f"key backend {self.alias!r}: token {self._token_label!r} stopped answering"
            )

    def _probe(self, state: _TokenState) -> None:
        """Raise _Stale unless the token answers C_GetTokenInfo with our label."""
        try:
            info = state.token.slot.get_token()
        except p11e.PKCS11Error:
            raise _Stale from None
        if info.label != self._token_label:
            raise _Stale

    def _failed(self, state: _TokenState, exc: Exception) -> None:
        """Classify a PKCS#11 error: raise _Stale or _HandleGone, or return if the token is fine."""
        if isinstance(
            exc,
            p11e.SessionHandleInvalid
            | p11e.SessionClosed
            | p11e.DeviceRemoved
            | p11e.TokenNotPresent
            | p11e.TokenNotRecognised
            | p11e.UserNotLoggedIn
            | p11e.DeviceError,
        ):
            raise _Stale from exc
        self._probe(state)
        if isinstance(exc, p11e.ObjectHandleInvalid | p11e.KeyHandleInvalid):
            raise _HandleGone from exc

    def _refused(self, state: _TokenState, exc: Exception, what: str) -> NoReturn:
        self._failed(state, exc)
        raise KeyBackendError(
            f"key backend {self.alias!r}: the token refused to {what} ({type(exc).__name__})"
        ) from exc

    # -- names, metadata and objects on the token -------------------------------------------------

    def _name_of(self, key_id: str) -> str:
        attributes = parse_key_uri(key_id)
        name = attributes.get("object", "")
        if attributes.get("token") != self._token_label or not NAME_RE.match(name):
            raise KeyNotFound(f"key backend {self.alias!r} has no key {key_id!r}")
        return name

    @staticmethod
    def _version_label(name: str, version: int) -> str:
        return f"{name}.v{version}"

    def _metadata(self, state: _TokenState, name: str, key_id: str) -> _Metadata:
        """The key's metadata, from the cached object or a fresh look-up."""
        handle = state.metadata.get(name)
        if handle is not None:
            try:
                return self._decode_metadata(handle, handle[Attribute.VALUE])
            except (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid) as exc:
                state.metadata.pop(name, None)
                self._failed(state, exc)  # raises _Stale if the token is gone
            except p11e.PKCS11Error as exc:
                self._refused(state, exc, "read key metadata")
        try:
            found = list(
                state.session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.LABEL: name,
                        Attribute.APPLICATION: METADATA_APPLICATION,
                    }
                )
            )
            records = [self._decode_metadata(obj, obj[Attribute.VALUE]) for obj in found]
        except p11e.PKCS11Error as exc:
            self._refused(state, exc, "look up key metadata")
        if not records:
            self._probe(state)  # SoftHSM answers an empty search when its directory is gone
            raise KeyNotFound(f"key backend {self.alias!r} has no key {key_id!r}")
        records.sort(key=lambda record: record.seq)
        current = records[-1]
        for leftover in records[:-1]:  # an update interrupted between write and clean-up
            with contextlib.suppress(p11e.PKCS11Error):
                leftover.handle.destroy()
        state.metadata[name] = current.handle
        return current

    def _decode_metadata(self, handle: Any, value: bytes) -> _Metadata:
        try:
            body = json.loads(value)
            return _Metadata(handle=handle, seq=int(body["seq"]), body=body)
        except (ValueError, KeyError, TypeError):
            raise KeyBackendError(
                f"key backend {self.alias!r}: a key's metadata object is corrupt"
            ) from None

    def _write_metadata(
        self, state: _TokenState, name: str, body: dict[str, Any], old: _Metadata | None
    ) -> None:
        """Write a new metadata object (seq + 1), then destroy the old one."""
        body = dict(body, seq=(old.seq + 1) if old else 1, format=1)
        value = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        try:
            handle = state.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.LABEL: name,
                    Attribute.APPLICATION: METADATA_APPLICATION,
                    Attribute.VALUE: value,
                }
            )
        except p11e.PKCS11Error as exc:
            self._refused(state, exc, "store key metadata")
        state.metadata[name] = handle
        if old is not None:
            # Already removed by another process, perhaps; readers ignore a lower seq anyway.
            with contextlib.suppress(p11e.PKCS11Error):
                old.handle.destroy()

    def _object(
        self, state: _TokenState, name: str, version: int, object_class: ObjectClass
    ) -> Any | None:
        """The token object of one version (cached per session), or None if it is not there."""
        cache_key = (name, version, int(object_class))
        cached = state.keys.get(cache_key)
        if cached is not None:
            return cached
        try:
            found = list(
                state.session.get_objects(
                    {
                        Attribute.CLASS: object_class,
                        Attribute.LABEL: self._version_label(name, version),
                    }
                )
            )
        except p11e.PKCS11Error as exc:
            self._refused(state, exc, "look up a key")
        if not found:
            self._probe(state)
            return None
        if len(found) > 1:
            raise KeyBackendError(
                f"key backend {self.alias!r}: several objects on the token are labelled "
                f"{self._version_label(name, version)!r}"
            )
        state.keys[cache_key] = found[0]
        return found[0]

    def _usable(
        self, state: _TokenState, meta: _Metadata, key_id: str, version: int, object_class: Any
    ) -> Any:
        """The object of a version that still has its material, or the right error."""
        record = meta.versions().get(version)
        if record is None:
            raise KeyNotFound(f"key backend {self.alias!r}: {key_id} has no version {version}")
        if record["state"] == KeyState.DESTROYED:
            raise KeyDestroyed(f"{key_id}#v{version} was destroyed")
        obj = self._object(state, meta.body["name"], version, object_class)
        if obj is None:
            raise KeyNotFound(
                f"key backend {self.alias!r}: the object of {key_id}#v{version} is missing "
                "from the token"
            )
        return obj

    @staticmethod
    def _primary(meta: _Metadata, key_id: str) -> int:
        versions = meta.versions()
        active = [n for n, v in versions.items() if v["state"] == KeyState.ACTIVE]
        if not active:
            if all(v["state"] == KeyState.DESTROYED for v in versions.values()):
                raise KeyDestroyed(f"every version of {key_id} was destroyed")
            raise KeyStateError(f"{key_id} has no active version")
        return max(active)

    # -- key generation ---------------------------------------------------------------------------

    def _generate(self, state: _TokenState, purpose: KeyPurpose, name: str, version: int) -> str:
        """Generate one version's key on the token; return its fingerprint."""
        label = self._version_label(name, version)
        common = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
        }
        try:
            if purpose == KeyPurpose.WRAP:
                # PCI-DSS 3.6.1.2, 3.7.1: the KEK is generated inside the HSM and never leaves it.
                key = state.session.generate_key(
                    KeyType.AES,
                    256,
                    id=label.encode(),
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={
                        **common,
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                        Attribute.SIGN: False,
                        Attribute.VERIFY: False,
                        Attribute.DERIVE: False,
                    },
                )
                return self._secret_fingerprint(key)
            parameters = state.session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            public, _private = parameters.generate_keypair(
                id=label.encode(),
                label=label,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.TOKEN: True, Attribute.MODIFIABLE: False},
                private_template={**common, Attribute.DERIVE: False},
            )
            return "sha256:" + hashlib.sha256(encode_ec_public_key(public)).hexdigest()
        except p11e.PKCS11Error as exc:
            self._refused(state, exc, "generate a key")

    @staticmethod
    def _secret_fingerprint(key: Any) -> str:
        """The token's key check value (CKA_CHECK_VALUE: AES-ECB of a zero block, 3 bytes)."""
        try:
            check = key[Attribute.CHECK_VALUE]
        except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive, KeyError):
            check = b""
        if check:
            return "kcv:" + bytes(check).hex()
        # Tokens without CKA_CHECK_VALUE: identify the object, not the material.
        return "object:" + hashlib.sha256(bytes(key[Attribute.ID])).hexdigest()[:16]

    @staticmethod
    def _new_version(version: int, fingerprint: str, now: datetime) -> dict[str, Any]:
        return {
            "version": version,
            "state": str(KeyState.ACTIVE),
            "created": _iso(now),
            "activated": _iso(now),
            "deactivated": None,
            "destroyed": None,
            "fingerprint": fingerprint,
        }

    def _create_key(self, purpose: KeyPurpose) -> KeyRef:
        name = "cv-" + secrets.token_hex(12)
        key_id = key_uri(self._token_label, name)

        def create(state: _TokenState) -> KeyRef:
            fingerprint = self._generate(state, purpose, name, 1)
            body = {
                "name": name,
                "purpose": str(purpose),
                "versions": [self._new_version(1, fingerprint, _now())],
            }
            self._write_metadata(state, name, body, None)
            return KeyRef(key_id, 1)

        ref = self._run(create)
        logger.info("pkcs11 backend %r: created %s key %s", self.alias, purpose, ref)
        return ref

    def _rotate(self, key_id: str) -> KeyRef:
        name = self._name_of(key_id)

        def rotate(state: _TokenState) -> KeyRef:
            meta = self._metadata(state, name, key_id)
            version = max(meta.versions()) + 1
            fingerprint = self._generate(state, meta.purpose, name, version)
            body = dict(meta.body)
            body["versions"] = [
                *meta.body["versions"],
                self._new_version(version, fingerprint, _now()),
            ]
            self._write_metadata(state, name, body, meta)
            return KeyRef(key_id, version)

        ref = self._run(rotate)
        logger.info("pkcs11 backend %r: rotated %s to version %d", self.alias, key_id, ref.version)
        return ref

    # -- wrap and unwrap --------------------------------------------------------------------------

    def _wrap(self, key_id: str, dek: bytes, context: dict[str, str]) -> WrappedKey:
        name = self._name_of(key_id)

        def wrap(state: _TokenState) -> WrappedKey:
            meta = self._metadata(state, name, key_id)
            if meta.purpose != KeyPurpose.WRAP:
                raise KeyStateError(f"{key_id} is a signing key, not a wrapping key")
            version = self._primary(meta, key_id)
            key = self._usable(state, meta, key_id, version, ObjectClass.SECRET_KEY)
            ref = KeyRef(key_id, version)
            iv = os.urandom(IV_BYTES)
            params = p11.GCMParams(iv, wrap_aad(ref, MECHANISM, context), TAG_BYTES * 8)
            try:
                sealed = key.encrypt(dek, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except p11e.PKCS11Error as exc:
                self._refused(state, exc, "encrypt")
            return WrappedKey(self.kind, ref, MECHANISM, iv + bytes(sealed))

        return self._run(wrap)

    def _unwrap(self, wrapped: WrappedKey, context: dict[str, str]) -> bytes:
        ref = wrapped.key
        name = self._name_of(ref.key_id)
        blob = wrapped.ciphertext
        if wrapped.mechanism != MECHANISM or len(blob) - IV_BYTES - TAG_BYTES not in (16, 24, 32):
            raise UnwrapFailed("the wrapped key did not authenticate")

        def unwrap(state: _TokenState) -> bytes:
            # Fast path: a handle cached by an earlier look-up that checked the metadata. Every
            # state but DESTROYED unwraps (this backend never makes PRE_ACTIVE versions), and a
            # version destroyed since then, here or by another process, invalidates the handle.
            key = state.keys.get((name, ref.version, int(ObjectClass.SECRET_KEY)))
            if key is None:
                meta = self._metadata(state, name, ref.key_id)
                if meta.purpose != KeyPurpose.WRAP:
                    raise UnwrapFailed("the wrapped key did not authenticate")
                record = meta.versions().get(ref.version)
                if record is not None and record["state"] not in UNWRAP_STATES | {
                    KeyState.DESTROYED
                }:
                    raise KeyStateError(f"{ref} is {record['state']}")
                key = self._usable(state, meta, ref.key_id, ref.version, ObjectClass.SECRET_KEY)
            params = p11.GCMParams(
                blob[:IV_BYTES], wrap_aad(ref, MECHANISM, context), TAG_BYTES * 8
            )
            try:
                return bytes(
                    key.decrypt(
                        blob[IV_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                    )
                )
            except p11e.PKCS11Error as exc:
                # SoftHSM reports a bad tag as CKR_GENERAL_ERROR: if the token still answers,
                # the ciphertext, context or version was wrong.
                self._failed(state, exc)
                raise UnwrapFailed("the wrapped key did not authenticate") from None

        return self._run(unwrap)

    # -- states and destruction -------------------------------------------------------------------

    def _set_state(self, ref: KeyRef, target: KeyState) -> None:
        name = self._name_of(ref.key_id)

        def set_state(state: _TokenState) -> None:
            meta = self._metadata(state, name, ref.key_id)
            versions = meta.versions()
            record = versions.get(ref.version)
            if record is None:
                raise KeyNotFound(f"{ref.key_id} has no version {ref.version}")
            current = KeyState(record["state"])
            if current == KeyState.DESTROYED:
                raise KeyDestroyed(f"{ref} was destroyed")
            if current == target:
                return
            if target == KeyState.ACTIVE and current == KeyState.COMPROMISED:
                raise KeyStateError(f"{ref} is compromised and cannot be activated again")
            now = _now()
            record = dict(record, state=str(target))
            if target == KeyState.ACTIVE:
                record["activated"] = _iso(now)
                record["deactivated"] = None
            elif record.get("deactivated") is None:
                record["deactivated"] = _iso(now)
            versions[ref.version] = record
            body = dict(meta.body, versions=[versions[n] for n in sorted(versions)])
            self._write_metadata(state, name, body, meta)

        self._run(set_state)
        logger.info("pkcs11 backend %r: %s is now %s", self.alias, ref, target)

    def _destroy(self, ref: KeyRef) -> None:
        name = self._name_of(ref.key_id)

        def destroy(state: _TokenState) -> None:
            meta = self._metadata(state, name, ref.key_id)
            versions = meta.versions()
            record = versions.get(ref.version)
            if record is None:
                raise KeyNotFound(f"{ref.key_id} has no version {ref.version}")
            if record["state"] != KeyState.DESTROYED:
                # Record the destruction first: if we stop half-way, the version is unusable.
                now = _now()
                versions[ref.version] = dict(
                    record,
                    state=str(KeyState.DESTROYED),
                    destroyed=_iso(now),
                    deactivated=record.get("deactivated") or _iso(now),
                )
                body = dict(meta.body, versions=[versions[n] for n in sorted(versions)])
                self._write_metadata(state, name, body, meta)
            # PCI-DSS 3.7.5: the key material is removed from the HSM (C_DestroyObject).
            # A signing key's public half stays: it is not secret, and old signatures verify.
            for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
                obj = self._object(state, name, ref.version, object_class)
                if obj is None:
                    continue
                state.keys.pop((name, ref.version, int(object_class)), None)
                try:
                    obj.destroy()
                except p11e.PKCS11Error as exc:
                    self._refused(state, exc, "destroy a key")

        self._run(destroy)
        logger.info("pkcs11 backend %r: destroyed %s", self.alias, ref)

    # -- description and health -------------------------------------------------------------------

    def _describe(self, key_id: str) -> KeyDescription:
        name = self._name_of(key_id)

        def describe(state: _TokenState) -> KeyDescription:
            meta = self._metadata(state, name, key_id)
            purpose = meta.purpose
            object_class = (
                ObjectClass.SECRET_KEY if purpose == KeyPurpose.WRAP else ObjectClass.PRIVATE_KEY
            )
            infos = []
            for number, record in sorted(meta.versions().items()):
                extractable, sensitive, local = False, True, True
                if record["state"] != KeyState.DESTROYED:
                    obj = self._object(state, name, number, object_class)
                    if obj is None:
                        raise KeyNotFound(
                            f"key backend {self.alias!r}: the object of {key_id}#v{number} is "
                            "missing from the token"
                        )
                    try:
                        # Read back from the token, never assumed: a key that was ever
                        # extractable, or ever not sensitive, is reported as such.
                        extractable = bool(obj[Attribute.EXTRACTABLE]) or not bool(
                            obj[Attribute.NEVER_EXTRACTABLE]
                        )
                        sensitive = bool(obj[Attribute.SENSITIVE]) and bool(
                            obj[Attribute.ALWAYS_SENSITIVE]
                        )
                        local = bool(obj[Attribute.LOCAL])
                    except p11e.PKCS11Error as exc:
                        self._refused(state, exc, "read key attributes")
                infos.append(
                    KeyInfo(
                        ref=KeyRef(key_id, number),
                        purpose=purpose,
                        algorithm="AES" if purpose == KeyPurpose.WRAP else "EC",
                        size=256,
                        state=KeyState(record["state"]),
                        created=_parse_time(record.get("created")),
                        activated=_parse_time(record.get("activated")),
                        deactivated=_parse_time(record.get("deactivated")),
                        extractable=extractable,
                        sensitive=sensitive,
                        generated_in_backend=local,
                        fingerprint=str(record.get("fingerprint", "")),
                        destroy_assurance=self.destroy_assurance,
                    )
                )
            return KeyDescription(key_id=key_id, backend=self.kind, versions=tuple(infos))

        return self._run(describe)

    def _health(self) -> Health:
        def health(state: _TokenState) -> Health:
            self._probe(state)
            return Health(ok=True, detail=f"token {self._token_label!r} answers")

        return self._run(health)

    # -- signing ----------------------------------------------------------------------------------

    def _sign(self, key_id: str, data: bytes) -> tuple[KeyRef, bytes]:
        name = self._name_of(key_id)
        digest = hashlib.sha256(data).digest()

        def sign(state: _TokenState) -> tuple[KeyRef, bytes]:
            meta = self._metadata(state, name, key_id)
            if meta.purpose != KeyPurpose.SIGN:
                raise KeyStateError(f"{key_id} is not a signing key")
            version = self._primary(meta, key_id)
            key = self._usable(state, meta, key_id, version, ObjectClass.PRIVATE_KEY)
            try:
                raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
            except p11e.PKCS11Error as exc:
                self._refused(state, exc, "sign")
            half = len(raw) // 2
            signature = encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )
            return KeyRef(key_id, version), signature

        return self._run(sign)

    def _public_key(self, ref: KeyRef) -> bytes:
        name = self._name_of(ref.key_id)

        def public_key(state: _TokenState) -> bytes:
            meta = self._metadata(state, name, ref.key_id)
            if meta.purpose != KeyPurpose.SIGN:
                raise KeyStateError(f"{ref.key_id} is not a signing key")
            if ref.version not in meta.versions():
                raise KeyNotFound(f"{ref.key_id} has no version {ref.version}")
            # The public half outlives a destroyed version, so old signatures still verify.
            obj = self._object(state, name, ref.version, ObjectClass.PUBLIC_KEY)
            if obj is None:
                raise KeyNotFound(f"the public key of {ref} is missing from the token")
            try:
                der = encode_ec_public_key(obj)
            except p11e.PKCS11Error as exc:
                self._refused(state, exc, "read a public key")
            public = serialization.load_der_public_key(der)
            return public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        return self._run(public_key)
