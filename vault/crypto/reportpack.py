"""Evidence packs of compliance runs: building them on the server, verifying them offline.
Django-free.

A pack (``docs/compliance.md``, "Evidence pack format") is a ZIP file whose ``manifest.json``
lists every other member with its SHA-256 and size, signed by the report signer
(``manifest.sig``, base64 of a DER ECDSA P-256/SHA-256 signature) whose certificate the report CA
issued. ``audit/proofs.json`` ties the run to the tenant's audit log: two signed checkpoints, the
consistency proof between them, and inclusion proofs of the anchor events.

The server writes packs with :func:`build_pack` (and ``audit/proofs.json`` with
:func:`build_audit_proofs`); ``cvault report verify`` checks them with :func:`verify_pack`, using
nothing but the standard library, ``cryptography`` and ``vault.crypto``.

The ZIP container is read by this module's own strict parser, not by :mod:`zipfile`, so that
what is verified is exactly what ``unzip`` extracts: the end record must be the file's last 22
bytes (no comment, no trailing data), members must tile the file from byte 0 to the central
directory (no prepended, hidden or overlapping data), local headers must agree with the central
directory, only stored and deflated members without encryption, data descriptors or ZIP64,
needing no ZIP version above 2.0 and with only well-formed extra fields (what ``zipfile`` and
``unzip`` refuse, the verifier refuses too), and member names are relative paths of
``[A-Za-z0-9._-]`` segments with no duplicate even ignoring case. Everything read is bounded:
the pack's size, the member count, the total uncompressed size (declared sizes are checked
before anything is inflated, and inflating stops at the declared size), and each metadata
member's size.

Trust comes from the CA certificate the caller passes (saved by ``cvault trust save``), never from
the copy inside the pack. Without one, every other check still runs against the pack's own CA
copy, and the report says the pack is *unanchored*.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from vault.crypto.auditbundle import LeafFormatError, format_time, parse_leaf
from vault.crypto.canonical import (
    NotCanonicalizable,
    StrictJsonError,
    canonical_json,
    strict_decode,
)
from vault.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointKey,
    InvalidCheckpointParameters,
    SignedNote,
    open_checkpoint,
)
from vault.crypto.merkle import (
    MAX_PROOF_HASHES,
    MAX_TREE_SIZE,
    InvalidProofParameters,
    MerkleTree,
    ProofVerificationFailed,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "CA_PATH",
    "MANIFEST_PATH",
    "MAX_MEMBERS",
    "MAX_PACK_BYTES",
    "MAX_UNCOMPRESSED_BYTES",
    "PACK_FORMAT",
    "PROOFS_PATH",
    "SIGNATURE_PATH",
    "SIGNER_PATH",
    "VERIFY_PATH",
    "AuditTrust",
    "InvalidPackParameters",
    "PackError",
    "PackFormatError",
    "PackManifestError",
    "PackNameError",
    "PackReport",
    "PackSigningFailed",
    "PackTooLarge",
    "build_audit_proofs",
    "build_pack",
    "ca_certificate_problems",
    "certificate_fingerprint",
    "load_certificate",
    "verify_pack",
]

#: The value of a manifest's ``format`` member.
PACK_FORMAT = "ciphervault-evidence-pack/1"
MANIFEST_PATH = "manifest.json"
SIGNATURE_PATH = "manifest.sig"
CA_PATH = "certificates/report-ca.pem"
SIGNER_PATH = "certificates/report-signer.pem"
PROOFS_PATH = "audit/proofs.json"
VERIFY_PATH = "VERIFY.md"
#: Largest pack :func:`verify_pack` reads (it holds the whole ZIP in memory).
MAX_PACK_BYTES = 1 << 30
#: Most members in a pack (manifest and signature included).
MAX_MEMBERS = 50_000
#: Largest total of the members' uncompressed sizes (the zip bomb bound).
MAX_UNCOMPRESSED_BYTES = 2 << 30
#: Largest ``manifest.json``, ``manifest.sig``, certificate and ``audit/proofs.json`` accepted.
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_FILE_BYTES = 512
MAX_CERTIFICATE_BYTES = 64 << 10
MAX_PROOFS_BYTES = 16 << 20
#: Largest ``reports/report.json`` read to check it against the run's anchor event.
MAX_REPORT_BYTES = 256 << 20
REPORT_PATH = "reports/report.json"
EVIDENCE_PREFIX = "evidence/"
#: Most anchors and audit keys in ``audit/proofs.json``.
MAX_ANCHORS = 10_000
MAX_AUDIT_KEYS = 16

_RESERVED = frozenset({MANIFEST_PATH, SIGNATURE_PATH, CA_PATH, SIGNER_PATH, VERIFY_PATH})
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
_MAX_PATH_BYTES = 255
_EVIDENCE = re.compile(r"evidence/([0-9a-f]{64})\.json")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MANIFEST_MEMBERS = frozenset({"format", "tenant", "run", "created_at", "files", "signer"})
_FILE_MEMBERS = frozenset({"path", "sha256", "size"})
_SIGNER = {"certificate": SIGNER_PATH, "ca": CA_PATH}
_PROOFS_MEMBERS = frozenset({"origin", "keys", "start", "end", "consistency", "anchors"})
_ANCHOR_MEMBERS = frozenset({"leaf", "index", "proof"})
_MAX_SAFE_INTEGER = 2**53 - 1
_CHUNK = 1 << 16

# ZIP records (APPNOTE.TXT 4.3): end of central directory, central directory header, local header.
_EOCD = struct.Struct("<IHHHHIIH")
_CENTRAL = struct.Struct("<IBBBBHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<IBBHHHHIIIHH")
_EOCD_SIGNATURE = 0x06054B50
_CENTRAL_SIGNATURE = 0x02014B50
_LOCAL_SIGNATURE = 0x04034B50
_STORED, _DEFLATED = 0, 8
_ALLOWED_FLAGS = 0x0806  # deflate options (bits 1-2), UTF-8 names (bit 11)
_ZIP64_MARK = 0xFFFFFFFF
# "Version needed to extract": 2.0 covers stored and deflated members; a pack never needs more,
# and a reader (unzip, zipfile) refuses members that claim to need a version it lacks.
_MAX_NEEDS = 20
_NEEDS_PROBLEM = "a member that claims to need a ZIP version above 2.0"
_ZIP64_EXTRA = 0x0001


# --------------------------------------------------------------------------------------------
# Errors


class PackError(Exception):
    """Base of every evidence pack error: whatever the subclass, the pack is **not** verified."""

    code = "pack_error"


class InvalidPackParameters(PackError, ValueError):
    """The caller passed something a pack cannot carry (to :func:`build_pack` or
    :func:`build_audit_proofs`), or a trusted CA certificate that is not one PEM certificate."""

    code = "pack_invalid_parameters"


class PackSigningFailed(PackError):
    """``sign`` returned something that is not a DER ECDSA signature valid under the signer
    certificate's key (a wrong key, a broken backend): nothing unverifiable is ever written."""

    code = "pack_signing_failed"


class PackFormatError(PackError):
    """The pack is not a ZIP of the documented strict form: not a ZIP, data before, between or
    after its members, a comment, encryption, a data descriptor, ZIP64, a malformed extra field,
    a member claiming to need a ZIP version above 2.0, another compression method, local headers
    that disagree with the central directory, a corrupt member."""

    code = "pack_malformed"


class PackTooLarge(PackFormatError):
    """The pack exceeds a bound: its size, its member count, or the total size its members
    declare uncompressed (the zip bomb bound)."""

    code = "pack_too_large"


class PackNameError(PackFormatError):
    """A member name is absolute, has a ``..`` or empty component, a backslash, a character
    outside ``[A-Za-z0-9._-]``, is a directory entry, or duplicates another (ignoring case), or a
    name is both a file and a directory."""

    code = "pack_bad_member_name"


class PackManifestError(PackFormatError):
    """``manifest.json`` is missing, too large, or not canonical JSON of exactly the documented
    members and types."""

    code = "pack_manifest_malformed"


class _Corrupt(Exception):
    """Internal: a member's data does not inflate to exactly its declared size and CRC."""


class _ProofsInvalid(Exception):
    """Internal: ``audit/proofs.json`` is malformed."""


# --------------------------------------------------------------------------------------------
# Small strict codecs


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Standard base64 with padding, canonical only; None when it is not."""
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    return data if _b64(data) == text else None


def _hex_hash(value: object) -> bytes | None:
    """32 bytes from 64 lowercase hex digits; None for anything else."""
    if type(value) is not str or _HEX_DIGEST.fullmatch(value) is None:
        return None
    return bytes.fromhex(value)


def _line_ok(text: object, limit: int = 1024) -> bool:
    if type(text) is not str or not text or _CONTROL.search(text) is not None:
        return False
    try:
        return len(text.encode("utf-8")) <= limit
    except UnicodeEncodeError:
        return False


def _time_ok(value: object) -> bool:
    return (
        type(value) is str and _TIME.fullmatch(value) is not None and _parse_time(value) is not None
    )


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        return None


# Internal: JSON the strict decoder refuses.
_Malformed = StrictJsonError


def _strict_json(data: bytes) -> Any:
    """Exactly one JSON value making up all of ``data`` (UTF-8; no duplicate member, float, NaN,
    surrounding whitespace).

    Raises:
        _Malformed: anything else.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8") from None
    value, end = strict_decode(text)
    if end != len(text):
        raise _Malformed("data after the JSON value")
    return value


def _exact(value: object, members: frozenset[str]) -> dict[str, Any] | None:
    """``value`` if it is a JSON object with exactly ``members``, else None."""
    if type(value) is not dict or value.keys() != members:
        return None
    return value


def _wrong_members(value: object, members: frozenset[str], what: str) -> str:
    if type(value) is not dict:
        return f"{what} is not a JSON object"
    missing = sorted(members - value.keys())
    unknown = sorted(repr(k)[:40] for k in value.keys() - members)[:5]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unknown {', '.join(unknown)}"] if unknown else []
    )
    return f"{what} has the wrong members ({'; '.join(parts)})"


def _shown(name: str) -> str:
    """A member name safe to put in a message (escaped, bounded)."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# Member names


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable member path, or None."""
    if not name:
        return "an empty name"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "a '..' component"
    if "\\" in name:
        return "a backslash"
    if name.endswith("/"):
        return "a directory entry"
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        return f"longer than {_MAX_PATH_BYTES} bytes"
    if _PATH.fullmatch(name) is None:
        return (
            "not a relative path of at most 8 segments of [A-Za-z0-9._-], each starting with a "
            "letter or digit"
        )
    return None


def _name_set_problem(names: Iterable[str]) -> str | None:
    """Why a set of member paths cannot be extracted unambiguously, or None: a duplicate (also
    ignoring case, as on macOS and Windows), or a name that is also another's directory."""
    seen: dict[str, str] = {}
    for name in names:
        folded = name.casefold()
        if folded in seen:
            other = seen[folded]
            if other == name:
                return f"duplicate member name {_shown(name)}"
            return f"member names {_shown(other)} and {_shown(name)} differ only in case"
        seen[folded] = name
    for folded, name in seen.items():
        parts = folded.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in seen:
                return f"{_shown(seen[prefix])} is a file and also the directory of {_shown(name)}"
    return None


# --------------------------------------------------------------------------------------------
# The ZIP container


@dataclass(frozen=True, slots=True)
class _Member:
    """One member of the ZIP, from its central directory entry checked against its local
    header."""

    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    data_start: int


def _read_zip(data: bytes, *, max_members: int, max_uncompressed: int) -> dict[str, _Member]:
    """Parse the ZIP's structure strictly (see the module docstring); inflate nothing.

    Raises:
        PackFormatError, PackTooLarge, PackNameError: as documented on each class.
    """
    end = len(data) - _EOCD.size
    if end < 0:
        raise PackFormatError("not a ZIP file (too short)")
    (signature, disk, cd_disk, on_disk, total, cd_size, cd_offset, comment) = _EOCD.unpack_from(
        data, end
    )
    if signature != _EOCD_SIGNATURE:
        raise PackFormatError(
            "not a ZIP file, or a ZIP with a comment or data after its end record"
        )
    if disk or cd_disk or on_disk != total:
        raise PackFormatError("a multi-disk ZIP")
    if comment:
        raise PackFormatError("a ZIP comment")
    if total == 0xFFFF or _ZIP64_MARK in (cd_size, cd_offset):
        raise PackFormatError("a ZIP64 archive (evidence packs never need ZIP64)")
    if total > max_members:
        raise PackTooLarge(f"the pack has {total} members, more than the {max_members} allowed")
    if cd_offset + cd_size != end:
        raise PackFormatError(
            "data between the central directory and the end record (or a ZIP64 record)"
        )
    central: list[tuple[str, bytes, int, int, int, int, int, int]] = []
    position = cd_offset
    for _ in range(total):
        if position + _CENTRAL.size > end:
            raise PackFormatError("the central directory is truncated")
        (
            signature,
            _made_by,
            _made_on,
            needs,
            needs_on,
            flags,
            method,
            _time,
            _date,
            crc,
            csize,
            size,
            name_len,
            extra_len,
            comment_len,
            disk_start,
            _internal,
            _external,
            offset,
        ) = _CENTRAL.unpack_from(data, position)
        name_start = position + _CENTRAL.size
        position = name_start + name_len + extra_len + comment_len
        if signature != _CENTRAL_SIGNATURE or position > end:
            raise PackFormatError("the central directory is malformed")
        raw_name = data[name_start : name_start + name_len]
        if comment_len:
            raise PackFormatError("a member comment")
        if needs > _MAX_NEEDS or needs_on:
            raise PackFormatError(_NEEDS_PROBLEM)
        if not _extra_ok(data[name_start + name_len : position - comment_len]):
            raise PackFormatError("a member with a malformed or ZIP64 extra field")
        if disk_start:
            raise PackFormatError("a multi-disk ZIP")
        if flags & 0x0001 or flags & 0x0040:
            raise PackFormatError("an encrypted member")
        if flags & 0x0008:
            raise PackFormatError("a member with a data descriptor")
        if flags & ~_ALLOWED_FLAGS:
            raise PackFormatError(f"a member with unsupported flags 0x{flags:04x}")
        if method not in (_STORED, _DEFLATED):
            raise PackFormatError(f"a member compressed with method {method} (not stored/deflate)")
        if _ZIP64_MARK in (csize, size, offset):
            raise PackFormatError("a ZIP64 member (evidence packs never need ZIP64)")
        if method == _STORED and csize != size:
            raise PackFormatError("a stored member whose sizes differ")
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise PackNameError(f"a member name is not ASCII: {raw_name[:60]!r}") from None
        problem = _name_problem(name)
        if problem is not None:
            raise PackNameError(f"member name {_shown(name)}: {problem}")
        central.append((name, raw_name, flags, method, crc, csize, size, offset))
    if position != end:
        raise PackFormatError("data inside the central directory after its last entry")
    problem = _name_set_problem(entry[0] for entry in central)
    if problem is not None:
        raise PackNameError(problem)
    declared = sum(entry[6] for entry in central)
    if declared > max_uncompressed:
        raise PackTooLarge(
            f"the members declare {declared} bytes uncompressed, more than the "
            f"{max_uncompressed} allowed (a zip bomb?)"
        )
    members: dict[str, _Member] = {}
    expected = 0
    for name, raw_name, flags, method, crc, csize, size, offset in sorted(
        central, key=lambda entry: entry[7]
    ):
        if offset != expected:
            raise PackFormatError(
                f"member {_shown(name)}: data before it that no member owns, or members that "
                "overlap"
            )
        if offset + _LOCAL.size > cd_offset:
            raise PackFormatError(f"member {_shown(name)}: its local header is truncated")
        local = _LOCAL.unpack_from(data, offset)
        name_len, extra_len = local[10], local[11]
        data_start = offset + _LOCAL.size + name_len + extra_len
        if data_start > cd_offset:
            raise PackFormatError(f"member {_shown(name)}: its local header is truncated")
        if local[1] > _MAX_NEEDS or local[2]:
            raise PackFormatError(f"member {_shown(name)}: {_NEEDS_PROBLEM}")
        if not _extra_ok(data[offset + _LOCAL.size + name_len : data_start]):
            raise PackFormatError(f"member {_shown(name)}: a malformed or ZIP64 extra field")
        if (
            local[0] != _LOCAL_SIGNATURE
            or (local[3], local[4], *local[7:10]) != (flags, method, crc, csize, size)
            or data[offset + _LOCAL.size : offset + _LOCAL.size + name_len] != raw_name
        ):
            raise PackFormatError(
                f"member {_shown(name)}: its local header disagrees with the central directory"
            )
        expected = data_start + csize
        if expected > cd_offset:
            raise PackFormatError(f"member {_shown(name)}: its data runs into the directory")
        members[name] = _Member(name, method, crc, csize, size, data_start)
    if expected != cd_offset:
        raise PackFormatError("data between the last member and the central directory")
    return members


def _extra_ok(extra: bytes) -> bool:
    """An extra field of well-formed (id, size, data) records, none of them ZIP64: what every
    reader parses the same way (``zipfile`` refuses a malformed one)."""
    position = 0
    while position < len(extra):
        if position + 4 > len(extra):
            return False
        kind, size = struct.unpack_from("<HH", extra, position)
        position += 4 + size
        if kind == _ZIP64_EXTRA or position > len(extra):
            return False
    return True


def _inflate(data: bytes, member: _Member) -> Iterator[bytes]:
    """The member's uncompressed bytes, in chunks of at most 64 KiB.

    Raises:
        _Corrupt: a corrupt deflate stream, more or fewer bytes than declared, data after the
            deflate stream, or a CRC mismatch. Never produces more than the declared size.
    """
    view = memoryview(data)[member.data_start : member.data_start + member.compressed_size]
    crc = 0
    produced = 0

    def account(chunk: bytes) -> bytes:
        nonlocal crc, produced
        produced += len(chunk)
        if produced > member.size:
            raise _Corrupt("it inflates to more than its declared size")
        crc = zlib.crc32(chunk, crc)
        return chunk

    if member.method == _STORED:
        for start in range(0, len(view), _CHUNK):
            yield account(bytes(view[start : start + _CHUNK]))
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        consumed = 0
        pending: bytes | memoryview = b""
        try:
            while not inflater.eof:
                if not pending:
                    if consumed >= len(view):
                        break
                    pending = view[consumed : consumed + _CHUNK]
                    consumed += len(pending)
                chunk = inflater.decompress(pending, _CHUNK)
                pending = inflater.unconsumed_tail
                if chunk:
                    yield account(chunk)
            while not inflater.eof:  # output zlib still holds after the last input
                chunk = inflater.decompress(b"", _CHUNK)
                if not chunk:
                    break
                yield account(chunk)
        except zlib.error as exc:
            raise _Corrupt("its deflate data is corrupt") from exc
        if not inflater.eof:
            raise _Corrupt("its deflate data is truncated")
        if pending or inflater.unused_data or consumed < len(view):
            raise _Corrupt("data after its deflate stream")
    if produced != member.size:
        raise _Corrupt(f"it inflates to {produced} bytes, not the {member.size} declared")
    if crc != member.crc:
        raise _Corrupt("its CRC-32 does not match")


def _read_member(data: bytes, member: _Member, limit: int) -> bytes:
    """A small member's bytes, refusing more than ``limit``.

    Raises:
        _Corrupt: larger than ``limit``, or corrupt (see :func:`_inflate`).
    """
    if member.size > limit:
        raise _Corrupt(f"it is {member.size} bytes, more than the {limit} allowed")
    return b"".join(_inflate(data, member))


# --------------------------------------------------------------------------------------------
# Certificates


def load_certificate(pem: bytes, *, canonical: bool = False) -> x509.Certificate:
    """Load exactly one PEM X.509 certificate.

    Args:
        pem: the PEM text.
        canonical: also require ``pem`` to be exactly the certificate's standard PEM encoding
            (one block, 64-character lines, final newline, nothing around it).

    Returns:
        The certificate.

    Raises:
        InvalidPackParameters: no certificate, more than one, not PEM, not canonical.
    """
    if type(pem) is not bytes:
        raise InvalidPackParameters("a PEM certificate is bytes")
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidPackParameters("not a PEM certificate") from exc
    if len(certificates) != 1:
        raise InvalidPackParameters(f"{len(certificates)} certificates where one was expected")
    certificate = certificates[0]
    if canonical and certificate.public_bytes(serialization.Encoding.PEM) != pem:
        raise InvalidPackParameters("not exactly one certificate in standard PEM form")
    return certificate


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER encoding, in lowercase hex (what
    ``GET /api/v1/compliance/ca/`` states and ``cvault trust save`` prints)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a duplicated or unparsable extension
        return False


def _validity_problem(certificate: x509.Certificate, at: datetime) -> str | None:
    before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if before <= at <= after:
        return None
    return (
        f"not valid at the manifest's created_at {format_time(at)} (valid from "
        f"{format_time(before)} to {format_time(after)})"
    )


def ca_certificate_problems(
    certificate: x509.Certificate, *, at: datetime | None = None
) -> list[str]:
    """Why ``certificate`` cannot serve as the report CA, if it cannot.

    Args:
        certificate: the CA certificate.
        at: the time it must be valid at (None: not checked).

    Returns:
        The problems (empty when it is usable): no basicConstraints with CA true, a keyUsage
        without keyCertSign, outside its validity period at ``at``.
    """
    problems = []
    constraints = _extension(certificate, x509.BasicConstraints)
    if not constraints or not constraints.ca:
        problems.append("not a CA certificate (no basicConstraints with CA true)")
    usage = _extension(certificate, x509.KeyUsage)
    if usage is False or (usage is not None and not usage.key_cert_sign):
        problems.append("its key usage does not allow keyCertSign")
    if at is not None:
        validity = _validity_problem(certificate, at)
        if validity is not None:
            problems.append(validity)
    return problems


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _signer_problems(
    signer: x509.Certificate, ca: x509.Certificate, ca_name: str, at: datetime
) -> list[str]:
    """Why ``signer`` is not a report signer certificate issued by ``ca`` valid at ``at``."""
    problems = []
    try:
        signer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        problems.append(
            f"not issued by {ca_name} (SHA-256 {certificate_fingerprint(ca)}): its issuer or "
            "signature does not match"
        )
    validity = _validity_problem(signer, at)
    if validity is not None:
        problems.append(validity)
    usage = _extension(signer, x509.KeyUsage)
    if not usage or not usage.digital_signature:
        problems.append("its key usage does not include digitalSignature")
    constraints = _extension(signer, x509.BasicConstraints)
    if constraints is False or (constraints is not None and constraints.ca):
        problems.append("it is a CA certificate, not a signer's")
    if not _is_p256(signer.public_key()):
        problems.append("its key is not an ECDSA P-256 key")
    return problems


def _signature_ok(key: object, message: bytes, signature: bytes) -> bool:
    """A canonical DER ECDSA P-256/SHA-256 signature over ``message`` under ``key``."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    if encode_dss_signature(r, s) != signature:  # BER, trailing bytes: not the DER we sign
        return False
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True, slots=True)
class _FileEntry:
    path: str
    sha256: bytes
    size: int


@dataclass(frozen=True)
class _Manifest:
    tenant: str
    run: str
    created_at: str
    created: datetime
    files: tuple[_FileEntry, ...]


def _parse_manifest(raw: bytes, *, max_members: int) -> _Manifest:
    """Check ``manifest.json``'s shape strictly (canonical JSON, exact members and types).

    Raises:
        PackManifestError: anything else.
    """
    try:
        document = _strict_json(raw)
    except _Malformed as exc:
        raise PackManifestError(f"manifest.json is not strict JSON: {exc}") from None
    root = _exact(document, _MANIFEST_MEMBERS)
    if root is None:
        raise PackManifestError(_wrong_members(document, _MANIFEST_MEMBERS, "manifest.json"))
    try:
        canonical = canonical_json(root)
    except NotCanonicalizable as exc:
        raise PackManifestError(f"manifest.json has no canonical form: {exc}") from None
    if canonical != raw:
        raise PackManifestError("manifest.json is not canonical JSON (RFC 8785)")
    if root["format"] != PACK_FORMAT:
        raise PackManifestError(f"manifest.json's format is not {PACK_FORMAT}")
    if not _line_ok(root["tenant"], 200):
        raise PackManifestError("manifest.json's tenant is not one printable line")
    if type(root["run"]) is not str or _UUID.fullmatch(root["run"]) is None:
        raise PackManifestError("manifest.json's run is not a lowercase hyphenated UUID")
    created = _parse_time(root["created_at"]) if _time_ok(root["created_at"]) else None
    if created is None:
        raise PackManifestError("manifest.json's created_at is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if root["signer"] != _SIGNER:
        raise PackManifestError(
            f"manifest.json's signer is not {{certificate: {SIGNER_PATH}, ca: {CA_PATH}}}"
        )
    listed = root["files"]
    if type(listed) is not list:
        raise PackManifestError("manifest.json's files is not a list")
    if len(listed) > max_members:
        raise PackTooLarge(f"the manifest lists more than {max_members} files")
    files = []
    for position, item in enumerate(listed):
        what = f"manifest.json files[{position}]"
        entry = _exact(item, _FILE_MEMBERS)
        if entry is None:
            raise PackManifestError(_wrong_members(item, _FILE_MEMBERS, what))
        path, digest, size = entry["path"], _hex_hash(entry["sha256"]), entry["size"]
        problem = _name_problem(path) if type(path) is str else "not a string"
        if problem is not None:
            raise PackManifestError(f"{what}: path {_shown(str(path))}: {problem}")
        if path in (MANIFEST_PATH, SIGNATURE_PATH):
            raise PackManifestError(f"{what}: the manifest cannot list {path}")
        if digest is None:
            raise PackManifestError(f"{what}: sha256 is not 64 lowercase hex digits")
        if type(size) is not int or not 0 <= size <= _MAX_SAFE_INTEGER:
            raise PackManifestError(f"{what}: size is not an integer in [0, 2**53 - 1]")
        files.append(_FileEntry(path, digest, size))
    problem = _name_set_problem(f.path for f in files)
    if problem is not None:
        raise PackManifestError(f"manifest.json's files: {problem}")
    return _Manifest(
        tenant=root["tenant"],
        run=root["run"],
        created_at=root["created_at"],
        created=created,
        files=tuple(files),
    )


# --------------------------------------------------------------------------------------------
# audit/proofs.json


@dataclass(frozen=True)
class _Anchor:
    leaf: bytes
    index: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class _Proofs:
    origin: str
    keys: tuple[CheckpointKey, ...]
    start: bytes
    end: bytes
    consistency: tuple[bytes, ...]
    anchors: tuple[_Anchor, ...]


def _hashes(value: object, what: str) -> tuple[bytes, ...]:
    if type(value) is not list:
        raise _ProofsInvalid(f"{what} is not a list")
    if len(value) > MAX_PROOF_HASHES:
        raise _ProofsInvalid(f"{what} has more than {MAX_PROOF_HASHES} hashes")
    hashes = tuple(_hex_hash(item) for item in value)
    if any(h is None for h in hashes):
        raise _ProofsInvalid(f"{what} holds a hash that is not 64 lowercase hex digits")
    return tuple(h for h in hashes if h is not None)


def _note(value: object, what: str) -> bytes:
    if type(value) is not str:
        raise _ProofsInvalid(f"{what} is not a string")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _ProofsInvalid(f"{what} is not valid Unicode") from None


def _parse_proofs(raw: bytes) -> _Proofs:
    """Check ``audit/proofs.json``'s shape strictly, verifying nothing.

    Raises:
        _ProofsInvalid: not strict JSON of exactly the documented members and types.
    """
    try:
        document = _strict_json(raw)
    except _Malformed as exc:
        raise _ProofsInvalid(f"not strict JSON: {exc}") from None
    root = _exact(document, _PROOFS_MEMBERS)
    if root is None:
        raise _ProofsInvalid(_wrong_members(document, _PROOFS_MEMBERS, "the document"))
    origin = root["origin"]
    if not _line_ok(origin):
        raise _ProofsInvalid("origin is not one printable line")
    vkeys = root["keys"]
    if type(vkeys) is not list or not 1 <= len(vkeys) <= MAX_AUDIT_KEYS:
        raise _ProofsInvalid(f"keys is not a list of 1 to {MAX_AUDIT_KEYS} verifier keys")
    keys = []
    for position, vkey in enumerate(vkeys):
        try:
            keys.append(CheckpointKey.from_vkey(vkey))
        except InvalidCheckpointParameters as exc:
            raise _ProofsInvalid(f"keys[{position}] is not a verifier key: {exc}") from None
    raw_anchors = root["anchors"]
    if type(raw_anchors) is not list or len(raw_anchors) > MAX_ANCHORS:
        raise _ProofsInvalid(f"anchors is not a list of at most {MAX_ANCHORS} anchors")
    anchors = []
    indices: set[int] = set()
    for position, item in enumerate(raw_anchors):
        what = f"anchors[{position}]"
        entry = _exact(item, _ANCHOR_MEMBERS)
        if entry is None:
            raise _ProofsInvalid(_wrong_members(item, _ANCHOR_MEMBERS, what))
        leaf = _b64decode(entry["leaf"]) if type(entry["leaf"]) is str else None
        if not leaf:
            raise _ProofsInvalid(f"{what}.leaf is not canonical base64 of a non-empty leaf")
        index = entry["index"]
        if type(index) is not int or not 0 <= index <= MAX_TREE_SIZE:
            raise _ProofsInvalid(f"{what}.index is not an integer in [0, 2**64 - 1]")
        if index in indices:  # one event counted twice would inflate the report's anchors
            raise _ProofsInvalid(f"{what}.index repeats another anchor's")
        indices.add(index)
        anchors.append(_Anchor(leaf, index, _hashes(entry["proof"], f"{what}.proof")))
    return _Proofs(
        origin=origin,
        keys=tuple(keys),
        start=_note(root["start"], "start"),
        end=_note(root["end"], "end"),
        consistency=_hashes(root["consistency"], "consistency"),
        anchors=tuple(anchors),
    )


#: ``audit_trust(origin)``: the checkpoint keys the user saved for that audit log, or None.
AuditTrust = Callable[[str], Sequence[CheckpointKey] | None]


@dataclass
class _AuditFacts:
    origin: str
    start_size: int | None = None
    end_size: int | None = None
    anchors: int = 0
    anchor_events: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the anchors proved in
    saved_keys: bool = False


def _open(
    proofs: _Proofs,
    which: str,
    saved: Sequence[CheckpointKey] | None,
    problems: list[str],
) -> Checkpoint | None:
    note = proofs.start if which == "start" else proofs.end
    try:
        checkpoint = open_checkpoint(note, keys=proofs.keys, origin=proofs.origin)
    except CheckpointError as exc:
        problems.append(
            f"{PROOFS_PATH}: the {which} checkpoint does not verify under the keys it lists: "
            f"{exc} ({exc.code})"
        )
        return None
    if saved:
        try:
            open_checkpoint(note, keys=saved, origin=proofs.origin)
        except CheckpointError as exc:
            problems.append(
                f"{PROOFS_PATH}: the {which} checkpoint is not signed by a key saved for "
                f"{proofs.origin} (cvault trust save): {exc} ({exc.code})"
            )
            return None
    return checkpoint


def _check_proofs(
    raw: bytes, audit_trust: AuditTrust | None, problems: list[str]
) -> _AuditFacts | None:
    """Verify ``audit/proofs.json``; append a problem for each check that fails."""
    try:
        proofs = _parse_proofs(raw)
    except _ProofsInvalid as exc:
        problems.append(f"{PROOFS_PATH}: malformed: {exc}")
        return None
    facts = _AuditFacts(origin=proofs.origin)
    saved = audit_trust(proofs.origin) if audit_trust is not None else None
    facts.saved_keys = bool(saved)
    start = _open(proofs, "start", saved, problems)
    end = _open(proofs, "end", saved, problems)
    facts.start_size = start.size if start is not None else None
    facts.end_size = end.size if end is not None else None
    if start is not None and end is not None:
        if start.size > end.size:
            problems.append(
                f"{PROOFS_PATH}: the end checkpoint (size {end.size}) is smaller than the start "
                f"checkpoint (size {start.size})"
            )
        elif start.size == 0:
            if proofs.consistency:
                problems.append(
                    f"{PROOFS_PATH}: a consistency proof from the empty tree must be empty"
                )
        else:
            try:
                verify_consistency(
                    old_size=start.size,
                    new_size=end.size,
                    old_root=start.root_hash,
                    new_root=end.root_hash,
                    proof=proofs.consistency,
                )
            except ProofVerificationFailed as exc:
                problems.append(
                    f"{PROOFS_PATH}: the end checkpoint (size {end.size}) does not extend the "
                    f"start checkpoint (size {start.size}): {exc}"
                )
    for position, anchor in enumerate(proofs.anchors):
        what = f"{PROOFS_PATH}: anchor {position} (index {anchor.index})"
        try:
            event = parse_leaf(anchor.leaf)
        except LeafFormatError as exc:
            problems.append(f"{what}: not a canonical audit event: {exc}")
            continue
        if event["log"] != proofs.origin:
            problems.append(f"{what}: the event is from another log than {proofs.origin}")
            continue
        if end is None:
            continue  # no trusted root to prove it into; the checkpoint's problem is reported
        try:
            verify_inclusion(
                index=anchor.index,
                tree_size=end.size,
                leaf_hash=leaf_hash(anchor.leaf),
                proof=anchor.proof,
                root=end.root_hash,
            )
        except ProofVerificationFailed as exc:
            problems.append(
                f"{what}: the event {event['id']} is not in the log at the end checkpoint "
                f"(size {end.size}): {exc}"
            )
            continue
        facts.anchors += 1
        facts.anchor_events.append(event["id"])
        facts.events.append(event)
    return facts


def _check_run_anchor(
    data: bytes,
    members: Mapping[str, _Member],
    manifest: _Manifest,
    audit: _AuditFacts,
    problems: list[str],
) -> None:
    """The run's ``compliance.evidence`` event, proved into the tenant's audit log above, must
    name exactly the pack's evidence files and the digest of the report's results: the log
    vouches for them under the tenant's key, independently of the report signer's."""
    events = [
        e
        for e in audit.events
        if e.get("type") == "compliance.evidence"
        and isinstance(e.get("details"), dict)
        and e["details"].get("run") == manifest.run
    ]
    if not events:
        problems.append(
            f"{PROOFS_PATH}: no proved compliance.evidence event of run {manifest.run}: nothing "
            "in the audit log vouches for this run's evidence"
        )
        return
    details = events[0]["details"]
    listed = details.get("evidence")
    files = {
        entry.path[len(EVIDENCE_PREFIX) : -len(".json")]
        for entry in manifest.files
        if entry.path.startswith(EVIDENCE_PREFIX)
    }
    if (
        type(listed) is not list
        or not all(type(item) is str for item in listed)
        or set(listed) != files
    ):
        problems.append(
            f"{PROOFS_PATH}: the run's anchor event lists other evidence than the pack holds "
            f"({len(files)} file(s) in the pack)"
        )
    if REPORT_PATH not in members:
        problems.append(f"{REPORT_PATH}: missing: the results cannot be checked against the log")
        return
    try:
        report = _strict_json(_read_member(data, members[REPORT_PATH], MAX_REPORT_BYTES))
        results, findings = report_digests(report)
        same_run = report["run"]["id"] == manifest.run
        same_tenant = report["tenant"]["slug"] == manifest.tenant
        integrity = report["integrity"]
        if type(integrity) is not dict:
            raise TypeError("its integrity statement is not an object")
    except (_Corrupt, _Malformed, KeyError, TypeError, NotCanonicalizable) as exc:
        problems.append(f"{REPORT_PATH}: cannot be read as a report: {exc}")
        return
    if not same_run:
        problems.append(f"{REPORT_PATH}: the report is of another run than the manifest's")
    if not same_tenant:
        problems.append(f"{REPORT_PATH}: the report is of another tenant than the manifest's")
    if not audit.origin.endswith(f"/audit/{manifest.tenant}"):
        problems.append(
            f"{PROOFS_PATH}: the proofs are of the log {audit.origin}, not tenant "
            f"{manifest.tenant}'s"
        )
    if not _same_text(details.get("results_sha256"), results):
        problems.append(
            f"{REPORT_PATH}: its results are not the ones the run recorded in the audit log "
            "(results_sha256 of the anchor event differs)"
        )
    if not _same_text(details.get("findings_sha256"), findings):
        problems.append(
            f"{REPORT_PATH}: its requirement findings are not the ones the run recorded in the "
            "audit log (findings_sha256 of the anchor event differs)"
        )
    recorded = details.get("integrity")
    if not isinstance(recorded, dict) or not (
        _same_value(recorded.get("ok"), integrity.get("audit_verified"))
        and _same_value(recorded.get("leaves"), integrity.get("leaves"))
    ):
        problems.append(
            f"{REPORT_PATH}: its audit integrity statement is not the one the run recorded in "
            "the audit log"
        )


def _same_text(recorded: object, computed: str) -> bool:
    """Whether the log recorded exactly ``computed`` (a string), compared in constant time
    (``compare_digest`` refuses non-ASCII ``str``, so bytes are compared)."""
    if type(recorded) is not str:
        return False
    return hmac.compare_digest(
        recorded.encode("utf-8", "surrogatepass"), computed.encode("utf-8", "surrogatepass")
    )


def _same_value(recorded: object, stated: object) -> bool:
    """Equal as JSON values: ``true`` is not ``1`` (Python's ``True == 1`` would say it is)."""
    return type(recorded) is type(stated) and recorded == stated


def digest_rows(rows: Iterable[list[Any]]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``rows``, sorted: the digests a run's anchor event
    carries are computed this way on the server and recomputed here from the report."""
    return hashlib.sha256(canonical_json(sorted(rows))).hexdigest()


def report_digests(report: Mapping[str, Any]) -> tuple[str, str]:
    """(results_sha256, findings_sha256) of a report document (``docs/compliance.md``).

    A result row is ``[finding id, check, check version, status, detail, sorted evidence
    digests]``; a finding row ``[ref, finding, narrative, compensating control used, guardrails,
    sorted attestation ids]``.

    Raises:
        KeyError, TypeError: the document is not a report.
    """
    refs = {e["ref"]: e["sha256"] for e in report["evidence"]}
    results = digest_rows(
        [
            r["finding_id"],
            r["check"],
            r["check_version"],
            r["status"],
            r["detail"],
            sorted(refs[ref] for ref in r["evidence"]),
        ]
        for r in report["results"]
    )
    findings = digest_rows(
        [
            r["ref"],
            r["finding"],
            r["narrative"],
            r["compensating_control_used"],
            r["guardrails"],
            sorted(r["attestations"]),
        ]
        for r in report["requirements"]
    )
    return results, findings


# --------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class PackReport:
    """What :func:`verify_pack` found.

    The pack is verified only when :attr:`verified` is true: no problem (:attr:`ok`) *and* the
    signer chains to a CA certificate the caller trusts (:attr:`anchored`). The facts below are
    the pack's own words unless the pack is verified.

    Attributes:
        anchored: a trusted CA certificate was given, so the chain was checked against it
            (rather than against the pack's own copy).
        problems: every check that failed, each naming the file and what is wrong.
        tenant: the tenant slug the manifest names.
        run: the compliance run's id.
        created_at: when the manifest says the pack was made.
        files: how many files the manifest lists.
        signer_subject: the signer certificate's subject (RFC 4514), or "" if unreadable.
        signer_fingerprint: its SHA-256 (hex), or "".
        ca_subject: the subject of the CA the chain was checked against (trusted, else the pack's
            copy), or "".
        ca_fingerprint: that CA's SHA-256 (hex), or "".
        pack_ca_fingerprint: the SHA-256 of the pack's copy of the CA certificate, or "".
        audit_origin: the audit log of ``audit/proofs.json``, or None.
        audit_start_size: the start checkpoint's size, if it verified.
        audit_end_size: the end checkpoint's size, if it verified.
        anchors: how many anchor events proved into the end checkpoint.
        anchor_events: their event ids.
        audit_keys_saved: the checkpoints were also checked against keys the user saved for the
            log (``audit_trust``), not only against the keys the signed manifest vouches for.
    """

    anchored: bool
    problems: list[str]
    tenant: str
    run: str
    created_at: str
    files: int
    signer_subject: str = ""
    signer_fingerprint: str = ""
    ca_subject: str = ""
    ca_fingerprint: str = ""
    pack_ca_fingerprint: str = ""
    audit_origin: str | None = None
    audit_start_size: int | None = None
    audit_end_size: int | None = None
    anchors: int = 0
    anchor_events: tuple[str, ...] = ()
    audit_keys_saved: bool = False

    @property
    def ok(self) -> bool:
        """No check failed (whether or not a CA was trusted)."""
        return not self.problems

    @property
    def verified(self) -> bool:
        """No check failed and the signer chains to a trusted CA."""
        return self.ok and self.anchored


def _certificate_member(
    data: bytes, members: Mapping[str, _Member], path: str, problems: list[str]
) -> x509.Certificate | None:
    member = members.get(path)
    if member is None:
        return None  # reported by the member-set check
    try:
        return load_certificate(_read_member(data, member, MAX_CERTIFICATE_BYTES), canonical=True)
    except _Corrupt as exc:
        problems.append(f"{path}: cannot be read: {exc}")
    except InvalidPackParameters as exc:
        problems.append(f"{path}: {exc}")
    return None


def _check_files(
    data: bytes, members: Mapping[str, _Member], manifest: _Manifest, problems: list[str]
) -> None:
    """The member set equals the manifest's files plus the two, and every file's size and SHA-256
    match (constant-time comparison)."""
    listed = {entry.path for entry in manifest.files}
    for name in sorted(members.keys() - listed - {MANIFEST_PATH, SIGNATURE_PATH}):
        problems.append(f"{name}: in the pack but not in the manifest")
    for entry in manifest.files:
        member = members.get(entry.path)
        if member is None:
            problems.append(f"{entry.path}: in the manifest but not in the pack")
            continue
        if member.size != entry.size:
            problems.append(
                f"{entry.path}: {member.size} bytes, but the manifest says {entry.size}"
            )
            continue
        digest = hashlib.sha256()
        try:
            for chunk in _inflate(data, member):
                digest.update(chunk)
        except _Corrupt as exc:
            problems.append(f"{entry.path}: cannot be read: {exc}")
            continue
        if not hmac.compare_digest(digest.digest(), entry.sha256):
            problems.append(f"{entry.path}: its SHA-256 does not match the manifest's")
        named = _EVIDENCE.fullmatch(entry.path)
        if named is not None and not hmac.compare_digest(
            bytes.fromhex(named.group(1)), entry.sha256
        ):
            problems.append(f"{entry.path}: the manifest's SHA-256 is not the one it is named by")


def verify_pack(
    data: bytes,
    *,
    trusted_ca_pem: bytes | None,
    audit_trust: AuditTrust | None = None,
    require_proofs: bool = True,
    max_bytes: int = MAX_PACK_BYTES,
    max_members: int = MAX_MEMBERS,
    max_uncompressed: int = MAX_UNCOMPRESSED_BYTES,
) -> PackReport:
    """Verify an evidence pack offline (``docs/compliance.md``, "Evidence pack format").

    Checks, each reported as a problem when it fails (all of them run): the members are exactly
    the manifest's files plus ``manifest.json`` and ``manifest.sig``; every file's size and
    SHA-256 match (and ``evidence/<sha256>.json`` its name); the signer certificate is issued by
    the CA (``verify_directly_issued_by``), both valid at the manifest's ``created_at``, the CA's
    basicConstraints CA true, the signer's key usage digitalSignature and its key P-256;
    ``manifest.sig`` verifies under the signer's key; ``audit/proofs.json``'s start and end
    checkpoints open under the keys it lists (and under the user's saved keys for that log, if
    any), the end extends the start by a verified consistency proof, and each anchor is a
    canonical event of that log whose inclusion proof verifies against the end checkpoint.

    Args:
        data: the pack's bytes.
        trusted_ca_pem: the report CA certificate the user trusts (PEM), or None: then the chain
            is checked against the pack's own copy and the report is unanchored.
        audit_trust: returns the checkpoint keys the user saved for an audit log's origin (or
            None); when it returns keys, both checkpoints must also open under them.
        require_proofs: a manifest that does not list ``audit/proofs.json`` is a problem.
        max_bytes: the largest pack accepted.
        max_members: the most members accepted.
        max_uncompressed: the largest total uncompressed size accepted.

    Returns:
        The report; the pack is verified only if ``report.verified``.

    Raises:
        PackFormatError: not a ZIP of the strict form (``PackTooLarge``: a bound exceeded;
            ``PackNameError``: a duplicate, absolute, ``..`` or otherwise bad member name;
            ``PackManifestError``: ``manifest.json`` missing or malformed).
        InvalidPackParameters: ``trusted_ca_pem`` is not exactly one PEM certificate.

    Security: trust comes only from ``trusted_ca_pem``; the audit keys in ``proofs.json`` are
    trusted only because the signed manifest lists that file, so they mean nothing unless the
    rest verified. Digests are compared in constant time; every size is bounded before
    anything is read or inflated.
    """
    # PCI-DSS 10.3.4: the pack's audit proofs are change detection on the tenant's audit log.
    trusted = load_certificate(trusted_ca_pem) if trusted_ca_pem is not None else None
    if type(data) is not bytes:
        raise PackFormatError("a pack is bytes")
    if len(data) > max_bytes:
        raise PackTooLarge(f"the pack is larger than {max_bytes} bytes")
    members = _read_zip(data, max_members=max_members, max_uncompressed=max_uncompressed)
    manifest_member = members.get(MANIFEST_PATH)
    if manifest_member is None:
        raise PackManifestError("the pack has no manifest.json")
    try:
        raw_manifest = _read_member(data, manifest_member, MAX_MANIFEST_BYTES)
    except _Corrupt as exc:
        raise PackManifestError(f"manifest.json cannot be read: {exc}") from exc
    manifest = _parse_manifest(raw_manifest, max_members=max_members)
    problems: list[str] = []

    _check_files(data, members, manifest, problems)

    signer = _certificate_member(data, members, SIGNER_PATH, problems)
    pack_ca = _certificate_member(data, members, CA_PATH, problems)
    chain_ca = trusted if trusted is not None else pack_ca
    ca_name = "the trusted report CA" if trusted is not None else f"the pack's {CA_PATH}"
    if chain_ca is not None:
        problems.extend(
            f"{ca_name}: {problem}"
            for problem in ca_certificate_problems(chain_ca, at=manifest.created)
        )
    if signer is not None and chain_ca is not None:
        problems.extend(
            f"{SIGNER_PATH}: {problem}"
            for problem in _signer_problems(signer, chain_ca, ca_name, manifest.created)
        )

    signature_member = members.get(SIGNATURE_PATH)
    if signature_member is None:
        problems.append(f"{SIGNATURE_PATH}: missing: the manifest is not signed")
    else:
        try:
            text = _read_member(data, signature_member, MAX_SIGNATURE_FILE_BYTES)
        except _Corrupt as exc:
            problems.append(f"{SIGNATURE_PATH}: cannot be read: {exc}")
        else:
            encoded = text[:-1] if text.endswith(b"\n") else text
            signature = _b64decode(encoded.decode("ascii", "replace"))
            if signature is None:
                problems.append(f"{SIGNATURE_PATH}: not canonical base64 of a signature")
            elif signer is not None and not _signature_ok(
                signer.public_key(), raw_manifest, signature
            ):
                problems.append(
                    f"{SIGNATURE_PATH}: does not verify over manifest.json under the signer "
                    "certificate's key (the manifest was changed, or signed by another key)"
                )

    audit: _AuditFacts | None = None
    listed = {entry.path for entry in manifest.files}
    if PROOFS_PATH not in listed:
        if require_proofs:
            problems.append(
                f"{PROOFS_PATH}: not in the manifest, so nothing ties the run to the tenant's "
                "audit log"
            )
    elif PROOFS_PATH in members:
        try:
            raw_proofs = _read_member(data, members[PROOFS_PATH], MAX_PROOFS_BYTES)
        except _Corrupt as exc:
            problems.append(f"{PROOFS_PATH}: cannot be read: {exc}")
        else:
            audit = _check_proofs(raw_proofs, audit_trust, problems)
            # The last line of defence, against a holder of the report-signing key: it runs
            # once everything else verified (a failure above is reported already).
            if audit is not None and not problems:
                _check_run_anchor(data, members, manifest, audit, problems)

    return PackReport(
        anchored=trusted is not None,
        problems=problems,
        tenant=manifest.tenant,
        run=manifest.run,
        created_at=manifest.created_at,
        files=len(manifest.files),
        signer_subject=signer.subject.rfc4514_string() if signer is not None else "",
        signer_fingerprint=certificate_fingerprint(signer) if signer is not None else "",
        ca_subject=chain_ca.subject.rfc4514_string() if chain_ca is not None else "",
        ca_fingerprint=certificate_fingerprint(chain_ca) if chain_ca is not None else "",
        pack_ca_fingerprint=certificate_fingerprint(pack_ca) if pack_ca is not None else "",
        audit_origin=audit.origin if audit is not None else None,
        audit_start_size=audit.start_size if audit is not None else None,
        audit_end_size=audit.end_size if audit is not None else None,
        anchors=audit.anchors if audit is not None else 0,
        anchor_events=tuple(audit.anchor_events) if audit is not None else (),
        audit_keys_saved=audit.saved_keys if audit is not None else False,
    )


# --------------------------------------------------------------------------------------------
# Building


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    utc = moment.astimezone(UTC)
    if not 1980 <= utc.year <= 2107:
        raise InvalidPackParameters("created_at must be between 1980 and 2107 (ZIP times)")
    return (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)


def _verify_text(*, tenant: str, run: str, created_at: str, epoch: int, ca_fingerprint: str) -> str:
    colons = ":".join(ca_fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    return f"""# Verifying this evidence pack

Evidence pack (`{PACK_FORMAT}`) of tenant `{tenant}`, compliance run `{run}`, created
{created_at}.

`manifest.json` lists every other file of the pack with its SHA-256 and size. `manifest.sig` is
the report signer's signature over `manifest.json` (base64 of a DER ECDSA P-256/SHA-256
signature). The signer's certificate, `{SIGNER_PATH}`, is issued by the report CA of the
Ciphervault instance. The copy of the CA certificate in `{CA_PATH}` is only a convenience:
trust the CA certificate you obtained another way (`cvault trust save`, or from your
administrator). The server says its SHA-256 fingerprint is

    {ca_fingerprint}
    {colons}

A pack is verified when all of the following hold; any other outcome means it was altered, is
incomplete, or was signed by someone else.

## With cvault

    cvault trust save                       # once; compare the CA fingerprint it prints
    cvault report verify evidence-pack.zip  # or: --trust report-ca.pem

Exit status 0: verified; 1: something does not match (each problem is listed); 2: unanchored
(no CA certificate is trusted; everything else was checked against the pack's own copy).
`cvault report verify` also checks `{PROOFS_PATH}`, which is impractical by hand: the audit log's
checkpoints at the start and end of the run are signed by the keys it lists, the end extends
the start (a Merkle consistency proof), and each anchor event is in the log at the end checkpoint
(Merkle inclusion proofs). If you saved the audit log's keys with `cvault trust save`, the
checkpoints must also be signed by one of those.

## By hand (unzip, sha256sum, openssl)

Set `CA` to the CA certificate you trust, for example `~/.config/cvault/trust/report-ca.pem`,
and check its fingerprint against the one published out of band:

    CA=~/.config/cvault/trust/report-ca.pem
    openssl x509 -in "$CA" -noout -fingerprint -sha256

1. Unpack into an empty directory; it must hold exactly the files the manifest lists, plus
   `manifest.json` and `manifest.sig`:

       mkdir pack && cd pack && unzip -q ../evidence-pack.zip
       find . -type f | sed 's|^\\./||' | LC_ALL=C sort > ../members.txt
       jq -r '.files[].path, "manifest.json", "manifest.sig"' manifest.json \\
         | LC_ALL=C sort > ../listed.txt
       diff ../members.txt ../listed.txt && echo "same files"

2. Every file's SHA-256 must match the manifest:

       jq -r '.files[] | .sha256 + "  " + .path' manifest.json | sha256sum --check --strict

   (Without jq: `python3 -c 'import json; [print(f["sha256"] + "  " + f["path"]) for f in
   json.load(open("manifest.json"))["files"]]'` prints the same lines.)

3. The signer certificate must be issued by the CA, valid when the pack was made (Unix time
   {epoch}), and allowed to sign (Digital Signature):

       openssl verify -attime {epoch} -CAfile "$CA" {SIGNER_PATH}
       openssl x509 -in {SIGNER_PATH} -noout -ext keyUsage

4. The manifest's signature must verify under the signer's key ("Verified OK"):

       openssl x509 -in {SIGNER_PATH} -noout -pubkey > ../signer-key.pem
       openssl base64 -d -A -in manifest.sig -out ../manifest.sig.der
       openssl dgst -sha256 -verify ../signer-key.pem -signature ../manifest.sig.der \\
         manifest.json
"""


def build_pack(
    files: Mapping[str, bytes],
    *,
    tenant: str,
    run: str,
    created_at: datetime,
    sign: Callable[[bytes], bytes],
    signer_cert_pem: bytes,
    ca_cert_pem: bytes,
    verify_text: str | None = None,
) -> bytes:
    """Write an evidence pack (``docs/compliance.md``, "Evidence pack format").

    Args:
        files: the pack's content by path: ``reports/report.json``, ``reports/report.csv``,
            ``reports/report.pdf``, ``evidence/<sha256>.json``, ``audit/proofs.json`` (see
            :func:`build_audit_proofs`). ``manifest.json``, ``manifest.sig``, ``VERIFY.md`` and
            ``certificates/`` are added here and may not be given.
        tenant: the tenant's slug.
        run: the run's id (a lowercase hyphenated UUID).
        created_at: when the pack is made (aware); the signer certificate must be valid then.
            Every member's ZIP time is this time, in UTC.
        sign: signs a message with the report signer's private key: ECDSA P-256 over SHA-256,
            DER encoded (e.g. a key backend's ``sign``). Its own errors propagate unchanged.
        signer_cert_pem: the report signer's certificate (PEM).
        ca_cert_pem: the report CA's certificate (PEM).
        verify_text: the text of ``VERIFY.md``; by default, instructions for this pack.

    Returns:
        The ZIP's bytes: ``manifest.json``, ``manifest.sig``, then every other member in path
        order, each deflated with a fixed level and time, so equal input gives equal bytes.

    Raises:
        InvalidPackParameters: a path that is not a valid member name, reserved, duplicated
            (ignoring case) or a directory of another; content that is not bytes; a tenant,
            run or time of the wrong form; certificates that are not one PEM certificate each,
            a signer not issued by the CA, not valid at ``created_at``, without digitalSignature
            or without a P-256 key; more members or bytes than a verifier accepts.
        PackSigningFailed: ``sign`` returned something that is not a canonical DER signature
            valid under the signer certificate's key.
    """
    if not _line_ok(tenant, 200):
        raise InvalidPackParameters("tenant must be one printable line")
    if type(run) is not str or _UUID.fullmatch(run) is None:
        raise InvalidPackParameters("run must be a lowercase hyphenated UUID")
    if not isinstance(created_at, datetime) or created_at.utcoffset() is None:
        raise InvalidPackParameters("created_at must be an aware datetime")
    created_text = format_time(created_at)
    created = _parse_time(created_text)
    if created is None:  # unreachable: format_time writes the form _parse_time reads
        raise InvalidPackParameters("created_at cannot be written")
    date_time = _zip_time(created_at)
    ca = load_certificate(ca_cert_pem)
    signer = load_certificate(signer_cert_pem)
    problems = [f"the CA certificate: {p}" for p in ca_certificate_problems(ca, at=created)]
    problems += [
        f"the signer certificate: {p}"
        for p in _signer_problems(signer, ca, "the CA certificate", created)
    ]
    if problems:
        raise InvalidPackParameters("; ".join(problems))
    members: dict[str, bytes] = {}
    for path, content in files.items():
        problem = _name_problem(path) if type(path) is str else "not a string"
        if problem is not None:
            raise InvalidPackParameters(f"path {_shown(str(path))}: {problem}")
        if path in _RESERVED:
            raise InvalidPackParameters(f"{path} is written by build_pack itself")
        if type(content) is not bytes:
            raise InvalidPackParameters(f"{path}: content must be bytes")
        members[path] = content
    pem = serialization.Encoding.PEM
    members[CA_PATH] = ca.public_bytes(pem)
    members[SIGNER_PATH] = signer.public_bytes(pem)
    if verify_text is None:
        verify_text = _verify_text(
            tenant=tenant,
            run=run,
            created_at=created_text,
            epoch=int(created.timestamp()),
            ca_fingerprint=certificate_fingerprint(ca),
        )
    if type(verify_text) is not str:
        raise InvalidPackParameters("verify_text must be a string")
    members[VERIFY_PATH] = verify_text.encode("utf-8")
    problem = _name_set_problem(members)
    if problem is not None:
        raise InvalidPackParameters(problem)
    if len(members) + 2 > MAX_MEMBERS:
        raise InvalidPackParameters(f"more than {MAX_MEMBERS} members")
    if sum(map(len, members.values())) > MAX_UNCOMPRESSED_BYTES - MAX_MANIFEST_BYTES:
        raise InvalidPackParameters("more content than a verifier accepts")
    manifest = canonical_json(
        {
            "format": PACK_FORMAT,
            "tenant": tenant,
            "run": run,
            "created_at": created_text,
            "files": [
                {
                    "path": path,
                    "sha256": hashlib.sha256(members[path]).hexdigest(),
                    "size": len(members[path]),
                }
                for path in sorted(members)
            ],
            "signer": dict(_SIGNER),
        }
    )
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise InvalidPackParameters("the manifest would be larger than a verifier accepts")
    signature = sign(manifest)
    if type(signature) is not bytes or not _signature_ok(signer.public_key(), manifest, signature):
        raise PackSigningFailed("the signature does not verify under the signer certificate")
    output = io.BytesIO()
    ordered = [
        (MANIFEST_PATH, manifest),
        (SIGNATURE_PATH, (_b64(signature) + "\n").encode("ascii")),
        *((path, members[path]) for path in sorted(members)),
    ]
    with zipfile.ZipFile(output, "w") as archive:
        for path, content in ordered:
            info = zipfile.ZipInfo(path, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the platform writing it
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            archive.writestr(info, content, compresslevel=9)
    return output.getvalue()


def build_audit_proofs(
    *,
    origin: str,
    keys: Sequence[CheckpointKey],
    start: bytes,
    end: bytes,
    tree: MerkleTree,
    anchors: Sequence[tuple[int, bytes]],
) -> bytes:
    """Write ``audit/proofs.json`` for a run (canonical JSON).

    Args:
        origin: the tenant log's origin.
        keys: the log's checkpoint keys (written as verifier keys).
        start: the signed checkpoint recorded at the run's start.
        end: the signed checkpoint recorded at its end.
        tree: the log's leaf hashes, at least up to the end checkpoint's size.
        anchors: ``(index, leaf bytes)`` of each anchor event (the canonical event).

    Returns:
        The document's bytes.

    Raises:
        InvalidPackParameters: a malformed note or one for another origin, an end smaller than
            the start, a tree smaller than the end, an anchor not below the end's size, no keys
            or too many.

    Security: nothing here checks the notes' signatures or that the leaves are the tree's: a log
    that was tampered with still yields proofs, which then fail verification in the hands of
    whoever checks the pack.
    """
    if not 1 <= len(keys) <= MAX_AUDIT_KEYS:
        raise InvalidPackParameters(f"between 1 and {MAX_AUDIT_KEYS} audit keys")
    sizes = []
    for what, note in (("start", start), ("end", end)):
        try:
            checkpoint = Checkpoint.from_text(SignedNote.parse(note).text)
        except CheckpointError as exc:
            raise InvalidPackParameters(f"the {what} checkpoint is malformed: {exc}") from exc
        if checkpoint.origin != origin:
            raise InvalidPackParameters(f"the {what} checkpoint is for another origin")
        sizes.append(checkpoint.size)
    old, new = sizes
    if old > new:
        raise InvalidPackParameters("the end checkpoint is smaller than the start checkpoint")
    if tree.size < new:
        raise InvalidPackParameters("the tree is smaller than the end checkpoint")
    if len(anchors) > MAX_ANCHORS:
        raise InvalidPackParameters(f"more than {MAX_ANCHORS} anchors")
    try:
        consistency = tree.consistency_proof(old, new) if old > 0 else []
        entries = [
            {
                "leaf": _b64(leaf),
                "index": index,
                "proof": [h.hex() for h in tree.inclusion_proof(index, new)],
            }
            for index, leaf in anchors
        ]
    except InvalidProofParameters as exc:
        raise InvalidPackParameters(f"an anchor is not below the end's size: {exc}") from exc
    if not all(type(leaf) is bytes and leaf for _, leaf in anchors):
        raise InvalidPackParameters("anchor leaves must be non-empty bytes")
    document = {
        "origin": origin,
        "keys": [key.vkey for key in keys],
        "start": start.decode("utf-8"),
        "end": end.decode("utf-8"),
        "consistency": [h.hex() for h in consistency],
        "anchors": entries,
    }
    return canonical_json(document)
