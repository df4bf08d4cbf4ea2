"""The Ciphervault envelope: a versioned header and a STREAM-segmented AES-256-GCM body.

The byte layout is specified in ``docs/format.md``; this module is its reference implementation.
In short::

    envelope = header || body
    header   = fixed || stanzas
    fixed    = magic || version || algorithm || segment size || context || salt || commitment
    stanzas  = count || (length || backend || key id || key version || mechanism || wrapped DEK)*
    body     = segment_0 || ... || segment_n   (each: AES-256-GCM ciphertext || 16-byte tag)

Security properties, and where they come from:

- Confidentiality and integrity of the body: AES-256-GCM under a per-object subkey
  ``HKDF-SHA256(DEK, salt)``, so GCM's per-key limits apply per object, not per DEK.
- No truncation, reordering, dropping, duplication or swapping of segments: STREAM nonces
  (prefix || 32-bit big-endian counter || final flag); the final segment carries flag 1, so a
  body cut at a segment boundary lacks a final segment and fails.
- Header integrity: SHA-256 of the fixed part is every segment's associated data, so changing
  any fixed field (context included) fails every segment.
- Key commitment: the header carries ``HKDF-SHA256(DEK, salt, "...key-commitment")``, compared
  in constant time before anything is decrypted, so one envelope cannot open to two plaintexts
  under two keys.
- Rewrap without touching the body: recipient stanzas are outside the hashed fixed part and
  outside the commitment. Each stanza's wrap binds the context itself (the key backends do it).
- Bounded parsing: every length is checked against a fixed bound before anything is allocated;
  a malformed header raises ``EnvelopeFormatError``, never ``AuthenticationFailed``.
- No unauthenticated plaintext: plaintext is released one segment at a time, only after that
  segment's tag verified; a failing segment's output buffer is wiped.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import BinaryIO, Protocol, TypeAlias, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms_plugins.context import MAX_CONTEXT_BYTES, canonical_context
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto.errors import (
    AuthenticationFailed,
    EnvelopeFormatError,
    InvalidEnvelopeParameters,
    NoMatchingStanza,
    UnsupportedEnvelope,
)

__all__ = [
    "ALGORITHM_AES256GCM_HKDF_STREAM",
    "DEFAULT_SEGMENT_SIZE",
    "DEK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_SIZE",
    "MAX_SEGMENT_SIZE",
    "MAX_STANZAS",
    "MIN_SEGMENT_SIZE",
    "TAG_SIZE",
    "Decryptor",
    "Encryptor",
    "EnvelopeHeader",
    "RangePlan",
    "body_size",
    "decrypt",
    "decrypt_iter",
    "decrypt_stream",
    "encrypt",
    "encrypt_iter",
    "encrypt_stream",
    "parse_header",
    "plaintext_size",
    "plan_range",
    "read_header",
    "replace_stanzas",
    "select_stanza",
    "split_envelope",
    "unwrap_dek",
]

# --- constants of format version 1 (docs/format.md, "Constants") -------------------------------

MAGIC = b"\x89CVE\r\n\x1a\n"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF_STREAM = 1

DEK_SIZE = 32
SALT_SIZE = 32
COMMITMENT_SIZE = 32
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16

DEFAULT_SEGMENT_SIZE = 64 * 1024
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
# The segment counter is 32 bits: at most 2**32 segments (256 TiB at the default segment size).
MAX_SEGMENTS = 2**32

MAX_STANZAS = 16
MAX_BACKEND_SIZE = 64
MAX_KEY_ID_SIZE = 1024
MAX_MECHANISM_SIZE = 64
MAX_WRAPPED_SIZE = 8192
MAX_KEY_VERSION = 2**32 - 1
MAX_HEADER_SIZE = 64 * 1024

INFO_PAYLOAD_KEY = b"ciphervault/envelope/v1/payload-key"
INFO_NONCE_PREFIX = b"ciphervault/envelope/v1/nonce-prefix"
INFO_COMMITMENT = b"ciphervault/envelope/v1/key-commitment"

_FIXED_START = struct.Struct(">8sBBIH")  # magic, version, algorithm, segment size, context length
_NONCE_TAIL = struct.Struct(">IB")  # segment counter, final flag
_PRINTABLE_ASCII = re.compile(rb"[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Buffer: TypeAlias = bytes | bytearray | memoryview
Source: TypeAlias = "BinaryIO | Iterable[Buffer] | Buffer"
KeySource: TypeAlias = "bytes | Callable[[EnvelopeHeader], bytes]"


class _Writable(Protocol):
    def write(self, data: Buffer, /) -> object: ...


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


# --- key schedule -------------------------------------------------------------------------------


def _hkdf(dek: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(dek)


def _commitment(dek: bytes, salt: bytes) -> bytes:
    return _hkdf(dek, salt, INFO_COMMITMENT, COMMITMENT_SIZE)


def _check_dek(dek: object) -> bytes:
    if not isinstance(dek, bytes | bytearray | memoryview) or len(dek) != DEK_SIZE:
        raise InvalidEnvelopeParameters(f"the DEK must be {DEK_SIZE} bytes")
    return bytes(dek)


# --- the header -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeHeader:
    """A parsed (or about to be written) envelope header.

    ``fixed`` (every field but the stanzas) is hashed into every segment's associated data;
    ``stanzas`` are not, so they can be replaced (rewrapped) without touching the body.

    Build one with ``Encryptor`` (which draws the salt and computes the commitment) or with
    ``parse_header``/``read_header``; ``to_bytes()`` gives back the exact bytes it was parsed
    from, since every field has exactly one encoding.
    """

    segment_size: int
    context_bytes: bytes
    salt: bytes = field(repr=False)
    commitment: bytes = field(repr=False)
    stanzas: tuple[WrappedKey, ...]
    version: int = FORMAT_VERSION
    algorithm: int = ALGORITHM_AES256GCM_HKDF_STREAM

    @property
    def context(self) -> dict[str, str]:
        """The encryption context the envelope was made for (a new dict each call)."""
        parsed: dict[str, str] = json.loads(self.context_bytes)
        return parsed

    @cached_property
    def fixed(self) -> bytes:
        """The fixed part of the header: everything but the stanzas."""
        return b"".join(
            [
                _FIXED_START.pack(
                    MAGIC,
                    self.version,
                    self.algorithm,
                    self.segment_size,
                    len(self.context_bytes),
                ),
                self.context_bytes,
                self.salt,
                self.commitment,
            ]
        )

    @cached_property
    def fixed_hash(self) -> bytes:
        """SHA-256 of the fixed part: the associated data of every body segment."""
        return hashlib.sha256(self.fixed).digest()

    def to_bytes(self) -> bytes:
        """The header's bytes: the fixed part, then the stanza count and the stanzas."""
        return self.fixed + _encode_stanzas(self.stanzas)

    @property
    def length(self) -> int:
        """The header's length in bytes (the body starts at this offset in an envelope)."""
        return len(self.to_bytes())

    def with_stanzas(self, stanzas: Sequence[WrappedKey]) -> EnvelopeHeader:
        """The same header with other recipient stanzas (the fixed part is unchanged).

        Raises:
            InvalidEnvelopeParameters: no stanzas, too many, or a field out of bounds.
        """
        checked = tuple(stanzas)
        _encode_stanzas(checked)
        return EnvelopeHeader(
            segment_size=self.segment_size,
            context_bytes=self.context_bytes,
            salt=self.salt,
            commitment=self.commitment,
            stanzas=checked,
            version=self.version,
            algorithm=self.algorithm,
        )

    def verify_dek(self, dek: bytes) -> None:
        """Check that ``dek`` is the key this envelope commits to, in constant time.

        Raises:
            InvalidEnvelopeParameters: ``dek`` is not 32 bytes.
            AuthenticationFailed: the DEK does not match the header's key commitment.
        """
        expected = _commitment(_check_dek(dek), self.salt)
        if not hmac.compare_digest(expected, self.commitment):
            raise AuthenticationFailed("the key does not match the envelope's key commitment")


def _encode_stanza(stanza: WrappedKey) -> bytes:
    try:
        backend = stanza.backend.encode("ascii")
        key_id = stanza.key.key_id.encode("utf-8")
        mechanism = stanza.mechanism.encode("ascii")
        version = stanza.key.version
        wrapped = bytes(stanza.ciphertext)
    except (AttributeError, TypeError, UnicodeError) as exc:
        raise InvalidEnvelopeParameters(
            "a recipient stanza is not a well-formed WrappedKey"
        ) from exc
    if not 1 <= len(backend) <= MAX_BACKEND_SIZE or not _PRINTABLE_ASCII.fullmatch(backend):
        raise InvalidEnvelopeParameters("a stanza's backend kind must be 1-64 printable ASCII")
    if not 1 <= len(key_id) <= MAX_KEY_ID_SIZE or _CONTROL.search(stanza.key.key_id):
        raise InvalidEnvelopeParameters("a stanza's key id must be 1-1024 bytes, no controls")
    if not 1 <= len(mechanism) <= MAX_MECHANISM_SIZE or not _PRINTABLE_ASCII.fullmatch(mechanism):
        raise InvalidEnvelopeParameters("a stanza's mechanism must be 1-64 printable ASCII")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEnvelopeParameters("a stanza's key version must be an integer")
    if not 0 <= version <= MAX_KEY_VERSION:
        raise InvalidEnvelopeParameters("a stanza's key version must fit 32 bits")
    if not 1 <= len(wrapped) <= MAX_WRAPPED_SIZE:
        raise InvalidEnvelopeParameters("a stanza's wrapped DEK must be 1-8192 bytes")
    body = b"".join(
        [
            struct.pack(">B", len(backend)),
            backend,
            struct.pack(">H", len(key_id)),
            key_id,
            struct.pack(">I", version),
            struct.pack(">B", len(mechanism)),
            mechanism,
            struct.pack(">H", len(wrapped)),
            wrapped,
        ]
    )
    return struct.pack(">H", len(body)) + body


def _encode_stanzas(stanzas: Sequence[WrappedKey]) -> bytes:
    if not 1 <= len(stanzas) <= MAX_STANZAS:
        raise InvalidEnvelopeParameters(f"an envelope needs 1 to {MAX_STANZAS} recipient stanzas")
    return struct.pack(">B", len(stanzas)) + b"".join(_encode_stanza(s) for s in stanzas)


# --- strict parsing -------------------------------------------------------------------------------


class _HeaderReader:
    """Reads header fields through ``read_exact``, counting bytes against MAX_HEADER_SIZE."""

    def __init__(self, read_exact: Callable[[int], bytes]) -> None:
        self._read_exact = read_exact
        self.consumed = bytearray()

    def take(self, size: int, what: str) -> bytes:
        if len(self.consumed) + size > MAX_HEADER_SIZE:
            raise EnvelopeFormatError(f"the header is larger than {MAX_HEADER_SIZE} bytes")
        data = self._read_exact(size)
        if len(data) != size:
            raise EnvelopeFormatError(f"the header is truncated (in the {what})")
        self.consumed += data
        return data

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value


def _parse_context(raw: bytes) -> bytes:
    """Check that ``raw`` is exactly canonical_context() of some mapping of strings."""
    try:
        value = json.loads(raw.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not an object")
        canonical = canonical_context(value)
    except (ValueError, KeyBackendError) as exc:  # UnicodeError and JSONDecodeError included
        raise EnvelopeFormatError("the header's encryption context is malformed") from exc
    if canonical != raw:
        raise EnvelopeFormatError("the header's encryption context is not in canonical form")
    return raw


def _parse_stanza(data: bytes) -> WrappedKey:
    view = memoryview(data)
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(view):
            raise EnvelopeFormatError("a recipient stanza is shorter than its fields")
        chunk = bytes(view[pos : pos + size])
        pos += size
        return chunk

    backend = take(take(1)[0])
    key_id_raw = take(struct.unpack(">H", take(2))[0])
    version: int = struct.unpack(">I", take(4))[0]
    mechanism = take(take(1)[0])
    wrapped = take(struct.unpack(">H", take(2))[0])
    if pos != len(view):
        raise EnvelopeFormatError("a recipient stanza is longer than its fields")
    if not 1 <= len(backend) <= MAX_BACKEND_SIZE or not _PRINTABLE_ASCII.fullmatch(backend):
        raise EnvelopeFormatError("a recipient stanza's backend kind is malformed")
    if not 1 <= len(mechanism) <= MAX_MECHANISM_SIZE or not _PRINTABLE_ASCII.fullmatch(mechanism):
        raise EnvelopeFormatError("a recipient stanza's mechanism is malformed")
    if not 1 <= len(key_id_raw) <= MAX_KEY_ID_SIZE:
        raise EnvelopeFormatError("a recipient stanza's key id has a bad length")
    try:
        key_id = key_id_raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeFormatError("a recipient stanza's key id is not UTF-8") from exc
    if _CONTROL.search(key_id):
        raise EnvelopeFormatError("a recipient stanza's key id contains control characters")
    if not 1 <= len(wrapped) <= MAX_WRAPPED_SIZE:
        raise EnvelopeFormatError("a recipient stanza's wrapped DEK has a bad length")
    return WrappedKey(backend.decode("ascii"), KeyRef(key_id, version), mechanism.decode(), wrapped)


def _parse(read_exact: Callable[[int], bytes]) -> tuple[EnvelopeHeader, bytes]:
    reader = _HeaderReader(read_exact)
    magic = reader.take(len(MAGIC), "magic")
    if magic != MAGIC:
        raise EnvelopeFormatError("not a Ciphervault envelope (bad magic)")
    version = reader.u8("version")
    if version != FORMAT_VERSION:
        raise UnsupportedEnvelope(f"unsupported envelope format version {version}")
    algorithm = reader.u8("algorithm")
    if algorithm != ALGORITHM_AES256GCM_HKDF_STREAM:
        raise UnsupportedEnvelope(f"unsupported envelope algorithm {algorithm}")
    segment_size = reader.u32("segment size")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise EnvelopeFormatError(f"segment size {segment_size} is out of bounds")
    context_size = reader.u16("context length")
    if not 2 <= context_size <= MAX_CONTEXT_BYTES:
        raise EnvelopeFormatError("the header's encryption context has a bad length")
    context_bytes = _parse_context(reader.take(context_size, "context"))
    salt = reader.take(SALT_SIZE, "salt")
    commitment = reader.take(COMMITMENT_SIZE, "key commitment")
    count = reader.u8("stanza count")
    if not 1 <= count <= MAX_STANZAS:
        raise EnvelopeFormatError(f"the stanza count {count} is out of bounds")
    stanzas = []
    for _ in range(count):
        size = reader.u16("stanza length")
        stanzas.append(_parse_stanza(reader.take(size, "stanza")))
    header = EnvelopeHeader(
        segment_size=segment_size,
        context_bytes=context_bytes,
        salt=salt,
        commitment=commitment,
        stanzas=tuple(stanzas),
    )
    return header, bytes(reader.consumed)


def parse_header(data: Buffer) -> EnvelopeHeader:
    """Parse exactly one header, strictly.

    Args:
        data: the header's bytes and nothing else (use ``split_envelope`` for a whole envelope).

    Returns:
        The parsed header. Parsing authenticates nothing: the fixed part is authenticated by
        the first segment that decrypts, the DEK by ``EnvelopeHeader.verify_dek``.

    Raises:
        UnsupportedEnvelope: an unknown format version or algorithm.
        EnvelopeFormatError: anything else malformed, out of bounds, or bytes after the header.
    """
    view = memoryview(data)
    header, raw = _parse(_exact_reader(view))
    if len(raw) != len(view):
        raise EnvelopeFormatError("bytes follow the envelope header")
    return header


def split_envelope(envelope: Buffer) -> tuple[EnvelopeHeader, bytes, bytes]:
    """Split a whole envelope into its header and its body.

    The vault keeps the header in its database and the body in object storage.

    Returns:
        ``(header, header_bytes, body_bytes)``.

    Raises:
        UnsupportedEnvelope, EnvelopeFormatError: as ``parse_header``. The body is not checked
        here; it authenticates (or not) when decrypted.
    """
    view = memoryview(envelope)
    header, raw = _parse(_exact_reader(view))
    return header, raw, bytes(view[len(raw) :])


def read_header(stream: BinaryIO) -> tuple[EnvelopeHeader, bytes]:
    """Read one header from a binary stream, leaving the stream at the first body byte.

    Reads at most ``MAX_HEADER_SIZE`` bytes, in small bounded steps (no field is allocated
    before its length has been checked).

    Returns:
        ``(header, header_bytes)``.

    Raises:
        UnsupportedEnvelope, EnvelopeFormatError: as ``parse_header`` (a short stream is a
        truncated header).
    """
    return _parse(_Reader(stream).read_exact)


def _exact_reader(view: memoryview) -> Callable[[int], bytes]:
    pos = 0

    def read_exact(size: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + size])
        pos += len(chunk)
        return chunk

    return read_exact


def replace_stanzas(
    header: Buffer | EnvelopeHeader,
    stanzas: Sequence[WrappedKey],
    *,
    dek: bytes | None = None,
) -> bytes:
    """Rewrap: the same header with new recipient stanzas; the body stays valid unchanged.

    Args:
        header: the current header (bytes, parsed strictly, or an ``EnvelopeHeader``).
        stanzas: the new stanzas, each wrapping the same DEK under the same context.
        dek: if given, checked against the key commitment first, so a rewrap that wrapped the
            wrong key fails here rather than leaving an object nobody can open.

    Returns:
        The new header's bytes; its fixed part is byte-identical to the old one.

    Raises:
        EnvelopeFormatError: the old header is malformed.
        InvalidEnvelopeParameters: the new stanzas cannot be encoded.
        AuthenticationFailed: ``dek`` does not match the header's commitment.
    """
    parsed = header if isinstance(header, EnvelopeHeader) else parse_header(header)
    if dek is not None:
        parsed.verify_dek(dek)
    return parsed.with_stanzas(stanzas).to_bytes()


def select_stanza(
    header: EnvelopeHeader,
    *,
    backend: str | None = None,
    key_id: str | None = None,
    version: int | None = None,
) -> WrappedKey:
    """The first recipient stanza matching every criterion given.

    Raises:
        NoMatchingStanza: none matches.
    """
    for stanza in header.stanzas:
        if backend is not None and stanza.backend != backend:
            continue
        if key_id is not None and stanza.key.key_id != key_id:
            continue
        if version is not None and stanza.key.version != version:
            continue
        return stanza
    raise NoMatchingStanza("no recipient stanza matches the requested backend and key")


def unwrap_dek(
    header: EnvelopeHeader,
    unwrap: Callable[[WrappedKey], bytes],
    *,
    backend: str | None = None,
    key_id: str | None = None,
    version: int | None = None,
) -> bytes:
    """Pick the stanza for a backend/key, unwrap it with ``unwrap``, check the commitment.

    Args:
        header: the envelope header.
        unwrap: typically ``lambda w: backends[alias].unwrap(w, context)``; the backend's own
            wrap binds the context, so a stanza moved from another object fails there.
        backend, key_id, version: which stanza to use (see ``select_stanza``).

    Returns:
        The 32-byte DEK, verified against the header's key commitment.

    Raises:
        NoMatchingStanza: no stanza matches.
        AuthenticationFailed: the unwrapped key does not match the commitment.
        Whatever ``unwrap`` raises (backend errors pass through untouched, with their
        ``transient`` flag).
    """
    stanza = select_stanza(header, backend=backend, key_id=key_id, version=version)
    dek = unwrap(stanza)
    if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_SIZE:
        raise AuthenticationFailed("the unwrapped key is not a 32-byte DEK")
    header.verify_dek(bytes(dek))
    return bytes(dek)


# --- sizes and ranges -------------------------------------------------------------------------


def _check_segment_size(segment_size: object) -> int:
    if not isinstance(segment_size, int) or isinstance(segment_size, bool):
        raise InvalidEnvelopeParameters("the segment size must be an integer")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidEnvelopeParameters(
            f"the segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes"
        )
    return segment_size


def _segment_count(size: int, segment_size: int) -> int:
    return max(1, -(-size // segment_size))


def body_size(plaintext_size: int, segment_size: int) -> int:
    """The body's length for a plaintext of ``plaintext_size`` bytes (16 bytes per segment more).

    Raises:
        InvalidEnvelopeParameters: a negative size, a bad segment size, or more than 2**32
            segments.
    """
    _check_segment_size(segment_size)
    if plaintext_size < 0:
        raise InvalidEnvelopeParameters("a size cannot be negative")
    count = _segment_count(plaintext_size, segment_size)
    if count > MAX_SEGMENTS:
        raise InvalidEnvelopeParameters("the object is too large for its segment size")
    return plaintext_size + count * TAG_SIZE


def plaintext_size(body_size: int, segment_size: int) -> int:
    """The plaintext's length for a body of ``body_size`` bytes.

    Raises:
        InvalidEnvelopeParameters: a bad segment size.
        AuthenticationFailed: no valid body has this length (truncated or padded).
    """
    _check_segment_size(segment_size)
    full = segment_size + TAG_SIZE
    if body_size < TAG_SIZE:
        raise AuthenticationFailed("the envelope body is truncated")
    count = -(-body_size // full)
    last = body_size - (count - 1) * full
    if count > MAX_SEGMENTS or last < TAG_SIZE or (count > 1 and last == TAG_SIZE):
        raise AuthenticationFailed("no valid envelope body has this length")
    return body_size - count * TAG_SIZE


@dataclass(frozen=True)
class RangePlan:
    """Which part of the body to read for a plaintext byte range, and how to decrypt it.

    ``ciphertext_start``/``ciphertext_end`` are offsets in the body (add the header's length
    for an offset in a whole envelope); read exactly those bytes and hand them to
    ``Decryptor.decrypt_range``. Segments ``first_segment`` to ``last_segment`` are decrypted;
    the first ``skip`` plaintext bytes are dropped and ``length`` bytes are returned.
    """

    start: int
    end: int
    segment_size: int
    first_segment: int
    last_segment: int
    final_segment: int
    ciphertext_start: int
    ciphertext_end: int
    skip: int

    @property
    def length(self) -> int:
        """How many plaintext bytes the range yields."""
        return self.end - self.start


def plan_range(*, segment_size: int, plaintext_size: int, start: int, end: int) -> RangePlan:
    """Plan the decryption of plaintext bytes ``[start, end)`` of an object.

    Args:
        segment_size: the header's segment size.
        plaintext_size: the object's plaintext length (from the vault's metadata or from
            ``plaintext_size(body_size, ...)``). If it is wrong, the segment planned as final
            fails to authenticate: a lie about the size cannot turn into wrong plaintext.
        start, end: the half-open plaintext range, ``0 <= start <= end <= plaintext_size``.

    Returns:
        The plan. An empty range reads and decrypts nothing (and so authenticates nothing).

    Raises:
        InvalidEnvelopeParameters: a bad segment size or a range outside the object.
    """
    full = _check_segment_size(segment_size) + TAG_SIZE
    body_size(plaintext_size, segment_size)  # bounds
    if not 0 <= start <= end <= plaintext_size:
        raise InvalidEnvelopeParameters("the range is outside the object")
    final = _segment_count(plaintext_size, segment_size) - 1
    if start == end:
        return RangePlan(start, end, segment_size, 0, -1, final, 0, 0, 0)
    first = start // segment_size
    last = (end - 1) // segment_size
    ciphertext_end = min((last + 1) * full, plaintext_size + (final + 1) * TAG_SIZE)
    return RangePlan(
        start=start,
        end=end,
        segment_size=segment_size,
        first_segment=first,
        last_segment=last,
        final_segment=final,
        ciphertext_start=first * full,
        ciphertext_end=ciphertext_end,
        skip=start - first * segment_size,
    )


# --- I/O plumbing ---------------------------------------------------------------------------------


class _Reader:
    """One reading interface over a binary stream, an iterable of buffers, or one buffer."""

    def __init__(self, source: Source) -> None:
        self._stream: BinaryIO | None = None
        self._chunks: Iterator[Buffer] | None = None
        self._pending = memoryview(b"")
        self._in_memory = isinstance(source, bytes | bytearray | memoryview)
        if isinstance(source, bytes | bytearray | memoryview):
            self._pending = memoryview(source).cast("B")
            self._chunks = iter(())
        elif hasattr(source, "read"):
            self._stream = cast(BinaryIO, source)
        else:
            self._chunks = iter(source)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` completely unless the source ends first; return the bytes read."""
        total = 0
        size = len(view)
        stream = self._stream
        if stream is not None:
            readinto = getattr(stream, "readinto", None)
            while total < size:
                if readinto is not None:
                    got = readinto(view[total:])
                else:
                    data = stream.read(size - total)
                    got = len(data)
                    view[total : total + got] = data
                if got is None:
                    raise InvalidEnvelopeParameters("non-blocking streams are not supported")
                if got == 0:
                    break
                total += got
            return total
        while total < size:
            if not self._pending:
                assert self._chunks is not None  # noqa: S101 - one of the two is always set
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._pending = memoryview(nxt).cast("B")
                continue
            take = min(size - total, len(self._pending))
            view[total : total + take] = self._pending[:take]
            self._pending = self._pending[take:]
            total += take
        return total

    def remaining_buffer(self) -> memoryview | None:
        """All the rest, without copying, if the source is one in-memory buffer; else None."""
        if self._stream is not None or self._in_memory is False:
            return None
        rest, self._pending = self._pending, memoryview(b"")
        return rest

    def read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the source."""
        buffer = bytearray(size)
        got = self.readinto(memoryview(buffer))
        del buffer[got:]
        return bytes(buffer)


# --- encryption -------------------------------------------------------------------------------


class Encryptor:
    """Encrypts one object: builds its header, then seals its body segment by segment.

    Memory is constant whatever the object's size: about two segments of buffers.

    Security: a fresh 256-bit salt per object (so a fresh subkey and nonce prefix even if a DEK
    were reused), STREAM nonces that the encryptor advances itself (a segment index can neither
    repeat nor be skipped), and exactly one final segment, after which the encryptor refuses to
    seal anything.
    """

    def __init__(
        self,
        dek: bytes,
        context: Mapping[str, str],
        stanzas: Sequence[WrappedKey],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        _salt: bytes | None = None,
    ) -> None:
        """Prepare to encrypt one object.

        Args:
            dek: the object's 32-byte data key (fresh per object version).
            context: the encryption context (the vault uses tenant, object and version); the
                same context the stanzas' wraps were bound to.
            stanzas: 1 to 16 wrapped copies of ``dek`` (``WrappedKey`` from a key backend).
            segment_size: plaintext bytes per segment, 16 B to 16 MiB.
            _salt: known-answer test vectors only. Reusing a salt with the same DEK reuses
                GCM nonces; production code must never pass it.

        Raises:
            InvalidEnvelopeParameters: a bad DEK, context, stanza or segment size.
        """
        dek = _check_dek(dek)
        self.segment_size = _check_segment_size(segment_size)
        try:
            context_bytes = canonical_context(context)
        except (KeyBackendError, ValueError) as exc:
            raise InvalidEnvelopeParameters(
                "the encryption context must map non-empty strings to strings, within 4 KiB"
            ) from exc
        salt = secrets.token_bytes(SALT_SIZE) if _salt is None else bytes(_salt)
        if len(salt) != SALT_SIZE:
            raise InvalidEnvelopeParameters(f"the salt must be {SALT_SIZE} bytes")
        self.header_info = EnvelopeHeader(
            segment_size=self.segment_size,
            context_bytes=context_bytes,
            salt=salt,
            commitment=_commitment(dek, salt),
            stanzas=(),
        ).with_stanzas(stanzas)
        self.header: bytes = self.header_info.to_bytes()
        """The header's bytes; write them before the body (or store them separately)."""
        if len(self.header) > MAX_HEADER_SIZE:
            raise InvalidEnvelopeParameters(f"the header is larger than {MAX_HEADER_SIZE} bytes")
        self._aead = AESGCM(_hkdf(dek, salt, INFO_PAYLOAD_KEY, 32))
        self._prefix = _hkdf(dek, salt, INFO_NONCE_PREFIX, NONCE_PREFIX_SIZE)
        self._aad = self.header_info.fixed_hash
        self._index = 0
        self._finished = False

    @classmethod
    def resume(
        cls,
        header: EnvelopeHeader,
        dek: bytes,
        context: Mapping[str, str],
        *,
        next_segment: int,
    ) -> Encryptor:
        """An encryptor that continues an envelope at segment ``next_segment`` (a resumed upload).

        Security: sealing a segment index twice under one header with different plaintext
        reuses a GCM nonce, which reveals the XOR of the two plaintexts and lets a holder of
        both ciphertexts forge segments. The caller must know that every segment it seals again
        either never left the machine or has exactly the plaintext it had before (``cvault``
        checks the file and a hash of the part it was sending).

        Raises:
            AuthenticationFailed: ``dek`` does not match the header's commitment.
            InvalidEnvelopeParameters: the context differs from the header's, or a bad index.
        """
        header.verify_dek(dek)
        try:
            context_bytes = canonical_context(context)
        except (KeyBackendError, ValueError) as exc:
            raise InvalidEnvelopeParameters("the encryption context is not valid") from exc
        if context_bytes != header.context_bytes:
            raise InvalidEnvelopeParameters("the context differs from the header's")
        if not 0 <= next_segment < MAX_SEGMENTS:
            raise InvalidEnvelopeParameters("the segment index is out of range")
        encryptor = cls.__new__(cls)
        encryptor.segment_size = header.segment_size
        encryptor.header_info = header
        encryptor.header = header.to_bytes()
        encryptor._aead = AESGCM(_hkdf(dek, header.salt, INFO_PAYLOAD_KEY, 32))
        encryptor._prefix = _hkdf(dek, header.salt, INFO_NONCE_PREFIX, NONCE_PREFIX_SIZE)
        encryptor._aad = header.fixed_hash
        encryptor._index = next_segment
        encryptor._finished = False
        return encryptor

    @property
    def finished(self) -> bool:
        """Whether the final segment has been sealed."""
        return self._finished

    def seal_segment_into(
        self, plaintext: Buffer, out: bytearray | memoryview, *, final: bool
    ) -> int:
        """Seal the next segment into ``out``; return the ciphertext's length.

        Args:
            plaintext: exactly ``segment_size`` bytes, or for the final segment 0 to
                ``segment_size`` bytes (0 only if it is also the first: an empty object).
            out: a writable buffer of at least ``len(plaintext) + 16`` bytes; reuse it.
            final: whether this is the object's last segment.

        Raises:
            InvalidEnvelopeParameters: a segment after the final one, a wrong segment length, or
                more than 2**32 segments.
        """
        size = len(plaintext)
        if self._finished:
            raise InvalidEnvelopeParameters("the final segment has already been sealed")
        if final:
            if size > self.segment_size or (size == 0 and self._index > 0):
                raise InvalidEnvelopeParameters("a final segment must hold 1 to segment_size bytes")
        elif size != self.segment_size:
            raise InvalidEnvelopeParameters("a non-final segment must hold segment_size bytes")
        if self._index >= MAX_SEGMENTS:
            raise InvalidEnvelopeParameters("the object is too large for its segment size")
        nonce = self._prefix + _NONCE_TAIL.pack(self._index, final)
        target = memoryview(out)[: size + TAG_SIZE]
        self._aead.encrypt_into(nonce, plaintext, self._aad, target)
        self._index += 1
        self._finished = final
        return size + TAG_SIZE

    def seal_segment(self, plaintext: Buffer, *, final: bool) -> bytes:
        """``seal_segment_into`` returning a new bytes object."""
        out = bytearray(len(plaintext) + TAG_SIZE)
        self.seal_segment_into(plaintext, out, final=final)
        return bytes(out)

    def iter_segments(self, source: _Readable, length: int, *, final: bool) -> Iterator[bytes]:
        """Seal exactly ``length`` bytes read from ``source`` as the next segments.

        For an envelope sent in parts: each part but the last seals whole segments
        (``final=False``, ``length`` a multiple of ``segment_size``); the last part ends with
        the final segment (``final=True``).

        Raises:
            InvalidEnvelopeParameters: a length that does not fit, or after the final segment.
            ValueError: ``source`` ended before ``length`` bytes.
        """
        size = self.segment_size
        if length < 0 or (not final and (length == 0 or length % size)):
            raise InvalidEnvelopeParameters("a non-final run must be whole segments")
        count = _segment_count(length, size) if final else length // size
        out = bytearray(size + TAG_SIZE)
        for index in range(count):
            want = min(size, length - index * size)
            chunk = source.read(want)
            if len(chunk) != want:
                raise ValueError("the source ended early")
            last = final and index == count - 1
            yield bytes(out[: self.seal_segment_into(chunk, out, final=last)])

    def _sealed(self, source: Source) -> Iterator[memoryview]:
        """Seal the whole plaintext of ``source``; yield views of a reused output buffer."""
        if self._index or self._finished:
            raise InvalidEnvelopeParameters("this encryptor has already sealed segments")
        reader = _Reader(source)
        size = self.segment_size
        out = memoryview(bytearray(size + TAG_SIZE))
        data = reader.remaining_buffer()
        if data is not None:  # in memory: seal slices in place, no copy
            last = _segment_count(len(data), size) - 1
            for index in range(last + 1):
                chunk = data[index * size : (index + 1) * size]
                yield out[: self.seal_segment_into(chunk, out, final=index == last)]
            return
        current, spare = memoryview(bytearray(size)), memoryview(bytearray(size))
        got = reader.readinto(current)
        while True:
            if got < size:
                nxt, final = 0, True
            else:
                nxt = reader.readinto(spare)
                final = nxt == 0
            sealed = self.seal_segment_into(current[:got], out, final=final)
            yield out[:sealed]
            if final:
                return
            current, spare, got = spare, current, nxt

    def encrypt_body_stream(self, source: Source, destination: _Writable) -> int:
        """Read all plaintext from ``source``, write the body (not the header) to ``destination``.

        Args:
            source: a binary stream (``readinto`` is used when present), an iterable of
                buffers of any sizes, or one buffer.
            destination: anything with ``write``.

        Returns:
            The number of body bytes written.

        Raises:
            InvalidEnvelopeParameters: this encryptor was already used, or the object is too
                large for its segment size. Source and destination errors pass through.
        """
        written = 0
        for segment in self._sealed(source):
            destination.write(segment)
            written += len(segment)
        return written

    def iter_body(self, source: Source) -> Iterator[bytes]:
        """Yield the body segment by segment (each a new bytes object of ``segment_size + 16``
        bytes at most), reading plaintext from ``source`` as needed.

        Raises:
            As ``encrypt_body_stream``.
        """
        for segment in self._sealed(source):
            yield bytes(segment)


def encrypt_stream(
    source: Source,
    destination: _Writable,
    *,
    dek: bytes,
    context: Mapping[str, str],
    stanzas: Sequence[WrappedKey],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> int:
    """Encrypt ``source`` into ``destination`` as a whole envelope (header, then body).

    Constant memory for any size. See ``Encryptor`` for the arguments and guarantees.

    Returns:
        The number of bytes written.

    Raises:
        InvalidEnvelopeParameters: bad arguments.
    """
    encryptor = Encryptor(dek, context, stanzas, segment_size=segment_size)
    destination.write(encryptor.header)
    return len(encryptor.header) + encryptor.encrypt_body_stream(source, destination)


def encrypt_iter(
    source: Source,
    *,
    dek: bytes,
    context: Mapping[str, str],
    stanzas: Sequence[WrappedKey],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> Iterator[bytes]:
    """Yield a whole envelope: first the header's bytes, then one item per body segment.

    Suits a streaming HTTP upload or a storage write fed from a request body. Arguments are
    checked when the first item is requested.

    Raises:
        InvalidEnvelopeParameters: bad arguments.
    """
    encryptor = Encryptor(dek, context, stanzas, segment_size=segment_size)
    yield encryptor.header
    yield from encryptor.iter_body(source)


def encrypt(
    plaintext: Buffer,
    *,
    dek: bytes,
    context: Mapping[str, str],
    stanzas: Sequence[WrappedKey],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """Encrypt a plaintext held in memory into one envelope (header and body).

    Raises:
        InvalidEnvelopeParameters: bad arguments.
    """
    output = io.BytesIO()
    encrypt_stream(
        plaintext, output, dek=dek, context=context, stanzas=stanzas, segment_size=segment_size
    )
    return output.getvalue()


# --- decryption -------------------------------------------------------------------------------


class Decryptor:
    """Decrypts the body of one envelope whose header has been parsed.

    Construction checks the expected context against the header's and the DEK against the key
    commitment (in constant time) before any segment is touched.

    Security: plaintext is released one segment at a time and only after that segment's tag has
    verified; on a failure the output buffer is wiped before ``AuthenticationFailed`` is raised
    (``cryptography``'s ``decrypt_into`` writes unauthenticated plaintext into the buffer before
    it checks the tag). A streamed body that ends without its final segment raises at the end,
    after the earlier, authentic segments were released: consumers that must not act on a
    partial object write to a temporary place and commit only when the call returns.
    """

    def __init__(self, header: EnvelopeHeader, dek: bytes, context: Mapping[str, str]) -> None:
        """Prepare to decrypt the body that belongs to ``header``.

        Args:
            header: the parsed header.
            dek: the unwrapped 32-byte DEK (see ``unwrap_dek``).
            context: the context the caller expects (tenant, object, version); it must equal
                the header's, so an envelope moved to another object fails.

        Raises:
            InvalidEnvelopeParameters: ``dek`` is not 32 bytes or ``context`` is not a context.
            AuthenticationFailed: the context differs from the header's, or the DEK does not
                match the key commitment.
        """
        try:
            expected = canonical_context(context)
        except (KeyBackendError, ValueError) as exc:
            raise InvalidEnvelopeParameters("the expected context is not a valid context") from exc
        if not hmac.compare_digest(expected, header.context_bytes):
            raise AuthenticationFailed("the envelope was made for another encryption context")
        header.verify_dek(dek)
        self.header = header
        self.segment_size = header.segment_size
        self._aead = AESGCM(_hkdf(dek, header.salt, INFO_PAYLOAD_KEY, 32))
        self._prefix = _hkdf(dek, header.salt, INFO_NONCE_PREFIX, NONCE_PREFIX_SIZE)
        self._aad = header.fixed_hash

    def open_segment_into(
        self, index: int, ciphertext: Buffer, out: bytearray | memoryview, *, final: bool
    ) -> int:
        """Authenticate and decrypt segment ``index`` into ``out``; return the plaintext length.

        Args:
            index: the segment's position in the body (0-based).
            ciphertext: the segment's bytes, tag included.
            out: a writable buffer of at least ``len(ciphertext) - 16`` bytes.
            final: whether this is the object's last segment.

        Raises:
            AuthenticationFailed: the segment does not authenticate at this index with this
                final flag, or has an impossible length. ``out`` is wiped first.
        """
        size = len(ciphertext) - TAG_SIZE
        if not 0 <= index < MAX_SEGMENTS or size < 0:
            raise AuthenticationFailed("the envelope body is truncated")
        if final:
            if size > self.segment_size or (size == 0 and index > 0):
                raise AuthenticationFailed("the envelope's final segment has a bad length")
        elif size != self.segment_size:
            raise AuthenticationFailed("the envelope body is truncated")
        target = memoryview(out)[:size]
        nonce = self._prefix + _NONCE_TAIL.pack(index, final)
        try:
            self._aead.decrypt_into(nonce, ciphertext, self._aad, target)
        except InvalidTag as exc:
            target[:] = bytes(size)
            raise AuthenticationFailed(
                f"segment {index} of the envelope failed to authenticate"
            ) from exc
        return size

    def _opened(self, reader: _Reader) -> Iterator[memoryview]:
        full = self.segment_size + TAG_SIZE
        out = memoryview(bytearray(self.segment_size))
        data = reader.remaining_buffer()
        if data is not None:  # in memory: open slices in place, no copy
            last = _segment_count(len(data), full) - 1
            for index in range(last + 1):
                chunk = data[index * full : (index + 1) * full]
                yield out[: self.open_segment_into(index, chunk, out, final=index == last)]
            return
        current, spare = memoryview(bytearray(full)), memoryview(bytearray(full))
        got = reader.readinto(current)
        index = 0
        while True:
            if got < full:
                nxt, final = 0, True
            else:
                nxt = reader.readinto(spare)
                final = nxt == 0
            opened = self.open_segment_into(index, current[:got], out, final=final)
            yield out[:opened]
            if final:
                return
            current, spare, got = spare, current, nxt
            index += 1

    def decrypt_body_stream(self, source: Source, destination: _Writable) -> int:
        """Decrypt the whole body from ``source`` into ``destination``.

        Each segment is written only after it authenticated. Memory: about three segments.

        Returns:
            The number of plaintext bytes written.

        Raises:
            AuthenticationFailed: a segment fails, the body is truncated, or data follows the
                final segment; earlier segments have already been written.
        """
        written = 0
        for plaintext in self._opened(_Reader(source)):
            destination.write(plaintext)
            written += len(plaintext)
        return written

    def iter_body(self, source: Source) -> Iterator[bytes]:
        """Yield the plaintext segment by segment, each only after it authenticated.

        Raises:
            As ``decrypt_body_stream``, from the iteration that reaches the bad segment.
        """
        for plaintext in self._opened(_Reader(source)):
            yield bytes(plaintext)

    def decrypt_range(self, plan: RangePlan, source: Source) -> Iterator[bytes]:
        """Yield the plaintext of ``plan``'s range from exactly the ciphertext it names.

        Args:
            plan: from ``plan_range`` with this header's segment size.
            source: the body bytes ``[plan.ciphertext_start, plan.ciphertext_end)``.

        Raises:
            InvalidEnvelopeParameters: the plan is for another segment size.
            AuthenticationFailed: a segment fails, the source is short, or it is longer than
                the plan.
        """
        if plan.segment_size != self.segment_size:
            raise InvalidEnvelopeParameters("the range plan is for another segment size")
        reader = _Reader(source)
        full = self.segment_size + TAG_SIZE
        body_end = plan.ciphertext_end
        buffer = memoryview(bytearray(full))
        out = memoryview(bytearray(self.segment_size))
        remaining = plan.length
        skip = plan.skip
        for index in range(plan.first_segment, plan.last_segment + 1):
            expected = min(full, body_end - index * full)
            got = reader.readinto(buffer[:expected])
            if got != expected:
                raise AuthenticationFailed("the envelope body is truncated")
            opened = self.open_segment_into(
                index, buffer[:got], out, final=index == plan.final_segment
            )
            piece = out[skip : min(opened, skip + remaining)]
            skip = 0
            remaining -= len(piece)
            yield bytes(piece)
        if reader.readinto(memoryview(bytearray(1))):
            raise AuthenticationFailed("data follows the planned range")


def _resolve_key(key: KeySource, header: EnvelopeHeader) -> bytes:
    return key(header) if callable(key) else key


def decrypt_stream(
    source: Source,
    destination: _Writable,
    *,
    key: KeySource,
    context: Mapping[str, str],
) -> int:
    """Decrypt a whole envelope (header, then body) from ``source`` into ``destination``.

    Args:
        source: a binary stream, an iterable of buffers, or one buffer.
        destination: anything with ``write``; it receives each segment once authenticated.
        key: the DEK, or a function given the parsed header that returns it (for instance
            ``lambda h: unwrap_dek(h, backend.unwrap ..., backend="tpm")``).
        context: the context the caller expects.

    Returns:
        The number of plaintext bytes written.

    Raises:
        EnvelopeFormatError, UnsupportedEnvelope: a malformed header.
        AuthenticationFailed: wrong key or context, tampering, truncation, trailing data.
        Whatever ``key`` raises when it is a function (through ``unwrap_dek``:
        ``NoMatchingStanza`` and the backend's ``KeyBackendError``), and the errors of
        ``source`` and ``destination``, pass through unchanged.
    """
    reader = _Reader(source)
    header, _ = _parse(reader.read_exact)
    decryptor = Decryptor(header, _resolve_key(key, header), context)
    written = 0
    for plaintext in decryptor._opened(reader):
        destination.write(plaintext)
        written += len(plaintext)
    return written


def decrypt_iter(source: Source, *, key: KeySource, context: Mapping[str, str]) -> Iterator[bytes]:
    """Yield the plaintext of a whole envelope segment by segment, each once authenticated.

    Raises:
        As ``decrypt_stream``, from the iteration that reaches the problem.
    """
    reader = _Reader(source)
    header, _ = _parse(reader.read_exact)
    decryptor = Decryptor(header, _resolve_key(key, header), context)
    for plaintext in decryptor._opened(reader):
        yield bytes(plaintext)


def decrypt(envelope: Buffer, *, key: KeySource, context: Mapping[str, str]) -> bytes:
    """Decrypt a whole envelope held in memory; nothing is returned unless all of it
    authenticates.

    Raises:
        As ``decrypt_stream``.
    """
    output = io.BytesIO()
    decrypt_stream(envelope, output, key=key, context=context)
    return output.getvalue()
