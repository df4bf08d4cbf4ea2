"""The envelope format: round trips, ranges, rewrap, strict parsing and every tamper vector.

No Django and no database here: ``vault.crypto`` is Django-free.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto import (
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_SIZE,
    TAG_SIZE,
    AuthenticationFailed,
    Decryptor,
    Encryptor,
    EnvelopeError,
    EnvelopeFormatError,
    InvalidEnvelopeParameters,
    NoMatchingStanza,
    UnsupportedEnvelope,
    body_size,
    decrypt,
    decrypt_iter,
    decrypt_stream,
    encrypt,
    encrypt_iter,
    encrypt_stream,
    parse_header,
    plaintext_size,
    plan_range,
    read_header,
    replace_stanzas,
    select_stanza,
    split_envelope,
    unwrap_dek,
)

pytestmark: list[pytest.MarkDecorator] = []

# Test-only keys, drawn per run or visibly patterned.
DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
CONTEXT = {"tenant": "t-1", "object": "o-1", "version": "1"}
STANZA = WrappedKey("local", KeyRef("local-kek", 1), "A256GCM", b"\x11" * 60)
RECOVERY = WrappedKey("pkcs11", KeyRef("pkcs11:token=t;object=r", 2), "AES-256-GCM", b"\x22" * 44)
SEG = 32
FULL = SEG + TAG_SIZE


def seal(
    plaintext: bytes,
    segment_size: int = SEG,
    *,
    dek: bytes = DEK,
    context: dict[str, str] | None = None,
    stanzas: list[WrappedKey] | None = None,
) -> bytes:
    return encrypt(
        plaintext,
        dek=dek,
        context=CONTEXT if context is None else context,
        stanzas=[STANZA] if stanzas is None else stanzas,
        segment_size=segment_size,
    )


def open_all(envelope: bytes, *, dek: bytes = DEK, context: dict[str, str] | None = None) -> bytes:
    return decrypt(envelope, key=dek, context=CONTEXT if context is None else context)


def segments(envelope: bytes) -> tuple[bytes, list[bytes]]:
    _, header, body = split_envelope(envelope)
    return header, [body[i : i + FULL] for i in range(0, len(body), FULL)]


def released(envelope: bytes, *, dek: bytes = DEK) -> tuple[bytes, EnvelopeError | None]:
    """What a streaming reader gets before the error, and the error."""
    out = bytearray()
    try:
        for chunk in decrypt_iter(envelope, key=dek, context=CONTEXT):
            out += chunk
    except EnvelopeError as exc:
        return bytes(out), exc
    return bytes(out), None


def chunked(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def cycle(*sizes: int) -> Iterator[int]:
    while True:
        yield from sizes


# --- round trips ----------------------------------------------------------------------------------

SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG - 1, 2 * SEG, 2 * SEG + 1, 10 * SEG + 7]


@pytest.mark.parametrize("size", SIZES)
def test_it_round_trips_small_sizes_through_every_api(size: int) -> None:
    plaintext = os.urandom(size)
    envelope = seal(plaintext)
    assert open_all(envelope) == plaintext

    sink = io.BytesIO()
    written = encrypt_stream(
        io.BytesIO(plaintext), sink, dek=DEK, context=CONTEXT, stanzas=[STANZA], segment_size=SEG
    )
    assert written == len(sink.getvalue())
    out = io.BytesIO()
    assert decrypt_stream(io.BytesIO(sink.getvalue()), out, key=DEK, context=CONTEXT) == size
    assert out.getvalue() == plaintext

    pieces = list(
        encrypt_iter(
            chunked(plaintext, cycle(1, 7, 33, 2)),
            dek=DEK,
            context=CONTEXT,
            stanzas=[STANZA],
            segment_size=SEG,
        )
    )
    joined = b"".join(pieces)
    assert b"".join(decrypt_iter(chunked(joined, cycle(5, 48, 3)), key=DEK, context=CONTEXT)) == (
        plaintext
    )
    header, header_bytes, body = split_envelope(joined)
    assert pieces[0] == header_bytes == header.to_bytes()
    assert len(body) == body_size(size, SEG)
    assert plaintext_size(len(body), SEG) == size


def test_it_makes_an_empty_plaintext_one_empty_final_segment() -> None:
    _, body = segments(seal(b""))
    assert len(body) == 1
    assert len(body[0]) == TAG_SIZE


@pytest.mark.parametrize(
    "size", [0, DEFAULT_SEGMENT_SIZE - 1, DEFAULT_SEGMENT_SIZE, DEFAULT_SEGMENT_SIZE + 1]
)
def test_it_round_trips_at_default_segment_boundaries(size: int) -> None:
    plaintext = os.urandom(size)
    assert open_all(seal(plaintext, DEFAULT_SEGMENT_SIZE)) == plaintext


def test_it_round_trips_several_mebibytes_through_files(tmp_path) -> None:
    plaintext = os.urandom(5 * 1024 * 1024 + 123)
    source, sealed, opened = tmp_path / "p", tmp_path / "e", tmp_path / "o"
    source.write_bytes(plaintext)
    with source.open("rb") as src, sealed.open("wb") as dst:
        encrypt_stream(src, dst, dek=DEK, context=CONTEXT, stanzas=[STANZA, RECOVERY])
    with sealed.open("rb") as src, opened.open("wb") as dst:
        decrypt_stream(src, dst, key=DEK, context=CONTEXT)
    assert opened.read_bytes() == plaintext
    with sealed.open("rb") as src:
        header, _ = read_header(src)
        decryptor = Decryptor(header, DEK, CONTEXT)
        assert b"".join(decryptor.iter_body(src)) == plaintext
    assert header.stanzas == (STANZA, RECOVERY)


def test_it_accepts_streams_without_readinto() -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._io = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._io.read(min(size, 5))  # short reads on purpose

    plaintext = os.urandom(3 * SEG + 5)
    envelope = seal(plaintext)
    out = io.BytesIO()
    decrypt_stream(ReadOnly(envelope), out, key=DEK, context=CONTEXT)  # type: ignore[arg-type]
    assert out.getvalue() == plaintext


def test_it_uses_a_fresh_salt_per_object() -> None:
    first, second = seal(b"same"), seal(b"same")
    assert (
        parse_header(split_envelope(first)[1]).salt != parse_header(split_envelope(second)[1]).salt
    )
    assert first != second


def test_it_resolves_the_key_from_the_header_when_given_a_function() -> None:
    envelope = seal(b"hello", stanzas=[STANZA, RECOVERY])
    seen = []

    def key(header):
        seen.append(header.stanzas)
        return DEK

    assert decrypt(envelope, key=key, context=CONTEXT) == b"hello"
    assert seen == [(STANZA, RECOVERY)]


# --- ranges ---------------------------------------------------------------------------------------


def test_it_decrypts_every_range_of_a_small_object() -> None:
    plaintext = os.urandom(3 * SEG + 5)
    header, _, body = split_envelope(seal(plaintext))
    decryptor = Decryptor(header, DEK, CONTEXT)
    for start in range(len(plaintext) + 1):
        for end in range(start, len(plaintext) + 1):
            plan = plan_range(segment_size=SEG, plaintext_size=len(plaintext), start=start, end=end)
            window = body[plan.ciphertext_start : plan.ciphertext_end]
            assert b"".join(decryptor.decrypt_range(plan, window)) == plaintext[start:end]


def test_it_plans_ranges_across_segment_boundaries() -> None:
    plan = plan_range(segment_size=SEG, plaintext_size=100, start=SEG - 1, end=2 * SEG + 1)
    assert (plan.first_segment, plan.last_segment, plan.final_segment) == (0, 2, 3)
    assert (plan.ciphertext_start, plan.ciphertext_end) == (0, 3 * FULL)
    assert (plan.skip, plan.length) == (SEG - 1, SEG + 2)
    tail = plan_range(segment_size=SEG, plaintext_size=100, start=99, end=100)
    assert (tail.first_segment, tail.ciphertext_start, tail.ciphertext_end) == (
        3,
        3 * FULL,
        body_size(100, SEG),
    )


def test_it_reads_a_range_of_a_large_object_from_a_file(tmp_path) -> None:
    plaintext = os.urandom(3 * DEFAULT_SEGMENT_SIZE + 10)
    path = tmp_path / "e"
    path.write_bytes(seal(plaintext, DEFAULT_SEGMENT_SIZE))
    with path.open("rb") as src:
        header, raw = read_header(src)
        start, end = DEFAULT_SEGMENT_SIZE - 3, 2 * DEFAULT_SEGMENT_SIZE + 4
        plan = plan_range(
            segment_size=header.segment_size, plaintext_size=len(plaintext), start=start, end=end
        )
        src.seek(len(raw) + plan.ciphertext_start)
        window = src.read(plan.ciphertext_end - plan.ciphertext_start)
    got = b"".join(Decryptor(header, DEK, CONTEXT).decrypt_range(plan, window))
    assert got == plaintext[start:end]


def test_it_rejects_a_range_planned_with_a_wrong_size() -> None:
    plaintext = os.urandom(3 * SEG + 5)
    header, _, body = split_envelope(seal(plaintext))
    decryptor = Decryptor(header, DEK, CONTEXT)
    # Claiming the object ends after segment 1 makes segment 1 "final": it must not open.
    plan = plan_range(segment_size=SEG, plaintext_size=2 * SEG, start=SEG, end=2 * SEG)
    with pytest.raises(AuthenticationFailed):
        list(decryptor.decrypt_range(plan, body[plan.ciphertext_start : plan.ciphertext_end]))


def test_it_rejects_a_short_or_long_range_window() -> None:
    plaintext = os.urandom(3 * SEG + 5)
    header, _, body = split_envelope(seal(plaintext))
    decryptor = Decryptor(header, DEK, CONTEXT)
    plan = plan_range(segment_size=SEG, plaintext_size=len(plaintext), start=0, end=SEG + 1)
    window = body[plan.ciphertext_start : plan.ciphertext_end]
    with pytest.raises(AuthenticationFailed):
        list(decryptor.decrypt_range(plan, window[:-1]))
    with pytest.raises(AuthenticationFailed):
        list(decryptor.decrypt_range(plan, window + b"x"))


def test_it_rejects_ranges_outside_the_object() -> None:
    with pytest.raises(InvalidEnvelopeParameters):
        plan_range(segment_size=SEG, plaintext_size=10, start=5, end=11)
    with pytest.raises(InvalidEnvelopeParameters):
        plan_range(segment_size=SEG, plaintext_size=10, start=6, end=5)
    empty = plan_range(segment_size=SEG, plaintext_size=10, start=4, end=4)
    assert empty.ciphertext_start == empty.ciphertext_end
    assert empty.length == 0


def test_it_maps_body_sizes_back_to_plaintext_sizes_strictly() -> None:
    for size in range(0, 5 * SEG):
        assert plaintext_size(body_size(size, SEG), SEG) == size
    for impossible in (0, TAG_SIZE - 1, FULL + 1, FULL + TAG_SIZE, 2 * FULL + 15):
        with pytest.raises(AuthenticationFailed):
            plaintext_size(impossible, SEG)


# --- rewrap and stanzas ---------------------------------------------------------------------------


def test_it_rewraps_by_replacing_stanzas_without_touching_the_body() -> None:
    plaintext = os.urandom(2 * SEG + 3)
    envelope = seal(plaintext)
    header, header_bytes, body = split_envelope(envelope)
    new_header = replace_stanzas(header_bytes, [RECOVERY, STANZA], dek=DEK)
    assert new_header.startswith(header.fixed)
    rewrapped = new_header + body
    assert open_all(rewrapped) == plaintext
    assert parse_header(new_header).stanzas == (RECOVERY, STANZA)


def test_it_refuses_a_rewrap_with_the_wrong_dek() -> None:
    _, header_bytes, _ = split_envelope(seal(b"x"))
    with pytest.raises(AuthenticationFailed):
        replace_stanzas(header_bytes, [RECOVERY], dek=OTHER_DEK)


def test_it_still_decrypts_with_stanzas_replaced_or_added() -> None:
    plaintext = b"stanzas are outside the body's associated data"
    header, _, body = split_envelope(seal(plaintext))
    forged = WrappedKey("tpm", KeyRef("0" * 32, 9), "tpm2-seal-aes256kek-v1", b"\x33" * 300)
    for stanzas in ([forged], [STANZA, forged], [forged] * 16):
        assert open_all(header.with_stanzas(stanzas).to_bytes() + body) == plaintext


def test_it_selects_and_unwraps_the_stanza_for_a_backend() -> None:
    header = parse_header(split_envelope(seal(b"x", stanzas=[STANZA, RECOVERY]))[1])
    assert select_stanza(header, backend="pkcs11") == RECOVERY
    assert select_stanza(header, key_id="local-kek", version=1) == STANZA
    with pytest.raises(NoMatchingStanza):
        select_stanza(header, backend="kmip")
    calls = []

    def unwrap(wrapped: WrappedKey) -> bytes:
        calls.append(wrapped)
        return DEK

    assert unwrap_dek(header, unwrap, backend="pkcs11") == DEK
    assert calls == [RECOVERY]
    with pytest.raises(AuthenticationFailed):
        unwrap_dek(header, lambda wrapped: OTHER_DEK)
    with pytest.raises(AuthenticationFailed):
        unwrap_dek(header, lambda wrapped: b"short")


def test_it_opens_with_a_real_local_backend_and_binds_the_context(tmp_path) -> None:
    from kms_plugins.config import KeyBackends
    from kms_plugins.errors import UnwrapFailed

    options = {"PATH": str(tmp_path / "k.json"), "KEY_FILE": str(tmp_path / "master")}
    backends = KeyBackends({"soft": {"BACKEND": "local", "OPTIONS": options}})
    backend = backends["soft"]
    ref = backend.create_key()
    dek = os.urandom(32)
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    envelope = encrypt(b"secret", dek=dek, context=CONTEXT, stanzas=[wrapped])

    def key(header):
        return unwrap_dek(header, lambda w: backend.unwrap(w, CONTEXT), backend="local")

    assert decrypt(envelope, key=key, context=CONTEXT) == b"secret"
    # The same header moved to another object: the backend refuses to unwrap under it.
    other = {**CONTEXT, "object": "o-2"}
    header = parse_header(split_envelope(envelope)[1])
    with pytest.raises(UnwrapFailed):
        unwrap_dek(header, lambda w: backend.unwrap(w, other))


# --- tamper vectors -------------------------------------------------------------------------------

PLAINTEXT = bytes(range(100))  # segments of 32, 32, 32 and 4 bytes


@pytest.fixture
def envelope() -> bytes:
    return seal(PLAINTEXT)


def assert_fails(envelope: bytes, error: type[EnvelopeError], **kwargs) -> None:
    with pytest.raises(error):
        open_all(envelope, **kwargs)


def test_it_rejects_truncation_at_every_byte(envelope: bytes) -> None:
    header, segs = segments(envelope)
    for cut in range(len(envelope)):
        truncated = envelope[:cut]
        error = EnvelopeFormatError if cut < len(header) else AuthenticationFailed
        assert_fails(truncated, error)
        out, exc = released(truncated)
        assert isinstance(exc, error)
        # Only whole segments that authenticated were released, never the cut one.
        whole = max(0, (cut - len(header)) // FULL)
        assert out == PLAINTEXT[: min(whole, len(segs) - 1) * SEG][: len(out)]
        assert len(out) % SEG == 0


def test_it_rejects_truncation_at_every_segment_boundary(envelope: bytes) -> None:
    header, segs = segments(envelope)
    for count in range(len(segs)):
        assert_fails(header + b"".join(segs[:count]), AuthenticationFailed)


def test_it_rejects_reordered_segments(envelope: bytes) -> None:
    header, s = segments(envelope)
    assert_fails(header + s[1] + s[0] + s[2] + s[3], AuthenticationFailed)
    assert_fails(header + s[0] + s[2] + s[1] + s[3], AuthenticationFailed)
    out, exc = released(header + s[0] + s[2] + s[1] + s[3])
    assert isinstance(exc, AuthenticationFailed)
    assert out == PLAINTEXT[:SEG]


def test_it_rejects_a_segment_swapped_from_another_object_under_the_same_key(envelope) -> None:
    header, s = segments(envelope)
    _, other = segments(seal(PLAINTEXT))  # same DEK, same context, same plaintext
    for index in range(len(s)):
        swapped = [*s]
        swapped[index] = other[index]
        assert_fails(header + b"".join(swapped), AuthenticationFailed)


def test_it_rejects_a_dropped_segment(envelope: bytes) -> None:
    header, s = segments(envelope)
    assert_fails(header + s[0] + s[1] + s[2], AuthenticationFailed)  # the final one
    assert_fails(header + s[0] + s[2] + s[3], AuthenticationFailed)  # a middle one


def test_it_rejects_a_duplicated_segment(envelope: bytes) -> None:
    header, s = segments(envelope)
    assert_fails(header + s[0] + s[0] + s[1] + s[2] + s[3], AuthenticationFailed)
    assert_fails(header + b"".join(s) + s[3], AuthenticationFailed)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_SIZE, b"x" * FULL])
def test_it_rejects_trailing_data(envelope: bytes, extra: bytes) -> None:
    assert_fails(envelope + extra, AuthenticationFailed)
    out, exc = released(envelope + extra)
    assert isinstance(exc, AuthenticationFailed)
    assert out == PLAINTEXT[: len(out)]


def test_it_rejects_trailing_data_after_a_full_final_segment() -> None:
    plaintext = os.urandom(2 * SEG)
    assert_fails(seal(plaintext) + b"\x00", AuthenticationFailed)


def test_it_rejects_an_empty_segment_appended_after_a_full_final_one() -> None:
    header, s = segments(seal(os.urandom(2 * SEG)))
    assert_fails(header + b"".join(s) + s[-1][-TAG_SIZE:], AuthenticationFailed)


def test_it_rejects_the_wrong_context(envelope: bytes) -> None:
    for context in (
        {**CONTEXT, "object": "o-2"},
        {**CONTEXT, "tenant": "t-2"},
        {**CONTEXT, "version": "2"},
        {**CONTEXT, "extra": ""},
        {"tenant": "t-1", "object": "o-1"},
    ):
        assert_fails(envelope, AuthenticationFailed, context=context)


def test_it_rejects_the_wrong_dek_before_decrypting_anything(envelope: bytes) -> None:
    assert_fails(envelope, AuthenticationFailed, dek=OTHER_DEK)
    out, exc = released(envelope, dek=OTHER_DEK)
    assert out == b""
    assert isinstance(exc, AuthenticationFailed)
    header = parse_header(split_envelope(envelope)[1])
    with pytest.raises(AuthenticationFailed, match="commitment"):
        Decryptor(header, OTHER_DEK, CONTEXT)


def _header_offsets(envelope: bytes) -> dict[str, int]:
    context_len = struct.unpack(">H", envelope[14:16])[0]
    salt = 16 + context_len
    return {"context": 16, "salt": salt, "commitment": salt + 32, "stanzas": salt + 64}


def _set(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def test_it_rejects_a_tampered_magic(envelope: bytes) -> None:
    for at in range(8):
        assert_fails(_set(envelope, at, bytes([envelope[at] ^ 0x40])), EnvelopeFormatError)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_it_rejects_unknown_versions(envelope: bytes, version: int) -> None:
    assert_fails(_set(envelope, 8, bytes([version])), UnsupportedEnvelope)


@pytest.mark.parametrize("algorithm", [0, 2, 255])
def test_it_rejects_unknown_algorithms(envelope: bytes, algorithm: int) -> None:
    assert_fails(_set(envelope, 9, bytes([algorithm])), UnsupportedEnvelope)


def test_it_rejects_a_tampered_segment_size(envelope: bytes) -> None:
    for size in (16, 31, 33, 64, 100_000):
        assert_fails(_set(envelope, 10, struct.pack(">I", size)), AuthenticationFailed)
    for size in (0, 15, 16 * 1024 * 1024 + 1, 2**32 - 1):
        assert_fails(_set(envelope, 10, struct.pack(">I", size)), EnvelopeFormatError)


def test_it_rejects_a_tampered_context_even_when_the_caller_expects_it(envelope: bytes) -> None:
    # {"object":"o-1",...}: change "o-1" to "o-2" and claim that is what we expect.
    at = envelope.index(b'"o-1"') + 3
    tampered = _set(envelope, at, b"2")
    assert_fails(tampered, AuthenticationFailed, context={**CONTEXT, "object": "o-2"})
    assert_fails(tampered, AuthenticationFailed)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":"b" }',
        b'{"b":"1","a":"2"}',
        b'{"a":"1","a":"2"}',
        b'["a","b"]',
        b'{"a":1}',
        b'{"":"x"}',
        b'{"a":"\\u00e9"}',
        b'{"a":"\xff"}',
        b'{"a":"\\ud800"}',
        b"{",
    ],
)
def test_it_rejects_a_non_canonical_context(raw: bytes) -> None:
    envelope = seal(b"x", context={"a": "b"})
    header, _ = segments(envelope)
    context_len = struct.unpack(">H", header[14:16])[0]
    forged = (
        header[:14] + struct.pack(">H", len(raw)) + raw + header[16 + context_len :]
    ) + envelope[len(header) :]
    assert_fails(forged, EnvelopeFormatError, context={"a": "b"})


def test_it_rejects_a_tampered_salt_or_commitment(envelope: bytes) -> None:
    offsets = _header_offsets(envelope)
    for field in ("salt", "commitment"):
        for at in (offsets[field], offsets[field] + 31):
            assert_fails(_set(envelope, at, bytes([envelope[at] ^ 1])), AuthenticationFailed)


def test_it_rejects_bad_stanza_counts_and_lengths(envelope: bytes) -> None:
    at = _header_offsets(envelope)["stanzas"]
    header, _ = segments(envelope)
    body = envelope[len(header) :]
    stanza_len = struct.unpack(">H", envelope[at + 1 : at + 3])[0]
    for count in (0, 2, 17, 255):
        assert_fails(_set(envelope, at, bytes([count])), EnvelopeFormatError)
    for length in (0, 1, stanza_len - 1, stanza_len + 1, 0xFFFF):
        forged = _set(header, at + 1, struct.pack(">H", length)) + body
        assert_fails(forged, EnvelopeFormatError)
    # Inner field lengths that overrun the stanza.
    mechanism_len_at = at + 3 + 1 + len("local") + 2 + len("local-kek") + 4
    for inner in (at + 3, at + 4 + len("local"), mechanism_len_at):
        forged = _set(header, inner, b"\xff") + body
        assert_fails(forged, EnvelopeFormatError)


def test_it_rejects_a_header_with_bytes_after_it() -> None:
    _, header_bytes, _ = split_envelope(seal(b"x"))
    with pytest.raises(EnvelopeFormatError):
        parse_header(header_bytes + b"\x00")
    with pytest.raises(EnvelopeFormatError):
        parse_header(header_bytes[:-1])


def test_it_bounds_the_header_size() -> None:
    big = WrappedKey("local", KeyRef("k" * 1024, 1), "m" * 64, b"\x00" * 8192)
    with pytest.raises(InvalidEnvelopeParameters):
        Encryptor(DEK, CONTEXT, [big] * 8)
    # A forged header that claims eight maximal stanzas stops at MAX_HEADER_SIZE.
    encryptor = Encryptor(DEK, CONTEXT, [big] * 7)
    header = encryptor.header
    assert len(header) < MAX_HEADER_SIZE
    at = len(encryptor.header_info.fixed)
    one = header[at + 1 : at + 1 + (len(header) - at - 1) // 7]
    forged = header[:at] + b"\x08" + header[at + 1 :] + one
    with pytest.raises(EnvelopeFormatError, match="larger than"):
        parse_header(forged)


def test_it_releases_no_plaintext_from_a_failed_segment() -> None:
    header, s = segments(seal(PLAINTEXT))
    decryptor = Decryptor(parse_header(header), DEK, CONTEXT)
    out = bytearray(b"\xee" * SEG)
    bad = bytearray(s[1])
    bad[0] ^= 1
    with pytest.raises(AuthenticationFailed):
        decryptor.open_segment_into(1, bytes(bad), out, final=False)
    assert out == bytes(SEG)  # wiped: cryptography writes before it checks the tag
    with pytest.raises(AuthenticationFailed):
        decryptor.open_segment_into(1, s[1], out, final=True)  # right bytes, wrong flag
    assert decryptor.open_segment_into(1, s[1], out, final=False) == SEG
    assert bytes(out) == PLAINTEXT[SEG : 2 * SEG]


def test_it_flips_every_bit_of_a_small_envelope_without_releasing_wrong_plaintext() -> None:
    envelope = seal(b"0123456789abcdefghijklmnopqrstuvwxyz!", 16, stanzas=[STANZA])
    stanza_start = _header_offsets(envelope)["stanzas"]
    header_len = len(segments(envelope)[0])
    for at in range(len(envelope)):
        for mask in (0x01, 0x80):
            out, exc = released(_set(envelope, at, bytes([envelope[at] ^ mask])))
            if stanza_start <= at < header_len and exc is None:
                # A stanza's wrapped bytes are outside the format's integrity by design.
                assert out == b"0123456789abcdefghijklmnopqrstuvwxyz!"
                continue
            assert exc is not None, at
            assert b"0123456789abcdefghijklmnopqrstuvwxyz!".startswith(out)


# --- encryptor misuse -----------------------------------------------------------------------------


def test_it_enforces_segment_order_and_lengths() -> None:
    encryptor = Encryptor(DEK, CONTEXT, [STANZA], segment_size=SEG)
    with pytest.raises(InvalidEnvelopeParameters):
        encryptor.seal_segment(b"x" * (SEG - 1), final=False)
    with pytest.raises(InvalidEnvelopeParameters):
        encryptor.seal_segment(b"x" * (SEG + 1), final=True)
    encryptor.seal_segment(b"x" * SEG, final=False)
    with pytest.raises(InvalidEnvelopeParameters):
        encryptor.seal_segment(b"", final=True)  # empty final only for an empty object
    encryptor.seal_segment(b"x", final=True)
    assert encryptor.finished
    with pytest.raises(InvalidEnvelopeParameters):
        encryptor.seal_segment(b"x", final=True)
    with pytest.raises(InvalidEnvelopeParameters):
        encryptor.encrypt_body_stream(b"more", io.BytesIO())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dek": b"short"}, "DEK"),
        ({"segment_size": 15}, "segment size"),
        ({"segment_size": 16 * 1024 * 1024 + 1}, "segment size"),
        ({"stanzas": []}, "stanzas"),
        ({"stanzas": [STANZA] * 17}, "stanzas"),
        ({"stanzas": [WrappedKey("lo cal", KeyRef("k", 1), "m", b"w")]}, "backend"),
        ({"stanzas": [WrappedKey("local", KeyRef("", 1), "m", b"w")]}, "key id"),
        ({"stanzas": [WrappedKey("local", KeyRef("a\nb", 1), "m", b"w")]}, "key id"),
        ({"stanzas": [WrappedKey("local", KeyRef("k", -1), "m", b"w")]}, "version"),
        ({"stanzas": [WrappedKey("local", KeyRef("k", 2**32), "m", b"w")]}, "version"),
        ({"stanzas": [WrappedKey("local", KeyRef("k", 1), "", b"w")]}, "mechanism"),
        ({"stanzas": [WrappedKey("local", KeyRef("k", 1), "m", b"")]}, "wrapped"),
        ({"stanzas": ["not a stanza"]}, "WrappedKey"),
        ({"context": {"": "x"}}, "context"),
        ({"context": {"a": 1}}, "context"),
        ({"context": {"a": "x" * 5000}}, "context"),
    ],
)
def test_it_rejects_bad_encryption_parameters(kwargs, match: str) -> None:
    arguments: dict[str, Any] = {
        "dek": DEK,
        "context": CONTEXT,
        "stanzas": [STANZA],
        "segment_size": SEG,
    }
    arguments.update(kwargs)
    with pytest.raises(InvalidEnvelopeParameters, match=match):
        Encryptor(
            arguments["dek"],
            arguments["context"],
            arguments["stanzas"],
            segment_size=arguments["segment_size"],
        )


def test_it_imports_without_django() -> None:
    code = (
        "import sys, vault.crypto; "
        "bad = [m for m in sys.modules if m == 'django' or m.startswith('django.')]; "
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
