"""The KMIP key backend: KEKs live on a KMIP server, reached over mutual TLS with PyKMIP.

Keys are created on the server (Create) and used there (Encrypt, Decrypt); the vault never
receives their material. The server's operation policy is what keeps it that way: the vault's
client identity may use a KEK but not Get it (see ``kms_plugins.testing.kmip_server.POLICY``).

Wrap (docs/adr/0002-kmip-wrap-construction.md): AES-256-GCM performed by the server with the
version's key, a 96-bit random nonce, and ``wrap_aad(ref, mechanism, context)`` as associated
data. PyKMIP's client helpers cannot carry the AAD or the tag, but its message layer can: the
Encrypt and Decrypt request payloads are built here and sent with ``send_request_payload``. The
tag is checked by the server; a failed check comes back as an operation failure and becomes
``UnwrapFailed``. Wrapped key format: ``nonce (12) || ciphertext (len DEK) || tag (16)``.

Key ids and versions (nothing has to be remembered locally, so a restart finds them again):

* key id: ``cv-kek-<32 hex>``, random, chosen by the vault at ``create_key``;
* version N: one AES-256 symmetric key object on the server with two KMIP Name attributes,
  ``<key id>`` (shared by all versions, to list them) and ``<key id>/v<N>`` (to find one);
* a destroyed version: PyKMIP deletes the object outright, so before destroying it the backend
  registers a tombstone, an Opaque Data object with the same two names and a third,
  ``<key id>/v<N>#fingerprint=<hex>``; it holds no secret, and lets ``unwrap`` say
  ``KeyDestroyed`` (not ``KeyNotFound``) and ``describe`` list the version as destroyed;
* a deactivation or compromise: PyKMIP keeps no Deactivation Date, so an Opaque Data marker
  ``<key id>/v<N>#revoked=<epoch>`` records when (a server's own attribute is preferred).

TLS: PyKMIP's client never passes ``server_hostname`` and its default context checks no
hostname. ``_VerifiedKmipProxy`` replaces its socket set-up with our own ``SSLContext``:
``PROTOCOL_TLS_CLIENT`` (chain verified against CA_FILE, hostname checked against SERVER_NAME),
TLS 1.2 only (the KMIP profiles; PyKMIP's server has no TLS 1.3), ECDHE AEAD suites only, listed
explicitly and checked after ``set_ciphers`` so none is dropped silently, and the negotiated
suite checked again after the handshake.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import Mapping
from typing import Any, ClassVar

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
    Capability,
    Health,
    KeyDescription,
    KeyInfo,
    KeyPurpose,
    KeyRef,
    KeyState,
    WrappedKey,
)

try:  # PyKMIP is an optional dependency (pip install "ciphervault[kmip]").
    from kmip.core import enums as kmip_enums
    from kmip.core import exceptions as kmip_exceptions
    from kmip.core import objects as kmip_objects
    from kmip.core.attributes import CryptographicParameters
    from kmip.core.factories.attributes import AttributeFactory
    from kmip.core.messages import payloads as kmip_payloads
    from kmip.pie import factory as pie_factory
    from kmip.pie import objects as pie_objects
    from kmip.services.kmip_client import KMIPProxy
    from kmip.services.kmip_protocol import RequestLengthMismatch
except ImportError:  # pragma: no cover - reported by _configure
    KMIPProxy = object
    _IMPORT_ERROR: str | None = "PyKMIP is not installed (pip install pykmip)"
else:
    _IMPORT_ERROR = None

MECHANISM = "kmip-aes256-gcm"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_ID_PATTERN = re.compile(r"^cv-kek-[0-9a-f]{32}$")

#: Forward-secret AEAD suites, in OpenSSL names. Listed explicitly: an unknown name would be
#: dropped without a word, so ``client_tls_context`` checks that what OpenSSL kept is exactly
#: a subset of this list and that nothing else is enabled.
ECDHE_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

#: A fixed, domain-separated counter block for the key check value (see ``_fingerprint``).
_FINGERPRINT_LABEL = b"ciphervault/kmip/fingerprint/v1"
_FINGERPRINT_BLOCK = hashlib.sha256(_FINGERPRINT_LABEL + b"\0counter-block").digest()[:16]
_PRIMARY_TTL = 2.0  # seconds a process keeps its idea of a key's primary version
_DESTROYED_NAME = re.compile(r"#fingerprint=([0-9a-f]*)$")
_REVOKED_NAME = re.compile(r"/v([0-9]+)#revoked=([0-9]+)$")

_STATES = {
    "PRE_ACTIVE": KeyState.PRE_ACTIVE,
    "ACTIVE": KeyState.ACTIVE,
    "DEACTIVATED": KeyState.DEACTIVATED,
    "COMPROMISED": KeyState.COMPROMISED,
    "DESTROYED": KeyState.DESTROYED,
    "DESTROYED_COMPROMISED": KeyState.DESTROYED,
}

logger = logging.getLogger(__name__)


def client_tls_context(
    *, ca_file: str, cert_file: str, key_file: str, key_password: str | None = None
) -> ssl.SSLContext:
    """The client side of the KMIP TLS connection.

    Args:
        ca_file: the CA certificate(s) that issued the server certificate; nothing else is
            trusted (not the system store).
        cert_file, key_file: the client certificate and key for mutual TLS.
        key_password: the password of ``key_file``, if it is encrypted.

    Returns:
        A context that verifies the chain and the hostname (pass ``server_hostname``), speaks
        TLS 1.2 only, and offers only ECDHE suites with AEAD ciphers.

    Raises:
        ConfigurationError: a file cannot be loaded, or OpenSSL kept no forward-secret suite.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.set_ciphers(":".join(ECDHE_CIPHERS))
        context.load_verify_locations(cafile=ca_file)
        context.load_cert_chain(cert_file, key_file, password=key_password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"KMIP TLS set-up failed ({type(exc).__name__}: {exc.strerror or exc.args[0]})"
        ) from exc
    enabled = [c for c in context.get_ciphers() if c.get("protocol") == "TLSv1.2"]
    names = {c["name"] for c in enabled}
    if not names or not names <= set(ECDHE_CIPHERS):
        raise ConfigurationError(f"unexpected TLS 1.2 cipher suites enabled: {sorted(names)}")
    if any(c.get("kea") != "kx-ecdhe" or not c.get("aead") for c in enabled):
        raise ConfigurationError("a TLS suite without ECDHE or without AEAD was enabled")
    return context


class _VerifiedKmipProxy(KMIPProxy):
    """PyKMIP's KMIPProxy, with our TLS context, hostname check and a float timeout."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_name: str,
        timeout: float,
    ) -> None:
        self._tls_context = context
        self._server_name = server_name
        self._timeout_seconds = timeout
        super().__init__(
            host=host,
            port=port,
            timeout=max(1, int(timeout)),
            kmip_version=kmip_enums.KMIPVersion.KMIP_1_4,
        )

    def _create_socket(self, sock: Any) -> None:
        # Replaces upstream's: its context never receives server_hostname, so no hostname check.
        sock.settimeout(self._timeout_seconds)
        self.socket = self._tls_context.wrap_socket(
            sock,
            server_side=False,
            server_hostname=self._server_name,
            do_handshake_on_connect=True,
            suppress_ragged_eofs=False,
        )
        self.socket.settimeout(self._timeout_seconds)


class _Refused(Exception):
    """The server answered with an operation failure (internal; mapped by the caller)."""

    def __init__(self, operation: str, reason: Any) -> None:
        super().__init__(f"{operation}: {getattr(reason, 'name', reason)}")
        self.operation = operation
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return bool(self.reason == kmip_enums.ResultReason.ITEM_NOT_FOUND)

    @property
    def denied(self) -> bool:
        return bool(self.reason == kmip_enums.ResultReason.PERMISSION_DENIED)


class KmipKeyBackend(KeyBackend):
    """KEKs on a KMIP server (PyKMIP client), used there and never released to the vault.

    OPTIONS:
        HOST, PORT (default 5696): the KMIP server.
        CA_FILE: the CA that issued the server's certificate (the only trust anchor).
        CERT_FILE, KEY_FILE, KEY_PASSWORD (sensitive, optional): the vault's client certificate;
            its common name is the identity the server's operation policy sees.
        SERVER_NAME: the hostname (or IP) the server's certificate must name; default HOST.
        OPERATION_POLICY_NAME: the server operation policy new keys are created under (PyKMIP
            and other servers that still honour the KMIP 1.x attribute); optional.
        SERVER_REFUSES_GET: true when the server's policy refuses Get of the vault's keys to the
            vault (what makes them non-extractable); ``describe`` reports extractable otherwise,
            unless the server keeps an Extractable attribute of its own. Default false.
        TIMEOUT: seconds for connecting and for each read or write (common option).

    Security properties: keys are generated by the server and used by it; the vault sends the
    DEK and receives a GCM ciphertext bound to key id, version, mechanism and context. The
    server's certificate chain and hostname are verified; TLS 1.2 with ECDHE suites only. One
    connection per process, reopened after fork and after any transport error.
    """

    kind: ClassVar[str] = "kmip"
    capabilities: ClassVar[Capability] = Capability.ROTATE | Capability.STATES | Capability.DESTROY
    production_safe: ClassVar[bool] = True
    option_names: ClassVar[frozenset[str]] = frozenset(
        {
            "HOST",
            "PORT",
            "CA_FILE",
            "CERT_FILE",
            "KEY_FILE",
            "KEY_PASSWORD",
            "SERVER_NAME",
            "OPERATION_POLICY_NAME",
            "SERVER_REFUSES_GET",
        }
    )
    required_options: ClassVar[frozenset[str]] = frozenset(
        {"HOST", "CA_FILE", "CERT_FILE", "KEY_FILE"}
    )
    sensitive_options: ClassVar[frozenset[str]] = frozenset({"KEY_PASSWORD"})
    destroy_assurance: ClassVar[str] = (
        "The KMIP server destroys the key object (PyKMIP deletes it from its database); copies "
        "in the server's backups or replicas are governed by the server operator, not the vault."
    )
    serialize_calls: ClassVar[bool] = True  # one connection per process; PyKMIP is not thread-safe

    # -- configuration and connection -------------------------------------------------------

    def _configure(self, options: Mapping[str, Any]) -> None:
        if _IMPORT_ERROR:
            raise ConfigurationError(f"key backend {self.alias!r}: {_IMPORT_ERROR}")
        host = options["HOST"]
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"key backend {self.alias!r}: HOST must be a hostname")
        port = options.get("PORT", 5696)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"key backend {self.alias!r}: PORT must be a TCP port")
        for name in ("CA_FILE", "CERT_FILE", "KEY_FILE"):
            path = options[name]
            if not isinstance(path, str) or not os.access(path, os.R_OK):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: {name} {path!r} is not a readable file"
                )
        password = options.get("KEY_PASSWORD")
        if password is not None and not isinstance(password, str):
            raise ConfigurationError(f"key backend {self.alias!r}: KEY_PASSWORD must be a string")
        server_name = options.get("SERVER_NAME", host)
        if not isinstance(server_name, str) or not server_name:
            raise ConfigurationError(f"key backend {self.alias!r}: SERVER_NAME must be a name")
        policy = options.get("OPERATION_POLICY_NAME")
        if policy is not None and (not isinstance(policy, str) or not policy):
            raise ConfigurationError(
                f"key backend {self.alias!r}: OPERATION_POLICY_NAME must be a non-empty string"
            )
        refuses_get = options.get("SERVER_REFUSES_GET", False)
        if not isinstance(refuses_get, bool):
            raise ConfigurationError(
                f"key backend {self.alias!r}: SERVER_REFUSES_GET is true/false"
            )
        # KMIP servers rarely keep an Extractable attribute: only the operator can vouch that the
        # server's policy refuses Get of these keys to the vault; describe reports it as told.
        self._refuses_get = refuses_get
        self._host = host
        self._port = port
        self._server_name = server_name
        self._policy_name: str | None = policy
        self._proxy: Any = None
        self._attributes = AttributeFactory()
        self._uids: dict[KeyRef, str] = {}  # version -> server object (immutable until destroy)
        self._versions: dict[str, int] = {}  # server object -> version number
        self._fingerprints: dict[str, str] = {}
        self._primary: dict[str, tuple[float, KeyRef]] = {}
        #: TLS handshakes made by this instance (for tests and metrics: reuse means this stays 1).
        self.handshakes = 0

    def _connect(self) -> None:
        # PyKMIP's protocol logger hex-dumps every message (DEKs included) at DEBUG: never.
        logging.getLogger("kmip.services.kmip_protocol").setLevel(logging.INFO)
        # Its config helper warns that no pykmip.conf exists; we pass everything explicitly.
        logging.getLogger("kmip.core.config_helper").setLevel(logging.ERROR)
        context = client_tls_context(
            ca_file=self._options["CA_FILE"],
            cert_file=self._options["CERT_FILE"],
            key_file=self._options["KEY_FILE"],
            key_password=self._options.get("KEY_PASSWORD"),
        )
        proxy = _VerifiedKmipProxy(
            host=self._host,
            port=self._port,
            context=context,
            server_name=self._server_name,
            timeout=self.timeout,
        )
        try:
            proxy.open()
        except (OSError, ValueError) as exc:
            # ssl.SSLCertVerificationError is both; so is a refused or timed-out connection.
            raise BackendUnavailable(
                f"key backend {self.alias!r}: cannot open a verified TLS connection to "
                f"{self._host}:{self._port} ({type(exc).__name__}: {_reason(exc)})"
            ) from exc
        self.handshakes += 1
        cipher = proxy.socket.cipher()
        if proxy.socket.version() != "TLSv1.2" or not cipher or cipher[0] not in ECDHE_CIPHERS:
            proxy.close()
            raise BackendUnavailable(
                f"key backend {self.alias!r}: the server negotiated {cipher!r}, not ECDHE"
            )
        self._proxy = proxy

    def _disconnect(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.close()

    def _after_fork(self) -> None:
        # The parent's TLS session must not be shut down from here: detach without closing.
        if self._proxy is not None:
            self._proxy.socket = None
        self._proxy = None
        self._primary.clear()

    def tls_session(self) -> dict[str, Any]:
        """The current connection's TLS version, cipher suite and server certificate subject.

        Opens the connection if needed. Raises BackendUnavailable if it cannot.
        """

        def details() -> dict[str, Any]:
            sock = self._proxy.socket
            peer = sock.getpeercert() or {}
            return {
                "version": sock.version(),
                "cipher": sock.cipher()[0],
                "subject": peer.get("subject"),
                "socket_id": id(sock),
            }

        return self._call(details)

    # -- one KMIP request -----------------------------------------------------------------

    def _request(self, operation: Any, payload: Any) -> Any:
        """Send one request on the process's connection; map transport failures.

        Raises:
            _Refused: the server answered with an operation failure.
            BackendUnavailable: the connection broke, timed out, or the reply was unreadable.
        """
        try:
            return self._proxy.send_request_payload(operation, payload)
        except kmip_exceptions.OperationFailure as exc:
            raise _Refused(operation.name, exc.reason) from None
        except (
            OSError,
            EOFError,
            RequestLengthMismatch,
            kmip_exceptions.KmipError,
        ) as exc:
            raise BackendUnavailable(
                f"key backend {self.alias!r}: KMIP {operation.name} failed in transport "
                f"({type(exc).__name__})"
            ) from exc

    def _name(self, value: str, index: int | None = None) -> Any:
        # Name is multi-valued: in a template, every instance after the first needs an index.
        return self._attributes.create_attribute(kmip_enums.AttributeType.NAME, value, index)

    def _locate(self, *names: str, object_type: Any = None, state: Any = None) -> list[str]:
        attributes = [self._name(n) for n in names]
        if object_type is not None:
            attributes.append(
                self._attributes.create_attribute(kmip_enums.AttributeType.OBJECT_TYPE, object_type)
            )
        if state is not None:
            attributes.append(
                self._attributes.create_attribute(kmip_enums.AttributeType.STATE, state)
            )
        response = self._request(
            kmip_enums.Operation.LOCATE, kmip_payloads.LocateRequestPayload(attributes=attributes)
        )
        return list(response.unique_identifiers or [])

    def _get_attributes(self, uid: str, names: list[str] | None = None) -> dict[str, Any]:
        response = self._request(
            kmip_enums.Operation.GET_ATTRIBUTES,
            kmip_payloads.GetAttributesRequestPayload(
                unique_identifier=uid, attribute_names=names or []
            ),
        )
        found: dict[str, Any] = {}
        for attribute in response.attributes or []:
            name = attribute.attribute_name.value
            value = attribute.attribute_value
            if name == "Name":
                found.setdefault("Name", []).append(value.name_value.value)
            else:
                found[name] = getattr(value, "value", value)
        return found

    # -- versions on the server -----------------------------------------------------------

    @staticmethod
    def _check_key_id(key_id: str) -> None:
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
            raise KeyNotFound("no such key on this KMIP backend")

    def _version_uid(self, ref: KeyRef) -> str:
        """The server object of a version.

        Raises:
            KeyDestroyed: a tombstone stands where the version was.
            KeyNotFound: no such version.
        """
        self._check_key_id(ref.key_id)
        uid = self._uids.get(ref)
        if uid is not None:
            return uid
        name = f"{ref.key_id}/v{ref.version}"
        keys = self._locate(name, object_type=kmip_enums.ObjectType.SYMMETRIC_KEY)
        if keys:
            self._uids[ref] = keys[0]
            self._versions[keys[0]] = ref.version
            return keys[0]
        if self._locate(name, object_type=kmip_enums.ObjectType.OPAQUE_DATA):
            raise KeyDestroyed(f"{ref} was destroyed")
        raise KeyNotFound(f"no version {ref} on this KMIP backend")

    def _forget(self, ref: KeyRef) -> None:
        uid = self._uids.pop(ref, None)
        if uid is not None:
            self._versions.pop(uid, None)
            self._fingerprints.pop(uid, None)
        self._primary.pop(ref.key_id, None)

    def _version_of(self, key_id: str, uid: str) -> int | None:
        if uid not in self._versions:
            names = self._get_attributes(uid, ["Name"]).get("Name", [])
            self._versions[uid] = _version_from_names(key_id, names) or 0
        return self._versions[uid] or None

    def _primary_ref(self, key_id: str, *, fresh: bool = False) -> KeyRef:
        self._check_key_id(key_id)
        cached = self._primary.get(key_id)
        if cached and not fresh and time.monotonic() - cached[0] < _PRIMARY_TTL:
            return cached[1]
        active = self._locate(
            key_id,
            object_type=kmip_enums.ObjectType.SYMMETRIC_KEY,
            state=kmip_enums.State.ACTIVE,
        )
        best: tuple[int, str] | None = None
        for uid in active:
            version = self._version_of(key_id, uid)
            if version is not None and (best is None or version > best[0]):
                best = (version, uid)
        if best is None:
            if self._locate(key_id):
                raise KeyStateError(f"key {key_id} has no active version to wrap with")
            raise KeyNotFound(f"no key {key_id} on this KMIP backend")
        ref = KeyRef(key_id, best[0])
        self._uids[ref] = best[1]
        self._primary[key_id] = (time.monotonic(), ref)
        return ref

    def _create_version(self, key_id: str, version: int) -> KeyRef:
        attribute = self._attributes.create_attribute
        template = [
            attribute(
                kmip_enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                kmip_enums.CryptographicAlgorithm.AES,
            ),
            attribute(kmip_enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
            attribute(
                kmip_enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK,
                [
                    kmip_enums.CryptographicUsageMask.ENCRYPT,
                    kmip_enums.CryptographicUsageMask.DECRYPT,
                ],
            ),
            attribute(kmip_enums.AttributeType.SENSITIVE, True),
            self._name(key_id, 0),
            self._name(f"{key_id}/v{version}", 1),
        ]
        if self._policy_name:
            template.append(
                attribute(kmip_enums.AttributeType.OPERATION_POLICY_NAME, self._policy_name)
            )
        created = self._request(
            kmip_enums.Operation.CREATE,
            kmip_payloads.CreateRequestPayload(
                object_type=kmip_enums.ObjectType.SYMMETRIC_KEY,
                template_attribute=kmip_objects.TemplateAttribute(attributes=template),
            ),
        )
        uid = created.unique_identifier
        self._request(
            kmip_enums.Operation.ACTIVATE,
            kmip_payloads.ActivateRequestPayload(
                unique_identifier=_uid_attribute(uid),
            ),
        )
        ref = KeyRef(key_id, version)
        self._uids[ref] = uid
        self._versions[uid] = version
        self._primary.pop(key_id, None)
        return ref

    # -- hooks ------------------------------------------------------------------------------

    def _create_key(self, purpose: KeyPurpose) -> KeyRef:
        key_id = f"cv-kek-{secrets.token_hex(16)}"
        return self._guard(lambda: self._create_version(key_id, 1))

    def _rotate(self, key_id: str) -> KeyRef:
        def rotate() -> KeyRef:
            self._check_key_id(key_id)
            versions = [v for v in (self._version_of(key_id, u) for u in self._locate(key_id)) if v]
            if not versions:
                raise KeyNotFound(f"no key {key_id} on this KMIP backend")
            return self._create_version(key_id, max(versions) + 1)

        return self._guard(rotate)

    def _wrap(self, key_id: str, dek: bytes, context: dict[str, str]) -> WrappedKey:
        def wrap(fresh: bool) -> WrappedKey:
            ref = self._primary_ref(key_id, fresh=fresh)
            nonce = secrets.token_bytes(NONCE_SIZE)
            response = self._request(
                kmip_enums.Operation.ENCRYPT,
                kmip_payloads.EncryptRequestPayload(
                    unique_identifier=self._uids[ref],
                    cryptographic_parameters=_gcm_parameters(),
                    data=dek,
                    iv_counter_nonce=nonce,
                    auth_additional_data=wrap_aad(ref, MECHANISM, context),
                ),
            )
            ciphertext, tag = response.data or b"", response.auth_tag or b""
            if len(ciphertext) != len(dek) or len(tag) != TAG_SIZE:
                raise KeyBackendError(f"key backend {self.alias!r}: malformed GCM output")
            if response.iv_counter_nonce not in (None, nonce):
                raise KeyBackendError(f"key backend {self.alias!r}: the server changed the nonce")
            return WrappedKey(self.kind, ref, MECHANISM, nonce + ciphertext + tag)

        def attempt() -> WrappedKey:
            try:
                return wrap(False)
            except _Refused as exc:
                if not (exc.denied or exc.not_found):
                    raise
            # The cached primary was deactivated or destroyed meanwhile: look again, once.
            self._primary.pop(key_id, None)
            return wrap(True)

        return self._guard(attempt)

    def _unwrap(self, wrapped: WrappedKey, context: dict[str, str]) -> bytes:
        blob = wrapped.ciphertext
        size = len(blob) - NONCE_SIZE - TAG_SIZE
        if wrapped.mechanism != MECHANISM or size not in (16, 24, 32):
            raise UnwrapFailed("the wrapped key did not authenticate")
        ref = wrapped.key
        nonce, ciphertext, tag = blob[:NONCE_SIZE], blob[NONCE_SIZE:-TAG_SIZE], blob[-TAG_SIZE:]

        def unwrap() -> bytes:
            uid = self._version_uid(ref)
            try:
                response = self._request(
                    kmip_enums.Operation.DECRYPT,
                    kmip_payloads.DecryptRequestPayload(
                        unique_identifier=uid,
                        cryptographic_parameters=_gcm_parameters(),
                        data=ciphertext,
                        iv_counter_nonce=nonce,
                        auth_additional_data=wrap_aad(ref, MECHANISM, context),
                        auth_tag=tag,
                    ),
                )
            except _Refused as exc:
                if exc.not_found:
                    self._forget(ref)
                    self._version_uid(ref)  # raises KeyDestroyed or KeyNotFound
                    raise UnwrapFailed("the wrapped key did not authenticate") from None
                if exc.denied:
                    state = self._state_of(uid)
                    raise KeyStateError(
                        f"the KMIP server refused Decrypt with {ref} ({state})"
                    ) from None
                # A failed tag check (and any other refusal of the input): deliberately vague.
                raise UnwrapFailed("the wrapped key did not authenticate") from None
            dek = bytes(response.data or b"")
            if len(dek) != size:
                raise UnwrapFailed("the wrapped key did not authenticate")
            return dek

        return self._guard(unwrap)

    def _state_of(self, uid: str) -> KeyState:
        state = self._get_attributes(uid, ["State"]).get("State")
        return _STATES.get(getattr(state, "name", ""), KeyState.DESTROYED)

    def _revoke(self, uid: str, *, compromised: bool) -> None:
        if compromised:
            reason = kmip_objects.RevocationReason(
                code=kmip_enums.RevocationReasonCode.KEY_COMPROMISE
            )
        else:
            reason = kmip_objects.RevocationReason(
                code=kmip_enums.RevocationReasonCode.CESSATION_OF_OPERATION
            )
        payload = kmip_payloads.RevokeRequestPayload(
            unique_identifier=_uid_attribute(uid), revocation_reason=reason
        )
        if compromised:
            from kmip.core import primitives

            payload.compromise_occurrence_date = primitives.DateTime(
                int(time.time()), kmip_enums.Tags.COMPROMISE_OCCURRENCE_DATE
            )
        self._request(kmip_enums.Operation.REVOKE, payload)

    def _set_state(self, ref: KeyRef, state: KeyState) -> None:
        def set_state() -> None:
            uid = self._version_uid(ref)
            current = self._state_of(uid)
            self._primary.pop(ref.key_id, None)
            if current == state:
                return
            if state == KeyState.ACTIVE and current == KeyState.PRE_ACTIVE:
                self._request(
                    kmip_enums.Operation.ACTIVATE,
                    kmip_payloads.ActivateRequestPayload(unique_identifier=_uid_attribute(uid)),
                )
            elif state == KeyState.DEACTIVATED and current == KeyState.ACTIVE:
                self._revoke(uid, compromised=False)  # Revoke, Cessation of Operation
                self._register_marker(ref, "revoked", str(int(time.time())))
            elif state == KeyState.COMPROMISED and current != KeyState.DESTROYED:
                self._revoke(uid, compromised=True)  # Revoke, Key Compromise
                self._register_marker(ref, "revoked", str(int(time.time())))
            else:
                # KMIP's state machine has no way back to Active from Deactivated/Compromised.
                raise KeyStateError(f"KMIP cannot move {ref} from {current} to {state}")

        self._guard(set_state)

    def _destroy(self, ref: KeyRef) -> None:
        def destroy() -> None:
            try:
                uid = self._version_uid(ref)
            except KeyDestroyed:
                return  # already destroyed: idempotent
            current = self._state_of(uid)
            fingerprint = self._fingerprint(uid, current)
            self._register_tombstone(ref, fingerprint)
            if current == KeyState.ACTIVE:
                self._revoke(uid, compromised=False)
            self._request(
                kmip_enums.Operation.DESTROY,
                kmip_payloads.DestroyRequestPayload(unique_identifier=_uid_attribute(uid)),
            )
            self._forget(ref)

        self._guard(destroy)

    def _register_tombstone(self, ref: KeyRef, fingerprint: str) -> None:
        names = [
            ref.key_id,
            f"{ref.key_id}/v{ref.version}",
            f"{ref.key_id}/v{ref.version}#fingerprint={fingerprint}",
        ]
        self._register_opaque(names)

    def _register_marker(self, ref: KeyRef, what: str, value: str) -> None:
        # PyKMIP keeps no Deactivation Date (and cannot add attributes after Create): record
        # the date in a secret-free Opaque Data object that describe() finds by the key's name.
        self._register_opaque([ref.key_id, f"{ref.key_id}/v{ref.version}#{what}={value}"])

    def _register_opaque(self, names: list[str]) -> None:
        metadata = pie_objects.OpaqueObject(
            b"ciphervault: key metadata, no key material", kmip_enums.OpaqueDataType.NONE
        )
        attributes = [self._name(n, i) for i, n in enumerate(names)]
        if self._policy_name:
            attributes.append(
                self._attributes.create_attribute(
                    kmip_enums.AttributeType.OPERATION_POLICY_NAME, self._policy_name
                )
            )
        self._request(
            kmip_enums.Operation.REGISTER,
            kmip_payloads.RegisterRequestPayload(
                object_type=kmip_enums.ObjectType.OPAQUE_DATA,
                template_attribute=kmip_objects.TemplateAttribute(attributes=attributes),
                managed_object=pie_factory.ObjectFactory().convert(metadata),
            ),
        )

    def _fingerprint(self, uid: str, state: KeyState, digest: Any = None) -> str:
        """A key check value: identifies the key material, reveals nothing of it.

        The server's Digest attribute when it keeps one; otherwise SHA-256 over the AES block
        E_K(B) for a fixed, domain-separated block B (obtained as an AES-CTR decryption of 16
        zero bytes with B as counter block), truncated to 128 bits. Only a one-way hash of one
        block of a PRP leaves the server; the fingerprint is stable across processes.
        """
        if digest is not None:
            value = getattr(getattr(digest, "digest_value", None), "value", None)
            if value:
                return bytes(value).hex()[:32]
        if uid in self._fingerprints:
            return self._fingerprints[uid]
        if state not in (KeyState.ACTIVE, KeyState.DEACTIVATED, KeyState.COMPROMISED):
            return ""
        try:
            response = self._request(
                kmip_enums.Operation.DECRYPT,
                kmip_payloads.DecryptRequestPayload(
                    unique_identifier=uid,
                    cryptographic_parameters=CryptographicParameters(
                        cryptographic_algorithm=kmip_enums.CryptographicAlgorithm.AES,
                        block_cipher_mode=kmip_enums.BlockCipherMode.CTR,
                    ),
                    data=bytes(16),
                    iv_counter_nonce=_FINGERPRINT_BLOCK,
                ),
            )
        except _Refused:
            return ""
        block = bytes(response.data or b"")
        fingerprint = hashlib.sha256(_FINGERPRINT_LABEL + b"\0" + block).hexdigest()[:32]
        self._fingerprints[uid] = fingerprint
        return fingerprint

    def _describe(self, key_id: str) -> KeyDescription:
        def describe() -> KeyDescription:
            self._check_key_id(key_id)
            uids = self._locate(key_id)
            if not uids:
                raise KeyNotFound(f"no key {key_id} on this KMIP backend")
            versions: dict[int, KeyInfo] = {}
            revoked: dict[int, datetime.datetime | None] = {}
            found = [(uid, self._get_attributes(uid)) for uid in uids]
            for _, attrs in found:
                for name in attrs.get("Name", []):
                    if (m := _REVOKED_NAME.search(name)) and name.startswith(key_id + "/"):
                        revoked[int(m.group(1))] = _date(int(m.group(2)))
            for uid, attrs in found:
                names = attrs.get("Name", [])
                version = _version_from_names(key_id, names)
                if version is None:
                    continue
                ref = KeyRef(key_id, version)
                object_type = attrs.get("Object Type")
                if object_type == kmip_enums.ObjectType.OPAQUE_DATA:
                    fingerprint = next(
                        (m.group(1) for n in names if (m := _DESTROYED_NAME.search(n))), ""
                    )
                    versions.setdefault(version, _destroyed_info(ref, fingerprint, self))
                    continue
                state = _STATES.get(getattr(attrs.get("State"), "name", ""), KeyState.DESTROYED)
                algorithm = attrs.get("Cryptographic Algorithm")
                versions[version] = KeyInfo(
                    ref=ref,
                    purpose=KeyPurpose.WRAP,
                    algorithm=getattr(algorithm, "name", "AES"),
                    size=int(attrs.get("Cryptographic Length") or 0),
                    state=state,
                    created=_date(attrs.get("Initial Date")),
                    activated=_date(attrs.get("Activation Date")),
                    deactivated=_date(attrs.get("Deactivation Date")) or revoked.get(version),
                    # A server's own Extractable attribute wins; otherwise only the operator's
                    # SERVER_REFUSES_GET says the material cannot be fetched.
                    extractable=bool(attrs.get("Extractable", not self._refuses_get)),
                    sensitive=bool(attrs.get("Sensitive", True)),
                    generated_in_backend=True,
                    fingerprint=self._fingerprint(uid, state, attrs.get("Digest")),
                    destroy_assurance=self.destroy_assurance,
                )
            return KeyDescription(
                key_id=key_id,
                backend=self.kind,
                versions=tuple(versions[v] for v in sorted(versions)),
            )

        return self._guard(describe)

    def _health(self) -> Health:
        def query() -> Health:
            self._request(
                kmip_enums.Operation.QUERY,
                kmip_payloads.QueryRequestPayload(
                    query_functions=[kmip_enums.QueryFunction.QUERY_OPERATIONS]
                ),
            )
            sock = self._proxy.socket
            return Health(
                ok=True,
                detail=f"{self._host}:{self._port} {sock.version()} {sock.cipher()[0]}",
            )

        return self._guard(query)

    def _guard(self, body: Any) -> Any:
        """Run ``body``; a server refusal that no step mapped becomes a KeyBackendError."""
        try:
            return body()
        except _Refused as exc:
            if exc.not_found:
                raise KeyNotFound(f"key backend {self.alias!r}: {exc}") from None
            if exc.denied:
                raise KeyStateError(
                    f"key backend {self.alias!r}: the KMIP server refused {exc}"
                ) from None
            raise KeyBackendError(f"key backend {self.alias!r}: KMIP {exc}") from None


# -- helpers ------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)[:200]


def _uid_attribute(uid: str) -> Any:
    from kmip.core.attributes import UniqueIdentifier

    return UniqueIdentifier(uid)


def _gcm_parameters() -> Any:
    return CryptographicParameters(
        cryptographic_algorithm=kmip_enums.CryptographicAlgorithm.AES,
        block_cipher_mode=kmip_enums.BlockCipherMode.GCM,
        tag_length=TAG_SIZE,
    )


def _version_from_names(key_id: str, names: list[str]) -> int | None:
    prefix = f"{key_id}/v"
    for name in names:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return int(name[len(prefix) :])
    return None


def _date(value: Any) -> datetime.datetime | None:
    if isinstance(value, int) and value > 0:
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    return None


def _destroyed_info(ref: KeyRef, fingerprint: str, backend: KmipKeyBackend) -> KeyInfo:
    return KeyInfo(
        ref=ref,
        purpose=KeyPurpose.WRAP,
        algorithm="AES",
        size=256,
        state=KeyState.DESTROYED,
        created=None,
        activated=None,
        deactivated=None,
        extractable=False,
        sensitive=True,
        generated_in_backend=True,
        fingerprint=fingerprint,
        destroy_assurance=backend.destroy_assurance,
    )
