"""Signed checkpoints: round trip, ECDSA P-256 signatures with a real key, and every tampering
fails."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from vault.crypto.checkpoint import (
    MAX_EXTENSION_LINES,
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    CheckpointFormatError,
    CheckpointKey,
    CheckpointNotTrusted,
    CheckpointOriginMismatch,
    CheckpointSignatureInvalid,
    CheckpointSigningFailed,
    InvalidCheckpointParameters,
    NoteSignature,
    SignedNote,
    open_checkpoint,
    sign_checkpoint,
)
from vault.crypto.merkle import EMPTY_ROOT, AuditProofError, MerkleTree, leaf_hashes

pytestmark: list[pytest.MarkDecorator] = []

ORIGIN = "ciphervault.example/audit/acme"
ROOT = hashlib.sha256(b"some root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
URL_SAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def key(private_key: ec.EllipticCurvePrivateKey) -> CheckpointKey:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CheckpointKey.from_pem(ORIGIN, pem)


def _signer(private_key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    return lambda message: private_key.sign(message, ec.ECDSA(hashes.SHA256()))


@pytest.fixture(scope="module")
def note(private_key: ec.EllipticCurvePrivateKey, key: CheckpointKey) -> bytes:
    checkpoint = Checkpoint(ORIGIN, 1234, ROOT, ("ext one", "ext two"))
    return sign_checkpoint(checkpoint, key=key, sign=_signer(private_key))


def _resign_text(note: bytes, text: bytes) -> bytes:
    """Swap a note's text for another, keeping its signature lines."""
    parsed = SignedNote.parse(note)
    return SignedNote(text=text, signatures=parsed.signatures).to_bytes()


# --------------------------------------------------------------------------------------------
# Round trip and format


def test_it_round_trips_a_signed_checkpoint(note: bytes, key: CheckpointKey) -> None:
    checkpoint = open_checkpoint(note, keys=key, origin=ORIGIN)
    assert checkpoint == Checkpoint(ORIGIN, 1234, ROOT, ("ext one", "ext two"))
    assert open_checkpoint(note, keys=[key]) == checkpoint


def test_it_writes_the_c2sp_text_form(note: bytes, key: CheckpointKey) -> None:
    text, _, signature_line = note.decode("utf-8").rpartition("\n\n")
    assert text + "\n" == (f"{ORIGIN}\n1234\n{base64.b64encode(ROOT).decode()}\next one\next two\n")
    assert signature_line.startswith(f"\u2014 {ORIGIN} ")
    assert signature_line.endswith("\n")
    assert signature_line.count("\n") == 1
    blob = base64.b64decode(signature_line.split(" ")[2])
    spki = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert blob[:4] == hashlib.sha256(spki).digest()[:4]  # type 0x02 key ID
    key.public_key.verify(blob[4:], (text + "\n").encode(), ec.ECDSA(hashes.SHA256()))


def test_it_round_trips_the_checkpoint_of_a_real_tree(
    private_key: ec.EllipticCurvePrivateKey, key: CheckpointKey
) -> None:
    tree = MerkleTree(leaf_hashes([b"event %d" % i for i in range(37)]))
    checkpoint = Checkpoint(ORIGIN, tree.size, tree.root())
    assert checkpoint.to_text().count(b"\n") == 3
    signed = sign_checkpoint(checkpoint, key=key, sign=_signer(private_key))
    assert open_checkpoint(signed, keys=key) == checkpoint


def test_it_signs_the_empty_tree(
    private_key: ec.EllipticCurvePrivateKey, key: CheckpointKey
) -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), key=key, sign=_signer(private_key))
    assert open_checkpoint(signed, keys=key).size == 0
    with pytest.raises(InvalidCheckpointParameters):
        Checkpoint(ORIGIN, 0, ROOT)


def test_it_round_trips_the_verifier_key_string(key: CheckpointKey) -> None:
    vkey = key.vkey
    name, key_hash, encoded = vkey.split("+", 2)
    assert name == ORIGIN
    assert key_hash == f"{key.key_id:08x}"
    assert base64.b64decode(encoded)[0] == 0x02
    assert CheckpointKey.from_vkey(vkey) == key
    wrong_id = f"{name}+{(key.key_id ^ 1):08x}+{encoded}"
    bads = [wrong_id, f"{name}+{key_hash}", "x"]
    if key_hash.upper() != key_hash:  # a key ID of digits only has no upper-case form
        bads.append(f"{name}+{key_hash.upper()}+{encoded}")
    for bad in bads:
        with pytest.raises(InvalidCheckpointParameters):
            CheckpointKey.from_vkey(bad)
    assert CheckpointKey.from_pem(ORIGIN, key.public_key_pem().decode()) == key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("origin", ""),
        ("origin", "two\nlines"),
        ("origin", "tab\there"),
        ("origin", "x" * 1025),
        ("origin", "\ud800"),
        ("size", -1),
        ("size", 2**64),
        ("size", True),
        ("size", "12"),
        ("root_hash", ROOT[:31]),
        ("root_hash", ROOT + b"\x00"),
        ("extensions", ("",)),
        ("extensions", ("a\nb",)),
        ("extensions", ["list"]),
        ("extensions", ("x",) * (MAX_EXTENSION_LINES + 1)),
    ],
)
def test_it_refuses_checkpoints_the_text_form_cannot_carry(field: str, value: object) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "size": 1, "root_hash": ROOT, "extensions": ()}
    fields[field] = value
    with pytest.raises(InvalidCheckpointParameters):
        Checkpoint(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\t", "nbsp\u00a0x", "a\nb"])
def test_it_refuses_bad_key_names(key: CheckpointKey, name: str) -> None:
    with pytest.raises(InvalidCheckpointParameters):
        CheckpointKey(name, key.public_key)


def test_it_refuses_keys_that_are_not_p256() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(InvalidCheckpointParameters):
        CheckpointKey(ORIGIN, p384)
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidCheckpointParameters):
        CheckpointKey.from_pem(ORIGIN, ed)
    with pytest.raises(InvalidCheckpointParameters):
        CheckpointKey.from_pem(ORIGIN, b"not pem")


# --------------------------------------------------------------------------------------------
# Tampering: every change to a signed checkpoint is rejected


def _repad_signature(note: bytes) -> bytes:
    """The same signature bytes in non-canonical base64 (padding removed, or a stray pad)."""
    head, _, encoded = note[:-1].rpartition(b" ")
    bad = encoded.rstrip(b"=") if encoded.endswith(b"=") else encoded + b"="
    return head + b" " + bad + b"\n"


def _body(note: bytes) -> str:
    return SignedNote.parse(note).text.decode("utf-8")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: t.replace(ORIGIN, ORIGIN + "x", 1), id="origin"),
        pytest.param(lambda t: t.replace("\n1234\n", "\n1235\n"), id="size"),
        pytest.param(lambda t: t.replace("\n1234\n", "\n123\n"), id="size-shorter"),
        pytest.param(
            lambda t: t.replace(
                base64.b64encode(ROOT).decode(),
                base64.b64encode(bytes([ROOT[0] ^ 1]) + ROOT[1:]).decode(),
            ),
            id="root",
        ),
        pytest.param(lambda t: t.replace("ext one", "ext 1"), id="extension-changed"),
        pytest.param(lambda t: t.replace("ext two\n", ""), id="extension-removed"),
        pytest.param(lambda t: t + "ext three\n", id="extension-added"),
        pytest.param(lambda t: t.replace("ext one\next two\n", "ext two\next one\n"), id="reorder"),
    ],
)
# PCI-DSS 10.3.4: tampering with the audit log is detected.
def test_it_rejects_a_changed_body(note: bytes, key: CheckpointKey, change) -> None:
    tampered = _resign_text(note, change(_body(note)).encode("utf-8"))
    with pytest.raises(CheckpointSignatureInvalid):
        open_checkpoint(tampered, keys=key)


def test_it_rejects_a_changed_signature(note: bytes, key: CheckpointKey) -> None:
    parsed = SignedNote.parse(note)
    sig = parsed.signatures[0]
    for i in (0, len(sig.signature) // 2, len(sig.signature) - 1):
        flipped = bytearray(sig.signature)
        flipped[i] ^= 0x01
        bad = NoteSignature(sig.key_name, sig.key_id, bytes(flipped))
        tampered = SignedNote(text=parsed.text, signatures=(bad,)).to_bytes()
        with pytest.raises(CheckpointSignatureInvalid):
            open_checkpoint(tampered, keys=key)
    # Same (r, s) in non-canonical DER (a long-form length byte) is not our encoding.
    der = sig.signature
    assert der[0] == 0x30
    assert der[1] < 0x80
    ber = bytes([0x30, 0x81, der[1]]) + der[2:]
    tampered = SignedNote(
        text=parsed.text, signatures=(NoteSignature(sig.key_name, sig.key_id, ber),)
    ).to_bytes()
    with pytest.raises(CheckpointSignatureInvalid):
        open_checkpoint(tampered, keys=key)


def test_it_ignores_other_key_names_and_ids_and_then_has_no_trusted_signature(
    note: bytes, key: CheckpointKey
) -> None:
    sig = SignedNote.parse(note).signatures[0]
    text = SignedNote.parse(note).text
    for other in (
        NoteSignature(sig.key_name + "x", sig.key_id, sig.signature),
        NoteSignature(sig.key_name, sig.key_id ^ 1, sig.signature),
    ):
        tampered = SignedNote(text=text, signatures=(other,)).to_bytes()
        with pytest.raises(CheckpointNotTrusted):
            open_checkpoint(tampered, keys=key)


def test_it_rejects_a_checkpoint_from_another_key(note: bytes, key: CheckpointKey) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    impostor_key = CheckpointKey(ORIGIN, impostor.public_key())
    with pytest.raises(CheckpointNotTrusted):
        open_checkpoint(note, keys=impostor_key)
    # A note re-signed by the impostor under the trusted name is not trusted either.
    forged = sign_checkpoint(
        Checkpoint(ORIGIN, 1234, ROOT, ("ext one", "ext two")),
        key=impostor_key,
        sign=_signer(impostor),
    )
    with pytest.raises(CheckpointNotTrusted):
        open_checkpoint(forged, keys=key)
    # Even when it claims the trusted key ID, the signature does not verify.
    sig = SignedNote.parse(forged).signatures[0]
    claimed = NoteSignature(sig.key_name, key.key_id, sig.signature)
    forged = SignedNote(text=SignedNote.parse(forged).text, signatures=(claimed,)).to_bytes()
    with pytest.raises(CheckpointSignatureInvalid):
        open_checkpoint(forged, keys=key)


def test_it_accepts_extra_signatures_from_unknown_keys_but_not_a_bad_trusted_one(
    private_key: ec.EllipticCurvePrivateKey, note: bytes, key: CheckpointKey
) -> None:
    parsed = SignedNote.parse(note)
    witness = NoteSignature("witness.example/w1", 0x01020304, b"\x00" * 64)
    cosigned = SignedNote(text=parsed.text, signatures=(witness, *parsed.signatures)).to_bytes()
    assert open_checkpoint(cosigned, keys=key).size == 1234
    bad = NoteSignature(key.name, key.key_id, parsed.signatures[0].signature[:-1] + b"\x00")
    mixed = SignedNote(text=parsed.text, signatures=(*parsed.signatures, bad)).to_bytes()
    with pytest.raises(CheckpointSignatureInvalid):
        open_checkpoint(mixed, keys=key)


def test_it_checks_the_origin_it_expects(note: bytes, key: CheckpointKey) -> None:
    with pytest.raises(CheckpointOriginMismatch):
        open_checkpoint(note, keys=key, origin="ciphervault.example/audit/other")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda n: n + b"x", id="trailing-byte"),
        pytest.param(lambda n: n + b"\n", id="trailing-newline"),
        pytest.param(lambda n: n + b"more\n", id="trailing-line"),
        pytest.param(lambda n: n[:-1], id="no-final-newline"),
        pytest.param(lambda n: n.replace(b"\n\n", b"\n"), id="no-blank-line"),
        pytest.param(lambda n: n.split(b"\n\n")[0] + b"\n\n", id="no-signature"),
        pytest.param(lambda n: n.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda n: n.replace("\u2014".encode(), b"-"), id="hyphen-not-em-dash"),
        pytest.param(lambda n: n.replace("\u2014 ".encode(), "\u2014  ".encode()), id="two-spaces"),
        pytest.param(lambda n: n[:-2] + b" \n", id="space-in-signature"),
        pytest.param(_repad_signature, id="non-canonical-base64"),
        pytest.param(lambda n: b"\xff" + n, id="not-utf8"),
        pytest.param(lambda n: n.replace(b"1234", b"\x001234"), id="nul"),
        pytest.param(lambda n: n + n.split(b"\n\n")[1] * MAX_SIGNATURES, id="too-many-signatures"),
        pytest.param(lambda n: n + b"a" * MAX_NOTE_BYTES, id="too-large"),
    ],
)
def test_it_rejects_malformed_notes(note: bytes, key: CheckpointKey, change) -> None:
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(change(note), keys=key)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"{ORIGIN}\n1234\n", id="no-root-line"),
        pytest.param(f"{ORIGIN}\n01234\n{base64.b64encode(ROOT).decode()}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n+1234\n{base64.b64encode(ROOT).decode()}\n", id="plus-sign"),
        pytest.param(f"{ORIGIN}\n\u0661\n{base64.b64encode(ROOT).decode()}\n", id="arabic-digit"),
        pytest.param(f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n", id="size-over-u64"),
        pytest.param(f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", id="short-root"),
        pytest.param(f"{ORIGIN}\n1\n{URL_SAFE_ROOT}\n", id="url-b64"),
        pytest.param(f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\next\n", id="empty-ext"),
        pytest.param(f"\n1\n{base64.b64encode(ROOT).decode()}\n", id="empty-origin"),
        pytest.param(f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()} \n", id="root-space"),
        pytest.param(f"{ORIGIN}\n0\n{base64.b64encode(ROOT).decode()}\n", id="empty-tree-root"),
    ],
)
def test_it_rejects_malformed_bodies_even_when_signed(
    private_key: ec.EllipticCurvePrivateKey, key: CheckpointKey, text: str
) -> None:
    raw = text.encode("utf-8")
    signature = NoteSignature(key.name, key.key_id, _signer(private_key)(raw))
    signed = SignedNote(text=raw, signatures=(signature,)).to_bytes()
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(signed, keys=key)
    with pytest.raises(CheckpointFormatError):
        Checkpoint.from_text(raw)


def test_it_refuses_a_signer_that_returns_a_bad_signature(
    private_key: ec.EllipticCurvePrivateKey, key: CheckpointKey
) -> None:
    checkpoint = Checkpoint(ORIGIN, 1, ROOT)
    other = ec.generate_private_key(ec.SECP256R1())
    signers: list[Any] = [
        _signer(other),  # a rotated or wrong key version
        lambda message: b"",
        lambda message: b"\x30\x00",
        lambda message: _signer(private_key)(message) + b"\x00",
        lambda message: "not bytes",
    ]
    for signer in signers:
        with pytest.raises(CheckpointSigningFailed):
            sign_checkpoint(checkpoint, key=key, sign=signer)


def test_its_errors_share_one_base() -> None:
    for cls in (
        CheckpointFormatError,
        CheckpointNotTrusted,
        CheckpointOriginMismatch,
        CheckpointSignatureInvalid,
        CheckpointSigningFailed,
        InvalidCheckpointParameters,
    ):
        assert issubclass(cls, CheckpointError)
        assert issubclass(cls, AuditProofError)
