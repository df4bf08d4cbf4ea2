"""Generate tests/vectors/envelope-v1.json: known-answer vectors for envelope format version 1.

    .venv/bin/python tests/vectors/generate.py            # rewrite the file
    .venv/bin/python tests/vectors/generate.py --check    # exit 1 if the file is stale

Every key here is a FIXED TEST KEY, visibly patterned, used nowhere else: it is not key
material of any deployment. The salts are fixed too, which production code must never do (the
encryptor's ``_salt`` door exists for these vectors only).

Positive vectors give the inputs (DEK, context, segment size, salt, stanzas, plaintext) and the
exact envelope; negative vectors give an envelope, the DEK and context to try, and the error
class that must result (``EnvelopeFormatError``, ``UnsupportedEnvelope`` or
``AuthenticationFailed``). All binary fields are lowercase hex.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto.envelope import TAG_SIZE, Encryptor, split_envelope

OUTPUT = Path(__file__).with_name("envelope-v1.json")

# FIXED TEST-ONLY KEYS: patterned bytes, never used outside these vectors.
TEST_DEK = bytes(range(0x00, 0x20))
TEST_DEK_OTHER = bytes(range(0x20, 0x40))
TEST_SALT = bytes([0xA5]) * 32
TEST_SALT_OTHER = bytes([0x5A]) * 32
CONTEXT = {"object": "obj-0001", "tenant": "tenant-test", "version": "1"}
OTHER_CONTEXT = {"object": "obj-0002", "tenant": "tenant-test", "version": "1"}
STANZAS = [
    WrappedKey("local", KeyRef("local-test-kek", 1), "A256GCM", bytes([0x11]) * 60),
    WrappedKey(
        "pkcs11", KeyRef("pkcs11:token=test;object=recovery", 3), "AES-256-GCM", b"\x22" * 60
    ),
]


def _pattern(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def _seal(
    plaintext: bytes,
    segment_size: int,
    *,
    dek: bytes = TEST_DEK,
    salt: bytes = TEST_SALT,
    context: dict[str, str] = CONTEXT,
    stanzas: list[WrappedKey] = STANZAS,
) -> bytes:
    encryptor = Encryptor(dek, context, stanzas, segment_size=segment_size, _salt=salt)
    return encryptor.header + b"".join(encryptor.iter_body(plaintext))


def _stanza_json(stanza: WrappedKey) -> dict[str, Any]:
    return {
        "backend": stanza.backend,
        "key_id": stanza.key.key_id,
        "key_version": stanza.key.version,
        "mechanism": stanza.mechanism,
        "wrapped": stanza.ciphertext.hex(),
    }


def positive_vectors() -> list[dict[str, Any]]:
    cases = [
        ("empty plaintext: one empty final segment", 0, 32),
        ("one byte", 1, 32),
        ("exactly one full segment", 32, 32),
        ("one segment plus one byte", 33, 32),
        ("three segments, short final", 80, 32),
        ("two full segments, full final", 64, 32),
        ("minimum segment size", 50, 16),
    ]
    vectors = []
    for name, size, segment_size in cases:
        plaintext = _pattern(size)
        envelope = _seal(plaintext, segment_size)
        header, header_bytes, _ = split_envelope(envelope)
        vectors.append(
            {
                "name": name,
                "dek": TEST_DEK.hex(),
                "context": CONTEXT,
                "segment_size": segment_size,
                "salt": TEST_SALT.hex(),
                "stanzas": [_stanza_json(s) for s in STANZAS],
                "plaintext": plaintext.hex(),
                "header_length": len(header_bytes),
                "fixed_header": header.fixed.hex(),
                "header": header_bytes.hex(),
                "envelope": envelope.hex(),
            }
        )
    return vectors


def _negative(name: str, envelope: bytes, error: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dek": extra.get("dek", TEST_DEK).hex(),
        "context": extra.get("context", CONTEXT),
        "envelope": envelope.hex(),
        "error": error,
    }


def negative_vectors() -> list[dict[str, Any]]:
    segment_size = 32
    full = segment_size + TAG_SIZE
    plaintext = _pattern(100)  # segments of 32, 32, 32 and 4 bytes
    good = _seal(plaintext, segment_size)
    other = _seal(plaintext, segment_size, salt=TEST_SALT_OTHER)
    _, header, body = split_envelope(good)
    _, _, other_body = split_envelope(other)
    segs = [body[i : i + full] for i in range(0, len(body), full)]
    other_segs = [other_body[i : i + full] for i in range(0, len(other_body), full)]
    context_len = struct.unpack(">H", header[14:16])[0]
    salt_at = 16 + context_len
    commitment_at = salt_at + 32
    stanzas_at = commitment_at + 32
    stanza_len = struct.unpack(">H", header[stanzas_at + 1 : stanzas_at + 3])[0]

    def flip(data: bytes, at: int, mask: int = 0x01) -> bytes:
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]

    def header_with(at: int, value: bytes) -> bytes:
        return header[:at] + value + header[at + len(value) :]

    auth, fmt, unsupported = "AuthenticationFailed", "EnvelopeFormatError", "UnsupportedEnvelope"
    vectors = [
        _negative("truncated inside the final segment", good[:-1], auth),
        _negative("truncated at a segment boundary", header + b"".join(segs[:3]), auth),
        _negative("truncated in the middle of a segment", header + segs[0] + segs[1][:20], auth),
        _negative("body missing entirely", header, auth),
        _negative("dropped final segment", header + b"".join(segs[:-1]), auth),
        _negative("reordered segments", header + segs[1] + segs[0] + segs[2] + segs[3], auth),
        _negative(
            "segment swapped in from another object under the same DEK",
            header + segs[0] + other_segs[1] + segs[2] + segs[3],
            auth,
        ),
        _negative(
            "duplicated segment", header + segs[0] + segs[0] + segs[1] + segs[2] + segs[3], auth
        ),
        _negative("trailing byte after the final segment", good + b"\x00", auth),
        _negative("trailing copy of the final segment", good + segs[3], auth),
        _negative("flipped bit in a body segment", flip(good, len(header) + 5), auth),
        _negative("flipped bit in a tag", flip(good, len(header) + full - 1), auth),
        _negative("wrong context", good, auth, context=OTHER_CONTEXT),
        _negative("wrong DEK", good, auth, dek=TEST_DEK_OTHER),
        _negative("tampered magic", flip(good, 1), fmt),
        _negative("tampered version", header_with(8, b"\x02") + body, unsupported),
        _negative("tampered algorithm", header_with(9, b"\x02") + body, unsupported),
        _negative(
            "tampered segment size (in bounds)",
            header_with(10, struct.pack(">I", 48)) + body,
            auth,
        ),
        _negative("segment size out of bounds", header_with(10, struct.pack(">I", 15)) + body, fmt),
        _negative(
            "tampered context (still canonical)",
            flip(good, 16 + context_len - 3),  # inside the last value ("1" -> "0")
            auth,
            context={**CONTEXT, "version": "0"},
        ),
        _negative("context not canonical", header_with(17, b" ") + body, fmt),
        _negative("tampered salt", flip(good, salt_at), auth),
        _negative("tampered key commitment", flip(good, commitment_at + 31), auth),
        _negative("stanza count zero", header_with(stanzas_at, b"\x00") + body, fmt),
        _negative("stanza count larger than present", header_with(stanzas_at, b"\x03") + body, fmt),
        _negative(
            "stanza length one too long",
            header_with(stanzas_at + 1, struct.pack(">H", stanza_len + 1)) + body,
            fmt,
        ),
        _negative(
            "stanza length one too short",
            header_with(stanzas_at + 1, struct.pack(">H", stanza_len - 1)) + body,
            fmt,
        ),
        _negative("header truncated in a stanza", header[:-10], fmt),
    ]
    return vectors


def build() -> dict[str, Any]:
    return {
        "description": (
            "Ciphervault envelope format version 1 (docs/format.md). FIXED TEST-ONLY keys and "
            "salts; binary fields are hex. Generated by tests/vectors/generate.py."
        ),
        "format_version": 1,
        "positive": positive_vectors(),
        "negative": negative_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
