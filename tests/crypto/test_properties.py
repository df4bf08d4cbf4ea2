"""Property tests: round trips for random sizes and segment sizes; corruption never silently
yields wrong plaintext."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto import (
    Decryptor,
    EnvelopeError,
    decrypt,
    decrypt_iter,
    encrypt,
    encrypt_stream,
    plan_range,
    split_envelope,
)

pytestmark: list[pytest.MarkDecorator] = []

DEK = bytes(range(32))  # test-only
CONTEXT = {"tenant": "t", "object": "o", "version": "3"}
STANZAS = [WrappedKey("local", KeyRef("local-kek", 1), "A256GCM", b"\x11" * 60)]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    plaintext=st.binary(max_size=3000),
    segment_size=st.integers(min_value=16, max_value=700),
    read_size=st.integers(min_value=1, max_value=900),
)
def test_it_round_trips_any_size_and_segment_size(
    plaintext: bytes, segment_size: int, read_size: int
) -> None:
    sink = io.BytesIO()
    encrypt_stream(
        io.BufferedReader(io.BytesIO(plaintext), buffer_size=read_size),
        sink,
        dek=DEK,
        context=CONTEXT,
        stanzas=STANZAS,
        segment_size=segment_size,
    )
    envelope = sink.getvalue()
    assert decrypt(envelope, key=DEK, context=CONTEXT) == plaintext
    chunks = [envelope[i : i + read_size] for i in range(0, len(envelope), read_size)]
    assert b"".join(decrypt_iter(chunks, key=DEK, context=CONTEXT)) == plaintext


@FAST
@given(
    plaintext=st.binary(max_size=2000),
    segment_size=st.integers(min_value=16, max_value=300),
    data=st.data(),
)
def test_it_decrypts_any_range(plaintext: bytes, segment_size: int, data: st.DataObject) -> None:
    header, _, body = split_envelope(
        encrypt(plaintext, dek=DEK, context=CONTEXT, stanzas=STANZAS, segment_size=segment_size)
    )
    start = data.draw(st.integers(min_value=0, max_value=len(plaintext)))
    end = data.draw(st.integers(min_value=start, max_value=len(plaintext)))
    plan = plan_range(
        segment_size=segment_size, plaintext_size=len(plaintext), start=start, end=end
    )
    window = body[plan.ciphertext_start : plan.ciphertext_end]
    got = b"".join(Decryptor(header, DEK, CONTEXT).decrypt_range(plan, window))
    assert got == plaintext[start:end]


@settings(max_examples=300, deadline=None)
@given(
    plaintext=st.binary(min_size=0, max_size=400),
    segment_size=st.integers(min_value=16, max_value=64),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_it_never_releases_wrong_plaintext_after_a_byte_is_corrupted(
    plaintext: bytes, segment_size: int, position: float, mask: int
) -> None:
    envelope = bytearray(
        encrypt(plaintext, dek=DEK, context=CONTEXT, stanzas=STANZAS, segment_size=segment_size)
    )
    envelope[int(position * len(envelope))] ^= mask
    released = bytearray()
    try:
        for chunk in decrypt_iter(bytes(envelope), key=DEK, context=CONTEXT):
            released += chunk
    except EnvelopeError:
        assert plaintext.startswith(bytes(released))  # only authentic segments came out
    else:
        # Only a stanza's bytes are outside the format's integrity, by design.
        assert bytes(released) == plaintext
