"""A TPM 2.0 key backend through tpm2-pytss (ESAPI).

Every key version is its own TPM object under a persistent storage primary key (the SRK, at
``PARENT_HANDLE``). The TPM returns each object's private part encrypted under its parent, so the
blobs kept in ``STATE_DIR`` are useless without this TPM and its storage hierarchy.

- A wrapping version (KEK) is an AES-256 restricted decryption key (a storage parent). ``wrap``
  seals the DEK as a keyedhash object under it; the wrapped key is the sealed object's marshalled
  private and public parts. ``unwrap`` loads the KEK and the sealed object, unseals and flushes.
- The encryption context is bound twice (docs/adr/0003-tpm-wrap-and-context-binding.md): the
  sealed object's authValue is a digest of ``wrap_aad(ref, mechanism, context)``, so the TPM
  itself refuses to unseal under another context, and the same digest is sealed beside the DEK
  and compared in constant time after unsealing.
- DEKs cross the TPM connection only inside a salted, parameter-encrypted HMAC session whose salt
  is encrypted to the storage key pinned in ``STATE_DIR`` on first use.
- A signing version is an EC P-256 ECDSA/SHA-256 key under the storage key.
- With ``PCRS`` set (``sha256:0,7``), every version created is bound to those PCRs' values at
  creation: its authPolicy is a ``TPM2_PolicyPCR`` digest and ``userWithAuth`` is clear, so the
  TPM lets it parent sealed DEKs (wrap: ``Create``; unwrap: ``Load``) or sign only in a policy
  session that proves the PCRs still hold those values. Each version's metadata records its
  policy (``pcr_policy``), so versions made with or without ``PCRS`` work whatever the current
  setting. Changed PCRs give ``PcrPolicyMismatch`` (final, not transient).

Connections: ``swtpm:host=H,port=P`` is spoken by a small Python TCTI over a socket with a
deadline (the C swtpm TCTI blocks forever on a frozen peer); other TCTIs (``tabrmd:...``,
``device:/dev/tpmrm0``) are loaded by TCTILdr and polled with the same deadline. A raw swtpm
connection has no resource manager and serves one process only; several processes go through
tpm2-abrmd or ``/dev/tpmrm0``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

# The TSS C libraries log expected failures (a wrong authValue, a missing handle) as errors on
# stderr. Silence ESAPI's and the TCTIs' own logging unless the operator asked for it.
os.environ.setdefault("TSS2_LOG", "esys+none,tcti+none,sys+none,mu+none")

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_SESSION,
    TSS2_RC,
)
from tpm2_pytss.TCTI import PyTCTI
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)

logger = logging.getLogger(__name__)

MECHANISM = "tpm2-seal-aes256kek-v1"
DEFAULT_PARENT_HANDLE = 0x81000101
_BLOB_VERSION = b"\x01"
_PAYLOAD_VERSION = b"\x01"
_AUTH_LABEL = b"ciphervault/tpm/seal-auth/v1\0"
_BIND_LABEL = b"ciphervault/tpm/seal-bind/v1\0"
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")
_TCTI_LAYER = int(TSS2_RC.TCTI_RC_LAYER)
_LAYER_MASK = int(TSS2_RC.RC_LAYER_MASK)
_TPM_TRANSIENT_RCS = frozenset(
    {
        int(TPM2_RC.RETRY),
        int(TPM2_RC.YIELDED),
        int(TPM2_RC.TESTING),
        int(TPM2_RC.NV_RATE),
        int(TPM2_RC.NV_UNAVAILABLE),
        int(TPM2_RC.OBJECT_MEMORY),
        int(TPM2_RC.SESSION_MEMORY),
        int(TPM2_RC.MEMORY),
    }
)

_SEALED_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA
)
_KEK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
_SIGN_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_STORAGE_REQUIRED = (
    TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT
)

# PCRS: "BANK:N[,N...]" joined by "+" for several banks, e.g. "sha256:0,7" or "sha1:0+sha256:7".
_PCR_BANKS: dict[str, TPM2_ALG] = {
    "sha1": TPM2_ALG.SHA1,
    "sha256": TPM2_ALG.SHA256,
    "sha384": TPM2_ALG.SHA384,
    "sha512": TPM2_ALG.SHA512,
}
_PCR_GROUP = re.compile(r"([a-z0-9]+):((?:0|[1-9][0-9]?)(?:,(?:0|[1-9][0-9]?))*)")
_PCR_COUNT = 24  # PCRs 0-23, what the PC Client profile mandates
_POLICY_ATTEMPTS = 3  # a policy session voided by an unrelated PCR change is started again

DESTROY_ASSURANCE = (
    "destroy deletes the version's key blob from STATE_DIR; a copy of that blob (a backup, a "
    "snapshot) loaded into the same TPM can still unwrap until the TPM's storage hierarchy seed "
    "changes (TPM2_Clear or ChangePPS), which destroys every key of that TPM at once"
)


class PcrPolicyMismatch(KeyStateError):
    """The key version is bound to PCR values that the TPM's PCRs no longer hold.

    Final, not transient: the same call fails until the PCRs hold the values they had when the
    version was created (typically: boot the measured configuration the key was made under).
    """

    code = "tpm_pcr_mismatch"


# -- PCR selections -------------------------------------------------------------------------------


def parse_pcrs(spec: object) -> str:
    """Validate a ``PCRS`` value strictly and return its normalized form.

    Syntax: ``BANK:N[,N...]``, several banks joined by ``+``; BANK is sha1, sha256, sha384 or
    sha512, N a PCR index 0-23 in decimal. No spaces, no duplicates; banks and indices are
    sorted in the normal form (``sha256:7,0`` becomes ``sha256:0,7``). Raises ValueError.
    """
    if not isinstance(spec, str):
        raise ValueError("PCRS must be a string such as 'sha256:0,7'")
    if not spec:
        raise ValueError("PCRS is empty (leave it out for no PCR policy)")
    groups: dict[str, tuple[int, ...]] = {}
    for group in spec.split("+"):
        match = _PCR_GROUP.fullmatch(group)
        if match is None:
            raise ValueError(
                f"PCRS: cannot read {group!r}: expected BANK:N[,N...] such as 'sha256:0,7', "
                "banks joined by '+'"
            )
        bank, numbers = match.group(1), match.group(2)
        if bank not in _PCR_BANKS:
            raise ValueError(f"PCRS: unknown bank {bank!r} (one of {', '.join(_PCR_BANKS)})")
        if bank in groups:
            raise ValueError(f"PCRS: bank {bank} is named twice")
        indices = [int(n) for n in numbers.split(",")]
        if len(set(indices)) != len(indices):
            raise ValueError(f"PCRS: a PCR of bank {bank} is named twice")
        if max(indices) >= _PCR_COUNT:
            raise ValueError(f"PCRS: PCR {max(indices)} does not exist (0-{_PCR_COUNT - 1})")
        groups[bank] = tuple(sorted(indices))
    return "+".join(
        f"{bank}:{','.join(map(str, groups[bank]))}" for bank in _PCR_BANKS if bank in groups
    )


def _pcr_selection(pcrs: str) -> TPML_PCR_SELECTION:
    """The TPML_PCR_SELECTION of a normalized PCRS string."""
    return TPML_PCR_SELECTION.parse(parse_pcrs(pcrs))


@dataclass(frozen=True)
class _PcrPolicy:
    """A version's PCR policy: the normalized selection and the authPolicy it yields."""

    pcrs: str
    digest: bytes


# -- templates ------------------------------------------------------------------------------------


def _srk_template() -> TPM2B_PUBLIC:
    """An ECC P-256 storage primary key with AES-256-CFB (the TCG SRK template's shape).

    TPMs require a storage child's symmetric definition to equal its parent's, so an AES-256 KEK
    needs an AES-256 parent: the TCG's own P-256 SRK template (AES-128) cannot be its parent.
    """
    public = TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_KEK_ATTRIBUTES,
    )
    public.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.AES
    public.parameters.eccDetail.symmetric.keyBits.aes = 256
    public.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG.CFB
    public.parameters.eccDetail.scheme.scheme = TPM2_ALG.NULL
    public.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
    public.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
    public.unique.ecc.x = b"\0" * 32
    public.unique.ecc.y = b"\0" * 32
    return TPM2B_PUBLIC(publicArea=public)


def _kek_template() -> TPM2B_PUBLIC:
    """An AES-256-CFB restricted decryption key: a storage parent for sealed DEKs."""
    public = TPMT_PUBLIC(
        type=TPM2_ALG.SYMCIPHER,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_KEK_ATTRIBUTES,
    )
    public.parameters.symDetail.sym.algorithm = TPM2_ALG.AES
    public.parameters.symDetail.sym.keyBits.aes = 256
    public.parameters.symDetail.sym.mode.aes = TPM2_ALG.CFB
    return TPM2B_PUBLIC(publicArea=public)


def _sign_template() -> TPM2B_PUBLIC:
    """An EC P-256 signing key fixed to ECDSA with SHA-256."""
    public = TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_SIGN_ATTRIBUTES,
    )
    public.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    public.parameters.eccDetail.scheme.scheme = TPM2_ALG.ECDSA
    public.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    public.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
    public.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=public)


def _sealed_template() -> TPM2B_PUBLIC:
    """A keyedhash data object (no scheme) that only Unseal can read, with noDA."""
    public = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_SEALED_ATTRIBUTES,
    )
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=public)


def _is_sealed_public(public: TPM2B_PUBLIC) -> bool:
    area = public.publicArea
    return bool(
        int(area.type) == int(TPM2_ALG.KEYEDHASH)
        and int(area.nameAlg) == int(TPM2_ALG.SHA256)
        and int(area.objectAttributes) == int(_SEALED_ATTRIBUTES)
        and int(area.parameters.keyedHashDetail.scheme.scheme) == int(TPM2_ALG.NULL)
        and len(bytes(area.authPolicy)) == 0
    )


def _name_hex(public: TPM2B_PUBLIC) -> str:
    return bytes(public.get_name()).hex()


# -- TCTIs with a deadline -------------------------------------------------------------------------


class _TctiFailure(TSS2_Exception):
    """The TPM connection failed or did not answer before the deadline."""

    def __init__(self, reason: str) -> None:
        super().__init__(TSS2_RC.TCTI_RC_IO_ERROR)
        self.reason = reason


class _DeadlineMixin:
    """A per-operation deadline shared by the TCTIs below; set by the backend before each call."""

    timeout: float
    deadline: float
    failure: str | None

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.failure = "the TPM did not answer in time"
            raise _TctiFailure(self.failure)
        return left


class _SwtpmTcti(PyTCTI, _DeadlineMixin):
    """swtpm's TCP data channel: raw TPM commands, one connection per command, with a deadline.

    The C swtpm TCTI reads without a timeout, so a frozen (SIGSTOPped) swtpm would hang the
    caller forever. This one uses a socket timeout bounded by the operation's deadline.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(max_size=4096, magic=b"CVSWTPM\0")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.failure: str | None = None
        self._sock: socket.socket | None = None

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def do_transmit(self, command: bytes) -> None:
        self._close_socket()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._remaining())
            sock.settimeout(self._remaining())
            sock.sendall(command)
        except _TctiFailure:
            raise
        except OSError as exc:
            self.failure = f"cannot reach the TPM ({type(exc).__name__})"
            raise _TctiFailure(self.failure) from exc
        self._sock = sock

    def _read(self, size: int) -> bytes:
        assert self._sock is not None  # noqa: S101  (transmit always precedes receive)
        chunks = bytearray()
        while len(chunks) < size:
            self._sock.settimeout(self._remaining())
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionResetError("the TPM closed the connection")
            chunks += chunk
        return bytes(chunks)

    def do_receive(self, timeout: int) -> bytes:
        if self._sock is None:
            raise _TctiFailure("receive without a command")
        try:
            header = self._read(10)
            (size,) = struct.unpack(">I", header[2:6])
            if size < 10 or size > self._max_size:
                raise _TctiFailure("malformed response from the TPM")
            return header + self._read(size - 10)
        except _TctiFailure:
            raise
        except (OSError, TimeoutError) as exc:
            self.failure = f"the TPM did not answer ({type(exc).__name__})"
            raise _TctiFailure(self.failure) from exc
        finally:
            self._close_socket()

    def do_finalize(self) -> None:
        self._close_socket()


class _LoadedTcti(PyTCTI, _DeadlineMixin):
    """A TCTI loaded by TCTILdr (tabrmd, device, ...), polled until the operation's deadline.

    tabrmd and the device TCTI honour a receive timeout (they poll); on expiry this raises
    instead of waiting. A TCTI that refuses timeouts is read blocking, and logged once.
    """

    def __init__(self, conf: str, timeout: float) -> None:
        super().__init__(max_size=4096, magic=b"CVLDR\0\0\0")
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.failure: str | None = None
        self.blocking = False
        try:
            self.inner = TCTILdr.parse(conf)
        except TSS2_Exception as exc:
            self.failure = f"cannot open the TCTI ({exc})"
            raise _TctiFailure(self.failure) from exc

    def do_transmit(self, command: bytes) -> None:
        self._remaining()
        try:
            self.inner.transmit(command)
        except TSS2_Exception as exc:
            self.failure = f"cannot reach the TPM ({exc})"
            raise _TctiFailure(self.failure) from exc

    def do_receive(self, timeout: int) -> bytes:
        while True:
            wait = -1 if self.blocking else max(1, int(self._remaining() * 1000))
            try:
                return bytes(self.inner.receive(self._max_size, wait))
            except TSS2_Exception as exc:
                base = int(exc.rc) & ~_LAYER_MASK
                if base == int(TSS2_RC.BASE_RC_TRY_AGAIN):
                    continue
                if base == int(TSS2_RC.BASE_RC_BAD_VALUE) and not self.blocking:
                    logger.warning("this TCTI cannot time out: TPM calls may block")
                    self.blocking = True
                    continue
                self.failure = f"the TPM did not answer ({exc})"
                raise _TctiFailure(self.failure) from exc

    def do_finalize(self) -> None:
        with contextlib.suppress(Exception):
            self.inner.close()


def _parse_tcti(spec: str) -> tuple[str, str]:
    name, _, conf = spec.partition(":")
    return name.strip(), conf.strip()


def _swtpm_address(conf: str) -> tuple[str, int]:
    host, port = "127.0.0.1", 2321
    for item in filter(None, conf.split(",")):
        key, _, value = item.partition("=")
        if key == "host" and value:
            host = value
        elif key == "port" and value.isdigit() and 0 < int(value) < 65536:
            port = int(value)
        else:
            raise ConfigurationError(f"TCTI swtpm: cannot use {item!r} (host=H,port=P)")
    return host, port


# Raw endpoints (no resource manager): every instance of this process talking to one of them
# shares a lock, so that flushing stale objects at connect cannot hit another instance's objects.
_endpoint_locks: dict[str, threading.RLock] = {}
_endpoint_locks_guard = threading.Lock()


def _endpoint_lock(spec: str) -> threading.RLock:
    with _endpoint_locks_guard:
        return _endpoint_locks.setdefault(spec, threading.RLock())


def _after_fork_reset_locks() -> None:
    global _endpoint_locks_guard
    _endpoint_locks.clear()
    _endpoint_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_reset_locks)


# -- raw TPM commands for housekeeping on a raw connection -----------------------------------------

_CAP_HANDLES = 0x00000001
_HANDLE_RANGES = (0x80000000, 0x02000000, 0x03000000)  # transient, loaded and saved sessions


def _raw_command(tcti: PyTCTI, code: int, body: bytes) -> bytes:
    command = struct.pack(">HII", 0x8001, 10 + len(body), code) + body
    tcti.transmit(command)
    response: bytes = tcti.receive(4096)
    (rc,) = struct.unpack(">I", response[6:10])
    if rc != 0:
        raise TSS2_Exception(rc)
    return response[10:]


def _flush_stale_handles(tcti: PyTCTI) -> int:
    """Flush transient objects and sessions left by an abandoned call (raw connections only)."""
    flushed = 0
    for first in _HANDLE_RANGES:
        body = _raw_command(tcti, 0x17A, struct.pack(">III", _CAP_HANDLES, first, 64))
        # moreData(1) capability(4) count(4) handles(4 each)
        (count,) = struct.unpack(">I", body[5:9])
        for index in range(count):
            (handle,) = struct.unpack(">I", body[9 + 4 * index : 13 + 4 * index])
            with contextlib.suppress(TSS2_Exception):
                _raw_command(tcti, 0x165, struct.pack(">I", handle))
                flushed += 1
    return flushed


# -- metadata on disk -----------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync, rename and fsync the directory (0600 files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class _Connection:
    """One ESAPI context with its TCTI and the storage key's handle."""

    tcti: _SwtpmTcti | _LoadedTcti
    esapi: ESAPI
    primary: Any  # ESYS_TR of the persistent storage key


class TpmKeyBackend(KeyBackend):
    """KEKs and signing keys inside a TPM 2.0, reached through tpm2-pytss.

    Options:
        TCTI: ``swtpm:host=127.0.0.1,port=2321`` (a raw swtpm, one process only),
            ``tabrmd:bus_type=session`` or ``tabrmd:bus_name=...`` (through tpm2-abrmd), or
            ``device:/dev/tpmrm0`` (the kernel's resource manager).
        STATE_DIR: where key blobs and per-key metadata live (0700). Blobs are useless without
            this TPM; losing the directory loses the keys.
        PARENT_HANDLE: persistent handle of the storage primary key (default 0x81000101); created
            as an ECC P-256 storage key with AES-256-CFB (the TCG SRK shape, with the AES-256 its
            AES-256 KEKs need) and EvictControl if absent (needs an empty owner
            authorization), then pinned by its Name in STATE_DIR.
        PCRS: optional PCR policy for the versions this instance creates: ``BANK:N[,N...]``,
            several banks joined by ``+`` (``sha256:0,7``; banks sha1, sha256, sha384, sha512;
            PCRs 0-23). Each new KEK or signing version is then usable only while those PCRs hold
            the values they had at its creation (TPM2_PolicyPCR in its authPolicy, userWithAuth
            clear). Checked strictly at start-up; the bank must be active on the TPM (checked at
            creation). Existing versions keep the policy recorded in their metadata, whatever
            this option says now.
        TIMEOUT: seconds any one operation may take before it fails as BackendUnavailable.

    Security properties: KEK private parts exist outside the TPM only encrypted under the
    storage key; DEKs cross the TPM connection only inside a salted, parameter-encrypted session
    whose salt key is pinned; the TPM refuses to unseal under another encryption context; a
    PCR-bound version is usable only in a policy session satisfying its PolicyPCR.

    Raises (besides the base class's): BackendUnavailable when the TPM is unreachable or slower
    than TIMEOUT; ConfigurationError when the storage key is not the pinned one (a cleared TPM)
    or a PCRS bank is not active on the TPM; PcrPolicyMismatch (final) when a PCR-bound version's
    PCRs no longer hold their values, on wrap, unwrap and sign.
    """

    kind = "tpm"
    capabilities = Capability.ROTATE | Capability.STATES | Capability.DESTROY | Capability.SIGN
    production_safe = True
    option_names = frozenset({"TCTI", "STATE_DIR", "PARENT_HANDLE", "PCRS"})
    required_options = frozenset({"TCTI", "STATE_DIR"})
    sensitive_options = frozenset()
    destroy_assurance = DESTROY_ASSURANCE
    serialize_calls = True

    # -- configuration and connection ------------------------------------------------------------

    def _configure(self, options: Mapping[str, Any]) -> None:
        tcti = options["TCTI"]
        if not isinstance(tcti, str) or not tcti.strip():
            raise ConfigurationError(f"key backend {self.alias!r}: TCTI must be a TCTI string")
        self._tcti_spec = tcti.strip()
        name, conf = _parse_tcti(self._tcti_spec)
        self._tcti_name = name
        self._tcti_conf = conf
        if name == "swtpm":
            self._swtpm_address = _swtpm_address(conf)
        elif not name:
            raise ConfigurationError(f"key backend {self.alias!r}: TCTI needs a name")
        # Without a resource manager, objects left by an abandoned call would fill the TPM's few
        # slots: such connections flush stale handles on connect, under a process-wide lock.
        self._raw = name in {"swtpm", "mssim"} or (name == "device" and "tpmrm" not in conf)
        state_dir = options["STATE_DIR"]
        if not isinstance(state_dir, str) or not state_dir:
            raise ConfigurationError(f"key backend {self.alias!r}: STATE_DIR must be a path")
        self._state_dir = Path(state_dir)
        if self._state_dir.exists() and not self._state_dir.is_dir():
            raise ConfigurationError(f"key backend {self.alias!r}: STATE_DIR is not a directory")
        handle = options.get("PARENT_HANDLE", DEFAULT_PARENT_HANDLE)
        if isinstance(handle, str):
            try:
                handle = int(handle, 0)
            except ValueError:
                handle = -1
        if not isinstance(handle, int) or not 0x81000000 <= handle <= 0x817FFFFF:
            raise ConfigurationError(
                f"key backend {self.alias!r}: PARENT_HANDLE must be a persistent owner handle "
                "(0x81000000-0x817FFFFF)"
            )
        self._parent_handle = handle
        self._pcrs: str | None = None
        if options.get("PCRS") is not None:
            try:
                self._pcrs = parse_pcrs(options["PCRS"])
            except ValueError as exc:
                raise ConfigurationError(f"key backend {self.alias!r}: {exc}") from None
        self._conn: _Connection | None = None

    def _connect(self) -> None:
        # The TPM is reached lazily (``_tpm``): describe, set_state and destroy need only files.
        self._conn = None

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.esapi.close()
            with contextlib.suppress(Exception):
                conn.tcti.finalize()

    def _after_fork(self) -> None:
        # The parent's ESAPI context and socket belong to the parent: forget, never close them.
        self._conn = None

    def _new_tcti(self) -> _SwtpmTcti | _LoadedTcti:
        if self._tcti_name == "swtpm":
            host, port = self._swtpm_address
            return _SwtpmTcti(host, port, self.timeout)
        return _LoadedTcti(self._tcti_spec, self.timeout)

    @contextlib.contextmanager
    def _tpm(self) -> Iterator[_Connection]:
        """The connection, opened if needed, with a fresh deadline; maps TSS errors."""
        lock = _endpoint_lock(self._tcti_spec) if self._raw else contextlib.nullcontext()
        with lock:
            try:
                if self._conn is None:
                    self._conn = self._open_connection()
                conn = self._conn
                conn.tcti.deadline = time.monotonic() + self.timeout
                conn.tcti.failure = None
                yield conn
            except TSS2_Exception as exc:
                raise self._map_error(exc) from exc

    def _open_connection(self) -> _Connection:
        tcti = self._new_tcti()
        tcti.deadline = time.monotonic() + self.timeout
        try:
            if self._raw:
                flushed = _flush_stale_handles(tcti)
                if flushed:
                    logger.info("tpm %r: flushed %d stale handle(s)", self.alias, flushed)
            esapi = ESAPI(tcti)
        except BaseException:
            with contextlib.suppress(Exception):
                tcti.finalize()
            raise
        conn = _Connection(tcti=tcti, esapi=esapi, primary=None)
        try:
            conn.primary = self._storage_key(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                esapi.close()
            with contextlib.suppress(Exception):
                tcti.finalize()
            raise
        return conn

    def _map_error(self, exc: TSS2_Exception) -> KeyBackendError:
        conn = self._conn
        rc = int(exc.rc)
        if (
            isinstance(exc, _TctiFailure)
            or (conn is not None and conn.tcti.failure)
            or (rc & _LAYER_MASK) == _TCTI_LAYER
        ):
            return BackendUnavailable(f"key backend {self.alias!r}: the TPM is unavailable")
        if (rc & _LAYER_MASK) == 0 and int(exc.error) in _TPM_TRANSIENT_RCS:
            return BackendUnavailable(f"key backend {self.alias!r}: the TPM is busy ({rc:#x})")
        return KeyBackendError(f"key backend {self.alias!r}: TPM error {rc:#x} ({exc})")

    def _storage_key(self, conn: _Connection) -> Any:
        """The persistent storage key, created if absent, checked against the pinned Name."""
        esapi = conn.esapi
        pin_path = self._state_dir / "storage-key.json"
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._file_lock(self._state_dir / ".storage-key.lock"):
            pinned = None
            if pin_path.exists():
                pinned = json.loads(pin_path.read_text())
                if pinned.get("handle") != f"{self._parent_handle:#010x}":
                    raise ConfigurationError(
                        f"key backend {self.alias!r}: STATE_DIR was made with storage key "
                        f"{pinned.get('handle')}, not PARENT_HANDLE {self._parent_handle:#010x}"
                    )
            try:
                primary = esapi.tr_from_tpmpublic(self._parent_handle)
            except TSS2_Exception as exc:
                if int(exc.error) != int(TPM2_RC.HANDLE) or isinstance(exc, _TctiFailure):
                    raise
                primary = self._create_storage_key(esapi, pinned)
            public, name, _ = esapi.read_public(primary)
            attributes = int(public.publicArea.objectAttributes)
            if attributes & int(_STORAGE_REQUIRED) != int(_STORAGE_REQUIRED):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: {self._parent_handle:#010x} is not a storage key"
                )
            area = public.publicArea
            if int(area.type) not in (int(TPM2_ALG.ECC), int(TPM2_ALG.RSA)):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: the storage key cannot salt sessions"
                )
            detail = (
                area.parameters.eccDetail
                if int(area.type) == int(TPM2_ALG.ECC)
                else (area.parameters.rsaDetail)
            )
            if (
                int(detail.symmetric.algorithm) != int(TPM2_ALG.AES)
                or int(detail.symmetric.keyBits.aes) != 256
                or int(detail.symmetric.mode.aes) != int(TPM2_ALG.CFB)
            ):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: the storage key at {self._parent_handle:#010x} "
                    "is not AES-256-CFB; choose a free PARENT_HANDLE to have one created"
                )
            name_hex = bytes(name).hex()
            if pinned is None:
                _write_atomic(
                    pin_path,
                    json.dumps(
                        {"handle": f"{self._parent_handle:#010x}", "name": name_hex}
                    ).encode(),
                )
            elif not hmac.compare_digest(pinned.get("name", ""), name_hex):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: the storage key at {self._parent_handle:#010x} "
                    "is not the one this STATE_DIR's keys were made under (cleared or another TPM)"
                )
        return primary

    def _create_storage_key(self, esapi: ESAPI, pinned: dict[str, str] | None) -> Any:
        transient, public, *_ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), _srk_template(), ESYS_TR.OWNER
        )
        try:
            if pinned is not None and _name_hex(public) != pinned.get("name"):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: the storage hierarchy changed since this "
                    "STATE_DIR's keys were made (TPM2_Clear?): they cannot be recovered"
                )
            logger.info(
                "tpm %r: persisting a storage key at %#010x", self.alias, self._parent_handle
            )
            return esapi.evict_control(ESYS_TR.OWNER, transient, self._parent_handle)
        finally:
            esapi.flush_context(transient)

    def _encrypted_session(self, conn: _Connection) -> Any:
        """A salted HMAC session encrypting the first command and response parameters."""
        session = conn.esapi.start_auth_session(
            tpm_key=conn.primary,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.HMAC,
            symmetric=TPMT_SYM_DEF(
                algorithm=TPM2_ALG.AES,
                keyBits={"aes": 256},
                mode={"aes": TPM2_ALG.CFB},
            ),
            auth_hash=TPM2_ALG.SHA256,
        )
        conn.esapi.trsess_set_attributes(
            session,
            TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION,
        )
        return session

    # -- PCR policies ------------------------------------------------------------------------------

    def _check_banks(self, conn: _Connection, pcrs: str) -> None:
        """Every bank and PCR of ``pcrs`` is allocated on this TPM (else ConfigurationError)."""
        _, capability = conn.esapi.get_capability(TPM2_CAP.PCRS, 0, 1)
        active = {
            int(s.hash): int.from_bytes(bytes(s.pcrSelect)[: s.sizeofSelect], "little")
            for s in capability.data.assignedPCR
        }
        for group in pcrs.split("+"):
            bank, _, numbers = group.partition(":")
            mask = active.get(int(_PCR_BANKS[bank]), 0)
            missing = [n for n in numbers.split(",") if not mask >> int(n) & 1]
            if missing:
                raise ConfigurationError(
                    f"key backend {self.alias!r}: PCRS names PCR {missing[0]} of bank {bank}, "
                    "which is not active on this TPM"
                )

    def _new_pcr_policy(self, conn: _Connection, pcrs: str) -> _PcrPolicy:
        """The PolicyPCR digest over the PCRs' current values, computed by the TPM (a trial)."""
        self._check_banks(conn, pcrs)
        trial = conn.esapi.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.TRIAL,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=TPM2_ALG.SHA256,
        )
        with self._flushing(conn, trial):
            # An empty pcrDigest: the TPM takes the selected PCRs' values as they are now.
            conn.esapi.policy_pcr(trial, None, _pcr_selection(pcrs))
            digest = bytes(conn.esapi.policy_get_digest(trial))
        return _PcrPolicy(pcrs=pcrs, digest=digest)

    def _version_policy(
        self, ref: KeyRef, version: dict[str, Any], public: TPM2B_PUBLIC
    ) -> _PcrPolicy | None:
        """The PCR policy a version's metadata records, checked against its blob's public area."""
        record = version.get("pcr_policy")
        area = public.publicArea
        auth_policy = bytes(area.authPolicy)
        with_auth = bool(int(area.objectAttributes) & int(TPMA_OBJECT.USERWITHAUTH))
        if record is None:
            if auth_policy or not with_auth:
                raise KeyBackendError(
                    f"key backend {self.alias!r}: the blob of {ref} carries a policy its "
                    "metadata does not record"
                )
            return None
        try:
            policy = _PcrPolicy(
                pcrs=parse_pcrs(record["pcrs"]), digest=bytes.fromhex(record["policy_digest"])
            )
        except (KeyError, TypeError, ValueError):
            raise KeyBackendError(
                f"key backend {self.alias!r}: the PCR policy recorded for {ref} is malformed"
            ) from None
        if with_auth or not hmac.compare_digest(auth_policy, policy.digest):
            raise KeyBackendError(
                f"key backend {self.alias!r}: the blob of {ref} does not carry the PCR policy "
                "its metadata records"
            )
        return policy

    def _policy_session(
        self, conn: _Connection, ref: KeyRef, policy: _PcrPolicy, *, encrypt: bool
    ) -> Any:
        """A policy session satisfying ``policy`` now; PcrPolicyMismatch if the PCRs changed.

        With ``encrypt`` it is salted to the pinned storage key and encrypts the first command
        and response parameters, like ``_encrypted_session``: it both authorizes the key and
        keeps the DEK off the wire in clear.
        """
        session = conn.esapi.start_auth_session(
            tpm_key=conn.primary if encrypt else ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(
                algorithm=TPM2_ALG.AES,
                keyBits={"aes": 256},
                mode={"aes": TPM2_ALG.CFB},
            ),
            auth_hash=TPM2_ALG.SHA256,
        )
        try:
            if encrypt:
                conn.esapi.trsess_set_attributes(
                    session,
                    TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION,
                )
            conn.esapi.policy_pcr(session, None, _pcr_selection(policy.pcrs))
            if not hmac.compare_digest(bytes(conn.esapi.policy_get_digest(session)), policy.digest):
                raise self._pcr_mismatch(ref, policy)
        except BaseException:
            if not conn.tcti.failure:
                with contextlib.suppress(TSS2_Exception):
                    conn.esapi.flush_context(session)
            raise
        return session

    def _pcr_mismatch(self, ref: KeyRef, policy: _PcrPolicy) -> PcrPolicyMismatch:
        return PcrPolicyMismatch(
            f"key backend {self.alias!r}: {ref} is bound to PCRs {policy.pcrs}, which no longer "
            "hold the values they had when it was created"
        )

    def _authorized(
        self,
        conn: _Connection,
        ref: KeyRef,
        policy: _PcrPolicy | None,
        command: Any,
        *,
        encrypt: bool,
    ) -> Any:
        """Run ``command(session)`` with the session that authorizes the key version ``ref``.

        Without a PCR policy: the salted, encrypting HMAC session when ``encrypt``, else
        password authorization (``ESYS_TR.PASSWORD``). With one: a policy session, started again
        if an unrelated PCR change voided it (TPM_RC_PCR_CHANGED); a policy check that fails at
        the command itself is PcrPolicyMismatch.
        """
        if policy is None:
            if not encrypt:
                return command(ESYS_TR.PASSWORD)
            with self._flushing(conn, self._encrypted_session(conn)) as session:
                return command(session)
        for attempt in range(_POLICY_ATTEMPTS):
            with self._flushing(
                conn, self._policy_session(conn, ref, policy, encrypt=encrypt)
            ) as session:
                try:
                    return command(session)
                except TSS2_Exception as exc:
                    if isinstance(exc, _TctiFailure) or conn.tcti.failure:
                        raise
                    error = int(exc.error)
                    if error == int(TPM2_RC.PCR_CHANGED) and attempt + 1 < _POLICY_ATTEMPTS:
                        continue
                    if error == int(TPM2_RC.PCR_CHANGED):
                        raise BackendUnavailable(
                            f"key backend {self.alias!r}: PCRs kept changing during the call"
                        ) from None
                    if error == int(TPM2_RC.POLICY_FAIL):
                        raise self._pcr_mismatch(ref, policy) from None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    @contextlib.contextmanager
    def _flushing(conn: _Connection, handle: Any) -> Iterator[Any]:
        """Flush a transient object or session on the way out, even on errors."""
        try:
            yield handle
        finally:
            if not conn.tcti.failure:
                try:
                    conn.esapi.flush_context(handle)
                except TSS2_Exception:
                    # A connection that failed here is dropped; a raw one flushes on reconnect.
                    logger.debug("tpm: flushing a transient handle failed", exc_info=False)

    # -- files ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self, path: Path) -> Iterator[None]:
        """An exclusive flock across processes (read-modify-write of metadata)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _key_dir(self, key_id: str) -> Path:
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise KeyNotFound(f"key backend {self.alias!r}: no key {key_id!r}")
        return self._state_dir / "keys" / key_id

    def _read_meta(self, key_id: str) -> dict[str, Any]:
        path = self._key_dir(key_id) / "meta.json"
        try:
            meta: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise KeyNotFound(f"key backend {self.alias!r}: no key {key_id!r}") from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ConfigurationError(
                    f"key backend {self.alias!r}: STATE_DIR unreadable"
                ) from exc
            raise
        return meta

    def _write_meta(self, key_id: str, meta: dict[str, Any]) -> None:
        _write_atomic(self._key_dir(key_id) / "meta.json", json.dumps(meta, indent=1).encode())

    @staticmethod
    def _version(meta: dict[str, Any], number: int) -> dict[str, Any] | None:
        return next((v for v in meta["versions"] if v["version"] == number), None)

    def _read_blob(self, key_id: str, number: int) -> tuple[TPM2B_PRIVATE, TPM2B_PUBLIC]:
        data = (self._key_dir(key_id) / f"v{number}.blob").read_bytes()
        return _split_blob(data)

    # -- hooks -------------------------------------------------------------------------------------

    def _create_object(
        self, purpose: KeyPurpose
    ) -> tuple[bytes, str, str | None, _PcrPolicy | None]:
        template = _kek_template() if purpose == KeyPurpose.WRAP else _sign_template()
        policy = None
        with self._tpm() as conn:
            if self._pcrs is not None:
                policy = self._new_pcr_policy(conn, self._pcrs)
                # Only the policy authorizes use: without userWithAuth the TPM refuses the
                # (empty) password and HMAC paths for this key.
                template.publicArea.authPolicy = policy.digest
                template.publicArea.objectAttributes &= ~TPMA_OBJECT.USERWITHAUTH
            private, public, *_ = conn.esapi.create(conn.primary, None, template)
        pem = public.publicArea.to_pem().decode() if purpose == KeyPurpose.SIGN else None
        blob = _BLOB_VERSION + private.marshal() + public.marshal()
        return blob, _name_hex(public), pem, policy

    def _new_version(
        self, number: int, name: str, pem: str | None, policy: _PcrPolicy | None
    ) -> dict[str, Any]:
        now = _now()
        version: dict[str, Any] = {
            "version": number,
            "state": str(KeyState.ACTIVE),
            "created": now,
            "activated": now,
            "deactivated": None,
            "destroyed": None,
            "name": name,
            # Which PCR policy gates this version (null: none); use follows this record, not PCRS.
            "pcr_policy": (
                None
                if policy is None
                else {"pcrs": policy.pcrs, "policy_digest": policy.digest.hex()}
            ),
        }
        if pem is not None:
            version["public_pem"] = pem
        return version

    def _create_key(self, purpose: KeyPurpose) -> KeyRef:
        key_id = uuid.uuid4().hex
        blob, name, pem, policy = self._create_object(purpose)
        directory = self._key_dir(key_id)
        directory.mkdir(mode=0o700, parents=True)
        _write_atomic(directory / "v1.blob", blob)
        meta = {
            "key_id": key_id,
            "purpose": str(purpose),
            "versions": [self._new_version(1, name, pem, policy)],
        }
        self._write_meta(key_id, meta)
        return KeyRef(key_id, 1)

    def _rotate(self, key_id: str) -> KeyRef:
        directory = self._key_dir(key_id)
        self._read_meta(key_id)
        with self._file_lock(directory / ".lock"):
            meta = self._read_meta(key_id)
            number = max(v["version"] for v in meta["versions"]) + 1
            blob, name, pem, policy = self._create_object(KeyPurpose(meta["purpose"]))
            _write_atomic(directory / f"v{number}.blob", blob)
            meta["versions"].append(self._new_version(number, name, pem, policy))
            self._write_meta(key_id, meta)
        return KeyRef(key_id, number)

    def _primary_version(self, meta: dict[str, Any], purpose: KeyPurpose) -> int:
        if meta["purpose"] != str(purpose):
            raise KeyStateError(f"key backend {self.alias!r}: the key is not a {purpose} key")
        active = [v["version"] for v in meta["versions"] if v["state"] == str(KeyState.ACTIVE)]
        if not active:
            raise KeyStateError(f"key backend {self.alias!r}: the key has no active version")
        return int(max(active))

    def _wrap(self, key_id: str, dek: bytes, context: dict[str, str]) -> WrappedKey:
        meta = self._read_meta(key_id)
        number = self._primary_version(meta, KeyPurpose.WRAP)
        kek_private, kek_public = self._read_blob(key_id, number)
        ref = KeyRef(key_id, number)
        version = self._version(meta, number)
        assert version is not None  # noqa: S101  (_primary_version found it)
        policy = self._version_policy(ref, version, kek_public)
        aad = wrap_aad(ref, MECHANISM, context)
        sensitive = TPM2B_SENSITIVE_CREATE(
            TPMS_SENSITIVE_CREATE(
                userAuth=TPM2B_AUTH(_seal_auth(aad)),
                data=TPM2B_SENSITIVE_DATA(_PAYLOAD_VERSION + _seal_binding(aad) + dek),
            )
        )
        with self._tpm() as conn:
            kek = conn.esapi.load(conn.primary, kek_private, kek_public)
            with self._flushing(conn, kek):
                # The session (HMAC, or policy for a PCR-bound KEK) is salted and encrypts
                # inSensitive: the DEK and authValue never cross in clear.
                private, public, *_ = self._authorized(
                    conn,
                    ref,
                    policy,
                    lambda session: conn.esapi.create(
                        kek, sensitive, _sealed_template(), session1=session
                    ),
                    encrypt=True,
                )
        return WrappedKey(
            backend=self.kind,
            key=ref,
            mechanism=MECHANISM,
            ciphertext=_BLOB_VERSION + private.marshal() + public.marshal(),
        )

    def _unwrap(self, wrapped: WrappedKey, context: dict[str, str]) -> bytes:
        ref = wrapped.key
        meta = self._read_meta(ref.key_id)
        version = self._version(meta, ref.version)
        if version is None or meta["purpose"] != str(KeyPurpose.WRAP):
            raise UnwrapFailed("the wrapped key did not open")
        state = KeyState(version["state"])
        if state == KeyState.DESTROYED:
            raise KeyDestroyed(f"key backend {self.alias!r}: {ref} was destroyed")
        if state not in UNWRAP_STATES:
            raise KeyStateError(f"key backend {self.alias!r}: {ref} is {state}")
        if wrapped.mechanism != MECHANISM:
            raise UnwrapFailed("the wrapped key did not open")
        try:
            private, public = _split_blob(wrapped.ciphertext)
        except ValueError:
            raise UnwrapFailed("the wrapped key did not open") from None
        if not _is_sealed_public(public):
            raise UnwrapFailed("the wrapped key did not open")
        kek_private, kek_public = self._read_blob(ref.key_id, ref.version)
        policy = self._version_policy(ref, version, kek_public)
        aad = wrap_aad(ref, wrapped.mechanism, context)
        with self._tpm() as conn:
            kek = conn.esapi.load(conn.primary, kek_private, kek_public)
            with self._flushing(conn, kek):
                try:
                    # Loading under a PCR-bound KEK needs its policy: Load carries no secret,
                    # so that policy session is neither salted nor encrypting.
                    sealed = self._authorized(
                        conn,
                        ref,
                        policy,
                        lambda session: conn.esapi.load(kek, private, public, session1=session),
                        encrypt=False,
                    )
                except TSS2_Exception as exc:
                    raise self._unwrap_error(exc) from None
                with self._flushing(conn, sealed):
                    conn.esapi.tr_set_auth(sealed, _seal_auth(aad))
                    session = self._encrypted_session(conn)
                    with self._flushing(conn, session):
                        try:
                            # The session encrypts outData: the DEK never crosses in clear.
                            payload = bytes(conn.esapi.unseal(sealed, session1=session))
                        except TSS2_Exception as exc:
                            raise self._unwrap_error(exc) from None
        binding = _seal_binding(aad)
        if (
            len(payload) - 1 - len(binding) not in (16, 24, 32)
            or payload[:1] != _PAYLOAD_VERSION
            or not hmac.compare_digest(payload[1 : 1 + len(binding)], binding)
        ):
            raise UnwrapFailed("the wrapped key did not open")
        return payload[1 + len(binding) :]

    def _unwrap_error(self, exc: TSS2_Exception) -> KeyBackendError:
        mapped = self._map_error(exc)
        if mapped.transient:
            return mapped
        # The TPM refused the object (integrity, attributes) or its authValue (another context).
        return UnwrapFailed("the wrapped key did not open")

    def _set_state(self, ref: KeyRef, state: KeyState) -> None:
        directory = self._key_dir(ref.key_id)
        self._read_meta(ref.key_id)
        with self._file_lock(directory / ".lock"):
            meta = self._read_meta(ref.key_id)
            version = self._version(meta, ref.version)
            if version is None:
                raise KeyNotFound(f"key backend {self.alias!r}: no version {ref}")
            if version["state"] == str(KeyState.DESTROYED):
                raise KeyDestroyed(f"key backend {self.alias!r}: {ref} was destroyed")
            version["state"] = str(state)
            if state == KeyState.ACTIVE:
                version["activated"] = version["activated"] or _now()
                version["deactivated"] = None
            else:
                version["deactivated"] = version["deactivated"] or _now()
            self._write_meta(ref.key_id, meta)

    def _destroy(self, ref: KeyRef) -> None:
        directory = self._key_dir(ref.key_id)
        self._read_meta(ref.key_id)
        with self._file_lock(directory / ".lock"):
            meta = self._read_meta(ref.key_id)
            version = self._version(meta, ref.version)
            if version is None:
                raise KeyNotFound(f"key backend {self.alias!r}: no version {ref}")
            # The metadata says "destroyed" before the blob goes, so a crash in between leaves
            # an unusable version rather than a usable one that claims to be destroyed.
            if version["state"] != str(KeyState.DESTROYED):
                version["state"] = str(KeyState.DESTROYED)
                version["deactivated"] = version["deactivated"] or _now()
                version["destroyed"] = _now()
                self._write_meta(ref.key_id, meta)
            with contextlib.suppress(FileNotFoundError):
                (directory / f"v{ref.version}.blob").unlink()

    def _describe(self, key_id: str) -> KeyDescription:
        meta = self._read_meta(key_id)
        purpose = KeyPurpose(meta["purpose"])
        versions = tuple(
            KeyInfo(
                ref=KeyRef(key_id, v["version"]),
                purpose=purpose,
                algorithm="AES" if purpose == KeyPurpose.WRAP else "EC",
                size=256,
                state=KeyState(v["state"]),
                created=_time(v["created"]),
                activated=_time(v["activated"]),
                deactivated=_time(v["deactivated"]),
                extractable=False,
                sensitive=True,
                generated_in_backend=True,
                fingerprint=v["name"],
                destroy_assurance=DESTROY_ASSURANCE,
            )
            for v in sorted(meta["versions"], key=lambda v: v["version"])
        )
        return KeyDescription(key_id=key_id, backend=self.kind, versions=versions)

    def _health(self) -> Health:
        with self._tpm() as conn:
            conn.esapi.get_random(8)
        return Health(ok=True, detail=f"TPM answers; storage key {self._parent_handle:#010x}")

    def _sign(self, key_id: str, data: bytes) -> tuple[KeyRef, bytes]:
        meta = self._read_meta(key_id)
        number = self._primary_version(meta, KeyPurpose.SIGN)
        private, public = self._read_blob(key_id, number)
        ref = KeyRef(key_id, number)
        version = self._version(meta, number)
        assert version is not None  # noqa: S101  (_primary_version found it)
        policy = self._version_policy(ref, version, public)
        digest = hashlib.sha256(data).digest()
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
        with self._tpm() as conn:
            key = conn.esapi.load(conn.primary, private, public)
            with self._flushing(conn, key):
                signature = self._authorized(
                    conn,
                    ref,
                    policy,
                    lambda session: conn.esapi.sign(key, digest, scheme, session1=session),
                    encrypt=False,
                )
        r = int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big")
        return ref, encode_dss_signature(r, s)

    def pcr_policy(self, ref: KeyRef) -> str | None:
        """The PCRs (normalized ``PCRS`` form) a version is bound to, or None if unbound.

        What the version's metadata records; ``KeyInfo`` has no field for it. Reads files only.
        """
        meta = self._read_meta(ref.key_id)
        version = self._version(meta, ref.version)
        if version is None:
            raise KeyNotFound(f"key backend {self.alias!r}: no version {ref}")
        record = version.get("pcr_policy")
        return None if record is None else str(record["pcrs"])

    def _public_key(self, ref: KeyRef) -> bytes:
        meta = self._read_meta(ref.key_id)
        version = self._version(meta, ref.version)
        if version is None:
            raise KeyNotFound(f"key backend {self.alias!r}: no version {ref}")
        if meta["purpose"] != str(KeyPurpose.SIGN):
            raise KeyStateError(f"key backend {self.alias!r}: {ref} is not a signing key")
        return str(version["public_pem"]).encode()


# -- blob and binding helpers ----------------------------------------------------------------------


def _split_blob(data: bytes) -> tuple[TPM2B_PRIVATE, TPM2B_PUBLIC]:
    """Parse version byte + TPM2B_PRIVATE + TPM2B_PUBLIC strictly; ValueError otherwise."""
    if not data.startswith(_BLOB_VERSION):
        raise ValueError("unknown blob version")
    body = data[1:]
    try:
        private, used = TPM2B_PRIVATE.unmarshal(body)
        public, used_public = TPM2B_PUBLIC.unmarshal(body[used:])
    except TSS2_Exception as exc:
        raise ValueError("malformed blob") from exc
    if used + used_public != len(body):
        raise ValueError("trailing bytes after the blob")
    if private.marshal() + public.marshal() != body:
        raise ValueError("blob does not re-encode identically")
    return private, public


def _seal_auth(aad: bytes) -> bytes:
    """The sealed object's authValue: a digest of the wrap's associated data.

    It is not a secret (the context is not); it makes the TPM refuse Unseal under any other
    key version, mechanism or encryption context.
    """
    return hashlib.sha256(_AUTH_LABEL + aad).digest()


def _seal_binding(aad: bytes) -> bytes:
    """The digest sealed beside the DEK and compared after Unseal (defence in depth)."""
    return hashlib.sha256(_BIND_LABEL + aad).digest()
