"""Values that cross the key-backend interface."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class KeyState(enum.StrEnum):
    """Key states after NIST SP 800-57 and KMIP.

    PRE_ACTIVE: created, not yet usable. ACTIVE: wraps (the primary version) and unwraps.
    DEACTIVATED: unwraps only. COMPROMISED: unwraps only, for recovery, and is rotated away.
    DESTROYED: nothing; the material is gone.
    """

    PRE_ACTIVE = "pre-active"
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    COMPROMISED = "compromised"
    DESTROYED = "destroyed"


# States from which a version may still unwrap what it protected.
UNWRAP_STATES = frozenset({KeyState.ACTIVE, KeyState.DEACTIVATED, KeyState.COMPROMISED})


class KeyPurpose(enum.StrEnum):
    """What a key is for: wrapping data keys (AES-256) or signing (EC P-256)."""

    WRAP = "wrap"
    SIGN = "sign"


class Capability(enum.Flag):
    """What a backend can do beyond wrap and unwrap."""

    NONE = 0
    ROTATE = enum.auto()
    STATES = enum.auto()
    DESTROY = enum.auto()
    SIGN = enum.auto()


@dataclass(frozen=True, order=True)
class KeyRef:
    """One version of a key in a backend. ``key_id`` is backend-specific and printable."""

    key_id: str
    version: int

    def __str__(self) -> str:
        return f"{self.key_id}#v{self.version}"


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped under one key version: what an envelope's recipient stanza records.

    ``ciphertext`` is the backend's own format (an AES-GCM blob, a TPM sealed object, ...),
    named by ``mechanism``. It is not secret, but it is only useful with the same context.
    """

    backend: str  # the backend kind: "local", "pkcs11", "tpm", "kmip"
    key: KeyRef
    mechanism: str
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyInfo:
    """What a backend says about one key version. Never holds key material."""

    ref: KeyRef
    purpose: KeyPurpose
    algorithm: str  # "AES" or "EC"
    size: int  # bits (256 for AES-256 and for P-256)
    state: KeyState
    created: datetime | None
    activated: datetime | None
    deactivated: datetime | None
    extractable: bool
    sensitive: bool
    generated_in_backend: bool
    fingerprint: str  # stable identifier of the key material, revealing nothing of it
    destroy_assurance: str = ""


@dataclass(frozen=True)
class KeyDescription:
    """A key and all its versions; ``primary`` is the version that wraps (or signs) now."""

    key_id: str
    backend: str
    versions: tuple[KeyInfo, ...]

    @property
    def primary(self) -> KeyInfo | None:
        active = [v for v in self.versions if v.state == KeyState.ACTIVE]
        return max(active, key=lambda v: v.ref.version) if active else None

    def version(self, number: int) -> KeyInfo | None:
        return next((v for v in self.versions if v.ref.version == number), None)


@dataclass(frozen=True)
class Health:
    """The outcome of a backend's health check."""

    ok: bool
    detail: str
