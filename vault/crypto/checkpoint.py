"""Signed checkpoints of the audit log: C2SP tlog-checkpoint bodies in C2SP signed notes,
signed with ECDSA P-256. Django-free.

A checkpoint commits to a tenant's log at one size::

    ciphervault.example/audit/acme          <- origin
    1024                                    <- tree size, decimal, no leading zeros
    Y2IzNmY1...base64 of the 32-byte root=  <- root hash
    [extension lines, each non-empty]

followed by a blank line and one or more signature lines ``— <key name> base64(key ID ||
signature)``. The vault signs with P-256 keys held in key backends, so this module uses signed-note
signature type ``0x02`` (ECDSA, as implemented by transparency-dev/witness and used by Sigstore's
Rekor): the signature is an ASN.1 DER ECDSA signature over SHA-256 of the note text, and the 4-byte
key ID is the first four bytes of SHA-256 over the key's DER SubjectPublicKeyInfo. Type ``0x02`` is
the one the signed-note specification assigns to ECDSA, so other tooling can verify our
checkpoints; Ed25519 (type ``0x01``) is not offered because backends (PKCS#11, TPM, KMIP) hold P-256
keys, and the specification asks implementations to support only the types they need.

Parsing is strict: exact line structure, canonical base64 and decimal, valid UTF-8 with no control
characters but newline, bounded sizes and counts, nothing after the last signature line, and a
size-0 checkpoint must carry the empty tree's root. A note's text is only read after a signature
from a trusted key verified over it.

Docs: ``docs/audit-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from vault.crypto.merkle import EMPTY_ROOT, HASH_SIZE, MAX_TREE_SIZE, AuditProofError

__all__ = [
    "MAX_EXTENSION_LINES",
    "MAX_LINE_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_TYPE_ECDSA",
    "Checkpoint",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKey",
    "CheckpointNotTrusted",
    "CheckpointOriginMismatch",
    "CheckpointSignatureInvalid",
    "CheckpointSigningFailed",
    "InvalidCheckpointParameters",
    "NoteSignature",
    "SignedNote",
    "open_checkpoint",
    "sign_checkpoint",
]

#: Signed-note signature type identifier for ECDSA (c2sp.org/signed-note, transparency-dev/witness).
SIGNATURE_TYPE_ECDSA = 0x02
#: Largest signed note accepted (16 signatures of post-quantum size still fit).
MAX_NOTE_BYTES = 128 * 1024
#: Most signature lines accepted in one note (the signed-note minimum).
MAX_SIGNATURES = 16
#: Largest decoded signature (key ID included) accepted on any line, ours or unknown.
MAX_SIGNATURE_BYTES = 8 * 1024
#: Largest origin, key name or extension line, in UTF-8 bytes.
MAX_LINE_BYTES = 1024
#: Most extension lines in a checkpoint body.
MAX_EXTENSION_LINES = 16

_EM_DASH_SPACE = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_KEY_HASH = re.compile(r"[0-9a-f]{8}")
_ROOT_B64_LEN = 44  # base64 of 32 bytes


class CheckpointError(AuditProofError):
    """Base of every checkpoint and signed-note error."""

    code = "audit_checkpoint_error"


class CheckpointFormatError(CheckpointError):
    """The signed note or its checkpoint body is malformed: bad UTF-8, a control character, a
    missing or extra line, non-canonical base64 or decimal, a bound exceeded, trailing data."""

    code = "audit_checkpoint_malformed"


class InvalidCheckpointParameters(CheckpointError, ValueError):
    """The caller passed something a checkpoint or key cannot carry: an empty or multi-line
    origin, a size outside uint64, a root that is not 32 bytes, a bad key name, a key that is not
    P-256."""

    code = "audit_checkpoint_invalid_parameters"


class CheckpointSignatureInvalid(CheckpointError):
    """A signature line names a trusted key (name and key ID) but does not verify under it:
    the note was altered or signed by an impostor. The whole note is rejected."""

    code = "audit_checkpoint_signature_invalid"


class CheckpointNotTrusted(CheckpointError):
    """No signature line in the note comes from a trusted key."""

    code = "audit_checkpoint_not_trusted"


class CheckpointOriginMismatch(CheckpointError):
    """The checkpoint verifies, but is for another log than the one expected."""

    code = "audit_checkpoint_origin_mismatch"


class CheckpointSigningFailed(CheckpointError):
    """The signer returned something that is not a DER ECDSA signature valid under the
    checkpoint key (a wrong key version, a broken backend)."""

    code = "audit_checkpoint_signing_failed"


# --------------------------------------------------------------------------------------------
# Small strict codecs


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Standard base64 with padding, canonical only; None when it is not."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if _b64encode(data) != text:  # non-zero pad bits, missing padding
        return None
    return data


def _utf8_len(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return None


def _line_ok(text: object) -> bool:
    """A non-empty single line with no control characters, at most MAX_LINE_BYTES of UTF-8."""
    if type(text) is not str or not text or "\n" in text or _CONTROL.search(text):
        return False
    size = _utf8_len(text)
    return size is not None and size <= MAX_LINE_BYTES


def _key_name_ok(name: object) -> bool:
    """Signed-note key names: non-empty, no Unicode space, no plus."""
    return _line_ok(name) and not any(c.isspace() or c == "+" for c in str(name))


# --------------------------------------------------------------------------------------------
# The checkpoint body


@dataclass(frozen=True)
class Checkpoint:
    """The body of a C2SP tlog-checkpoint: which log, how many leaves, and their root.

    Attributes:
        origin: the log's identity, e.g. ``ciphervault.example/audit/<tenant>``.
        size: the number of leaves, ``0 <= size <= 2**64 - 1``.
        root_hash: the RFC 9162 root at that size (32 bytes; the empty tree's at size 0).
        extensions: optional extra lines, opaque to this module, each non-empty.

    Raises (on construction):
        InvalidCheckpointParameters: any field the text form cannot carry.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _line_ok(self.origin):
            raise InvalidCheckpointParameters(
                "origin must be one non-empty line of printable UTF-8, at most 1024 bytes"
            )
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise InvalidCheckpointParameters("size must be an integer in [0, 2**64 - 1]")
        if type(self.root_hash) is not bytes or len(self.root_hash) != HASH_SIZE:
            raise InvalidCheckpointParameters("root hash must be 32 bytes")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise InvalidCheckpointParameters("a size-0 checkpoint carries the empty tree's root")
        if type(self.extensions) is not tuple or len(self.extensions) > MAX_EXTENSION_LINES:
            raise InvalidCheckpointParameters(
                f"extensions must be a tuple of at most {MAX_EXTENSION_LINES} lines"
            )
        if not all(_line_ok(line) for line in self.extensions):
            raise InvalidCheckpointParameters("every extension line must be one non-empty line")

    def to_text(self) -> bytes:
        """The note text: origin, size, base64 root, extension lines, each ending in a newline.

        Returns:
            The exact bytes a signature covers.
        """
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def from_text(cls, text: bytes) -> Checkpoint:
        """Parse a note text strictly into a checkpoint.

        Only call this on text whose signature was verified (see :func:`open_checkpoint`).

        Args:
            text: the note text, final newline included.

        Returns:
            The checkpoint.

        Raises:
            CheckpointFormatError: anything but the exact form :meth:`to_text` produces (for
                some origin, size, root and extension lines).
        """
        decoded = _decode_note_bytes(text, limit=MAX_NOTE_BYTES)
        if not decoded.endswith("\n"):
            raise CheckpointFormatError("checkpoint text must end with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointFormatError("checkpoint text needs origin, size and root lines")
        if len(lines) > 3 + MAX_EXTENSION_LINES:
            raise CheckpointFormatError("too many extension lines")
        origin, size_line, root_line, *extensions = lines
        if _DECIMAL.fullmatch(size_line) is None:
            raise CheckpointFormatError("tree size must be decimal with no leading zeros")
        size = int(size_line)
        root = _b64decode(root_line) if len(root_line) == _ROOT_B64_LEN else None
        if root is None or len(root) != HASH_SIZE:
            raise CheckpointFormatError("root hash must be canonical base64 of 32 bytes")
        try:
            return cls(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))
        except InvalidCheckpointParameters as exc:
            raise CheckpointFormatError(f"invalid checkpoint: {exc}") from exc


def _decode_note_bytes(data: bytes, *, limit: int) -> str:
    if type(data) is not bytes:
        raise CheckpointFormatError("a note is bytes")
    if len(data) > limit:
        raise CheckpointFormatError(f"note larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError("note is not valid UTF-8") from exc
    if _CONTROL.search(text):
        raise CheckpointFormatError("note contains a control character")
    return text


# --------------------------------------------------------------------------------------------
# Signed notes


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note.

    Attributes:
        key_name: the signer's key name.
        key_id: the 32-bit key ID from the first four signature bytes.
        signature: the signature proper (for type 0x02, a DER ECDSA signature).
    """

    key_name: str
    key_id: int
    signature: bytes

    def to_line(self) -> str:
        """The line ``— <name> base64(key ID || signature)``, without its newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_EM_DASH_SPACE}{self.key_name} {_b64encode(blob)}"


@dataclass(frozen=True)
class SignedNote:
    """A C2SP signed note: text plus signature lines. Its text is not to be trusted until a
    signature from a trusted key has verified over it.

    Attributes:
        text: the note text, final newline included, separating blank line excluded.
        signatures: the signature lines, in order.
    """

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        """The serialized note: text, a blank line, one signature per line."""
        lines = "".join(sig.to_line() + "\n" for sig in self.signatures)
        return self.text + b"\n" + lines.encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> SignedNote:
        """Split a signed note strictly into its text and signature lines (verifying nothing).

        Args:
            data: the serialized note.

        Returns:
            The note.

        Raises:
            CheckpointFormatError: larger than :data:`MAX_NOTE_BYTES`, not UTF-8, a control
                character, no blank line before the signatures, no signature or more than
                :data:`MAX_SIGNATURES`, a malformed signature line, or anything after the last
                signature line's newline.
        """
        note = _decode_note_bytes(data, limit=MAX_NOTE_BYTES)
        if not note.endswith("\n"):
            raise CheckpointFormatError("note must end with a newline")
        split = note.rfind("\n\n")
        if split < 0:
            raise CheckpointFormatError("note has no blank line before its signatures")
        text, block = note[: split + 1], note[split + 2 :]
        if not block:
            raise CheckpointFormatError("note has no signature")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise CheckpointFormatError(f"note has more than {MAX_SIGNATURES} signatures")
        return cls(text=text.encode("utf-8"), signatures=tuple(map(_parse_signature, lines)))


def _parse_signature(line: str) -> NoteSignature:
    if not line.startswith(_EM_DASH_SPACE):
        raise CheckpointFormatError("signature line must start with an em dash and a space")
    name, space, encoded = line[len(_EM_DASH_SPACE) :].partition(" ")
    if not space or not _key_name_ok(name):
        raise CheckpointFormatError("signature line has a bad key name")
    blob = _b64decode(encoded) if len(encoded) <= 2 * MAX_SIGNATURE_BYTES else None
    if blob is None or not 4 < len(blob) <= MAX_SIGNATURE_BYTES:
        raise CheckpointFormatError("signature must be canonical base64 of a key ID and bytes")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


# --------------------------------------------------------------------------------------------
# Keys, signing, verification


@dataclass(frozen=True)
class CheckpointKey:
    """The public identity of a checkpoint signing key: a key name and a P-256 public key.

    The signed-note tuple (key name, key ID) selects the key; the key ID is the first four bytes,
    big-endian, of SHA-256 over the DER SubjectPublicKeyInfo (signature type 0x02).

    Attributes:
        name: the key name; by convention the log's origin when it has no spaces or plus.
        public_key: the P-256 public key.

    Raises (on construction):
        InvalidCheckpointParameters: a bad key name or a key not on P-256.
    """

    name: str
    public_key: ec.EllipticCurvePublicKey

    def __post_init__(self) -> None:
        if not _key_name_ok(self.name):
            raise InvalidCheckpointParameters(
                "key name must be a non-empty line with no spaces or '+'"
            )
        if not isinstance(self.public_key, ec.EllipticCurvePublicKey) or not isinstance(
            self.public_key.curve, ec.SECP256R1
        ):
            raise InvalidCheckpointParameters("checkpoint keys are ECDSA P-256 keys")

    @classmethod
    def from_pem(cls, name: str, pem: bytes | str) -> CheckpointKey:
        """Load the public key from PEM SubjectPublicKeyInfo (what key backends return).

        Raises:
            InvalidCheckpointParameters: not a PEM public key, or not P-256.
        """
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
            raise InvalidCheckpointParameters("not a PEM public key") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidCheckpointParameters("checkpoint keys are ECDSA P-256 keys")
        return cls(name=name, public_key=public)

    @classmethod
    def from_vkey(cls, vkey: str) -> CheckpointKey:
        """Parse a verifier key string ``<name>+<8 hex digits key ID>+base64(0x02 || SPKI)``
        (the transparency-dev/witness form), checking that the key ID matches the key.

        Raises:
            InvalidCheckpointParameters: any other form, a key ID that does not match, a key
                that is not P-256.
        """
        parts = vkey.split("+", 2) if type(vkey) is str else []
        if len(parts) != 3 or _KEY_HASH.fullmatch(parts[1]) is None:
            raise InvalidCheckpointParameters("verifier key must be name+keyid+base64")
        name, key_hash, encoded = parts
        blob = _b64decode(encoded)
        if blob is None or len(blob) < 2 or blob[0] != SIGNATURE_TYPE_ECDSA:
            raise InvalidCheckpointParameters("verifier key is not an ECDSA (0x02) key")
        try:
            public = serialization.load_der_public_key(blob[1:])
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidCheckpointParameters("verifier key holds no valid public key") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidCheckpointParameters("checkpoint keys are ECDSA P-256 keys")
        key = cls(name=name, public_key=public)
        if int(key_hash, 16) != key.key_id:
            raise InvalidCheckpointParameters("verifier key ID does not match its key")
        return key

    @property
    def spki(self) -> bytes:
        """The DER SubjectPublicKeyInfo of the public key."""
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> int:
        """The signed-note key ID: SHA-256(SPKI)[:4] as a big-endian uint32."""
        return int.from_bytes(hashlib.sha256(self.spki).digest()[:4], "big")

    @property
    def vkey(self) -> str:
        """The verifier key string, ``<name>+<key ID hex>+base64(0x02 || SPKI)``."""
        blob = bytes([SIGNATURE_TYPE_ECDSA]) + self.spki
        return f"{self.name}+{self.key_id:08x}+{_b64encode(blob)}"

    def public_key_pem(self) -> bytes:
        """The PEM SubjectPublicKeyInfo of the public key."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def matches(self, signature: NoteSignature) -> bool:
        """Whether a signature line names this key (same name and key ID)."""
        return signature.key_name == self.name and signature.key_id == self.key_id

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Check a DER ECDSA P-256/SHA-256 signature over ``message``.

        Returns:
            True only for a valid signature in canonical DER; False for anything else.
        """
        try:
            r, s = decode_dss_signature(signature)
        except ValueError:
            return False
        if encode_dss_signature(r, s) != signature:  # BER, trailing bytes: not the DER we sign
            return False
        try:
            self.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def sign_checkpoint(
    checkpoint: Checkpoint, *, key: CheckpointKey, sign: Callable[[bytes], bytes]
) -> bytes:
    """Serialize and sign a checkpoint as a signed note.

    Args:
        checkpoint: what to commit to.
        key: the public identity of the signing key (name and P-256 public key).
        sign: signs a message with the matching private key: ECDSA P-256 over SHA-256 of the
            message, DER encoded (e.g. ``lambda m: backend.sign(key_id, m)[1]``). Its own errors
            (a backend being unavailable) propagate unchanged.

    Returns:
        The signed note: checkpoint text, a blank line, one signature line.

    Raises:
        CheckpointSigningFailed: ``sign`` returned something that does not verify under ``key``
            (a rotated key version, a wrong key), so nothing unverifiable is ever published.

    Security: a log must never sign two inconsistent checkpoints; the caller (the single
    integrator) is responsible for only signing trees that extend the previous one.
    """
    text = checkpoint.to_text()
    signature = sign(text)
    if type(signature) is not bytes or not key.verify(text, signature):
        raise CheckpointSigningFailed("the signer's signature does not verify under the key")
    line = NoteSignature(key.name, key.key_id, signature)
    return SignedNote(text=text, signatures=(line,)).to_bytes()


def open_checkpoint(
    note: bytes,
    *,
    keys: CheckpointKey | Sequence[CheckpointKey],
    origin: str | None = None,
) -> Checkpoint:
    """Verify a signed checkpoint against trusted keys, then parse it.

    Signature lines from unknown keys (another name or key ID) are ignored, as the signed-note
    specification requires (witness cosignatures, rotated keys). Every line that names a trusted
    key must verify, and at least one must.

    Args:
        note: the serialized signed note.
        keys: the trusted key or keys (saved by the user, or pinned by the operator).
        origin: the log the caller expects, if it knows; checked after the signature.

    Returns:
        The checkpoint, which only now may be relied on.

    Raises:
        CheckpointFormatError: the note or its body is malformed.
        CheckpointSignatureInvalid: a signature from a trusted key does not verify.
        CheckpointNotTrusted: no signature from a trusted key.
        CheckpointOriginMismatch: the checkpoint is for another origin.
    """
    # PCI-DSS 10.3.4: a checkpoint anchors change detection only once its signature verified.
    trusted = (keys,) if isinstance(keys, CheckpointKey) else tuple(keys)
    parsed = SignedNote.parse(note)
    verified = False
    for line in parsed.signatures:
        for key in trusted:
            if key.matches(line):
                if not key.verify(parsed.text, line.signature):
                    raise CheckpointSignatureInvalid("a signature from a trusted key is invalid")
                verified = True
    if not verified:
        raise CheckpointNotTrusted("no signature from a trusted key")
    checkpoint = Checkpoint.from_text(parsed.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointOriginMismatch("the checkpoint is for another log")
    return checkpoint
