"""Fuzzing the envelope parser and decryptor (``vault.crypto.envelope``, ``docs/format.md``).

Inputs: wholly random bytes, and real envelopes (made by ``encrypt`` with a random DEK wrapped by
a real local keystore backend) edited field by field and byte by byte (see
``tests/fuzz/mutations.py``). What every test proves, for every input:

- only the documented errors come out: ``EnvelopeFormatError`` or ``UnsupportedEnvelope`` from
  parsing, ``AuthenticationFailed`` from decryption, ``InvalidEnvelopeParameters`` only where the
  docs say (a range plan for another segment size), and, when the DEK is unwrapped through a key
  backend, ``NoMatchingStanza`` and the backend's own documented errors; never ``IndexError``,
  ``struct.error``, ``UnicodeDecodeError``, ``json.JSONDecodeError``, ``RecursionError`` or
  an undocumented ``ValueError``;
- a decryption that succeeds yields exactly the genuine plaintext, and only when the
  authenticated parts (the header's fixed part and the body) are byte for byte the genuine
  ones: only the recipient stanzas, which the format leaves outside the authenticated data, may
  differ;
- a decryption that fails releases no plaintext but whole, authentic segments before the
  failure: never the failing segment, never a full plaintext, never anything that is not a
  prefix of the genuine plaintext;
- the in-memory and the streaming reader agree on every input.
"""

from __future__ import annotations

import io
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from kms_plugins.base import KeyBackend
from kms_plugins.errors import InvalidInput, KeyNotFound, UnwrapFailed
from kms_plugins.testing.local import session_harness
from kms_plugins.types import WrappedKey
from tests.fuzz.mutations import Field, mutated, only_documented, sized
from vault.crypto import (
    TAG_SIZE,
    AuthenticationFailed,
    Decryptor,
    EnvelopeFormatError,
    EnvelopeHeader,
    InvalidEnvelopeParameters,
    NoMatchingStanza,
    UnsupportedEnvelope,
    decrypt,
    decrypt_stream,
    encrypt,
    parse_header,
    plan_range,
    read_header,
    split_envelope,
    unwrap_dek,
)
from vault.crypto.envelope import MAGIC

pytestmark: list[pytest.MarkDecorator] = []

CONTEXT = {"tenant": "t-fuzz", "object": "o-42", "version": "7"}  # the random-input tests
PARSE_ERRORS: tuple[type[BaseException], ...] = (EnvelopeFormatError, UnsupportedEnvelope)
DECRYPT_ERRORS = (*PARSE_ERRORS, AuthenticationFailed)
# The local backend's documented unwrap errors (kms_plugins/errors.py) and unwrap_dek's own.
UNWRAP_ERRORS = (*DECRYPT_ERRORS, NoMatchingStanza, UnwrapFailed, KeyNotFound, InvalidInput)


@dataclass(frozen=True)
class Genuine:
    """One real envelope and what it must decrypt to."""

    envelope: bytes
    plaintext: bytes
    segment_size: int
    dek: bytes
    context: dict[str, str]
    header: EnvelopeHeader
    header_bytes: bytes
    body: bytes
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Corpus:
    backend: KeyBackend
    envelopes: tuple[Genuine, ...]


def envelope_fields(envelope: bytes) -> tuple[Field, ...]:
    """The envelope as its fields (docs/format.md): header fields, then each segment's
    ciphertext and tag."""
    header, raw, body = split_envelope(envelope)
    fields = [
        Field("magic", MAGIC),
        Field("version", bytes([header.version]), 1),
        Field("algorithm", bytes([header.algorithm]), 1),
        Field("segment size", struct.pack(">I", header.segment_size), 4),
        Field("context length", struct.pack(">H", len(header.context_bytes)), 2),
        Field("context", header.context_bytes),
        Field("salt", header.salt),
        Field("commitment", header.commitment),
        Field("stanza count", bytes([len(header.stanzas)]), 1),
    ]
    position = len(header.fixed) + 1
    for number, stanza in enumerate(header.stanzas):
        size = struct.unpack(">H", raw[position : position + 2])[0]
        backend = stanza.backend.encode()
        key_id = stanza.key.key_id.encode()
        mechanism = stanza.mechanism.encode()
        fields += [
            Field(f"stanza {number} length", struct.pack(">H", size), 2),
            Field(f"stanza {number} backend length", bytes([len(backend)]), 1),
            Field(f"stanza {number} backend", backend),
            Field(f"stanza {number} key id length", struct.pack(">H", len(key_id)), 2),
            Field(f"stanza {number} key id", key_id),
            Field(f"stanza {number} key version", struct.pack(">I", stanza.key.version), 4),
            Field(f"stanza {number} mechanism length", bytes([len(mechanism)]), 1),
            Field(f"stanza {number} mechanism", mechanism),
            Field(f"stanza {number} wrapped length", struct.pack(">H", len(stanza.ciphertext)), 2),
            Field(f"stanza {number} wrapped", stanza.ciphertext),
        ]
        position += 2 + size
    assert b"".join(f.data for f in fields) == raw
    full = header.segment_size + TAG_SIZE
    for number, start in enumerate(range(0, len(body), full)):
        segment = body[start : start + full]
        fields += [
            Field(f"segment {number}", segment[:-TAG_SIZE]),
            Field(f"tag {number}", segment[-TAG_SIZE:]),
        ]
    assert b"".join(f.data for f in fields) == envelope
    return tuple(fields)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """Real envelopes, each an object version as the vault makes one: a fresh random DEK, its
    own context, wrapped by a real local keystore (one envelope by a second key too), encrypted
    by the library's own ``encrypt``. (Distinct DEKs and contexts, so that splicing one
    envelope into another cannot produce another genuine envelope of the same object.)"""
    with session_harness(Path(tmp_path_factory.mktemp("fuzz-keystore"))) as harness:
        backend = harness.backend
        first, second = backend.create_key(), backend.create_key()
        plans = [
            (b"", 16, 1),
            (secrets.token_bytes(100), 32, 1),  # 4 segments, the last short
            (secrets.token_bytes(64), 16, 1),  # 4 full segments
            (secrets.token_bytes(300), 64, 2),  # two recipient stanzas
        ]
        envelopes = []
        for number, (plaintext, segment_size, recipients) in enumerate(plans):
            dek = secrets.token_bytes(32)
            context = {**CONTEXT, "version": str(number + 1)}
            wraps: list[WrappedKey] = [backend.wrap(first.key_id, dek, context)]
            if recipients == 2:
                wraps.append(backend.wrap(second.key_id, dek, context))
            envelope = encrypt(
                plaintext, dek=dek, context=context, stanzas=wraps, segment_size=segment_size
            )
            header, header_bytes, body = split_envelope(envelope)
            envelopes.append(
                Genuine(
                    envelope,
                    plaintext,
                    segment_size,
                    dek,
                    context,
                    header,
                    header_bytes,
                    body,
                    envelope_fields(envelope),
                )
            )
        yield Corpus(backend, tuple(envelopes))


class _Sink:
    """A destination that keeps every write, to see what plaintext was released."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.writes.append(bytes(data))
        return len(data)

    @property
    def released(self) -> bytes:
        return b"".join(self.writes)


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes (cycled), as a network stream arrives."""
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        yield data[position : position + size]
        position += size
        turn += 1


def _assert_genuine_success(plaintext: object, mutated_envelope: bytes, genuine: Genuine) -> None:
    """A mutated envelope that decrypts gives the genuine plaintext, and its authenticated parts
    are the genuine ones (only the stanzas, outside the authenticated data, may differ)."""
    assert plaintext == genuine.plaintext
    header, _, body = split_envelope(mutated_envelope)
    assert header.fixed == genuine.header.fixed
    assert body == genuine.body
    if mutated_envelope != genuine.envelope:
        event("decrypted: only the unauthenticated stanzas differ")


def _assert_released_only_authentic_segments(released: bytes, genuine: Genuine) -> None:
    """After a failure: nothing, or whole segments of the genuine plaintext, never all of it."""
    assert genuine.plaintext.startswith(released)
    assert len(released) % genuine.segment_size == 0
    assert released == b"" or len(released) < len(genuine.plaintext)


# --------------------------------------------------------------------------------------------
# Wholly random input


def _random_envelopes() -> st.SearchStrategy[bytes]:
    prefix = MAGIC + b"\x01\x01"
    return st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda tail: prefix + tail),
        st.tuples(st.integers(16, 100), st.binary(max_size=300)).map(
            lambda parts: prefix + struct.pack(">IH", parts[0], 2) + b"{}" + parts[1]
        ),
    )


@sized(ci=150, torture=1000)
@given(data=_random_envelopes(), piece=st.integers(1, 64))
def test_it_parses_random_bytes_into_a_header_or_a_format_error(data: bytes, piece: int) -> None:
    header, _error = only_documented(lambda: parse_header(data), PARSE_ERRORS)
    if header is not None:
        assert isinstance(header, EnvelopeHeader)
        assert header.to_bytes() == data  # one encoding per header
    split, split_error = only_documented(lambda: split_envelope(data), PARSE_ERRORS)
    streamed, stream_error = only_documented(
        lambda: read_header(io.BufferedReader(io.BytesIO(data), buffer_size=piece)), PARSE_ERRORS
    )
    assert type(split_error) is type(stream_error)
    if split is not None and streamed is not None:
        assert split[:2] == streamed  # type: ignore[index]


@sized(ci=150, torture=1000)
@given(data=_random_envelopes())
def test_it_decrypts_random_bytes_to_nothing_but_a_documented_error(
    corpus: Corpus, data: bytes
) -> None:
    sink = _Sink()
    result, error = only_documented(
        lambda: decrypt_stream(data, sink, key=corpus.envelopes[0].dek, context=CONTEXT),
        DECRYPT_ERRORS,
    )
    assert result is None
    assert error is not None
    assert sink.released == b""


# --------------------------------------------------------------------------------------------
# Real envelopes, edited


def _pick(data: st.DataObject, corpus: Corpus) -> tuple[Genuine, bytes]:
    genuine = corpus.envelopes[data.draw(st.integers(0, len(corpus.envelopes) - 1), label="which")]
    donors = [g.envelope for g in corpus.envelopes if g is not genuine]
    envelope, steps = data.draw(mutated(genuine.fields, donors=donors), label="mutation")
    note(f"mutation: {steps}")
    return genuine, envelope


@sized(ci=300, torture=1500)
@given(data=st.data())
def test_an_edited_envelope_decrypts_to_the_genuine_plaintext_or_fails_closed(
    corpus: Corpus, data: st.DataObject
) -> None:
    genuine, envelope = _pick(data, corpus)
    plaintext, error = only_documented(
        lambda: decrypt(envelope, key=genuine.dek, context=genuine.context), DECRYPT_ERRORS
    )
    if error is None:
        _assert_genuine_success(plaintext, envelope, genuine)

    # The streaming reader, fed in network-sized pieces, agrees and releases only authentic
    # segments before a failure.
    sizes = data.draw(st.lists(st.integers(1, 97), min_size=1, max_size=4), label="pieces")
    sink = _Sink()
    written, stream_error = only_documented(
        lambda: decrypt_stream(
            _chunks(envelope, sizes), sink, key=genuine.dek, context=genuine.context
        ),
        DECRYPT_ERRORS,
    )
    assert type(stream_error) is type(error), (error, stream_error)
    if stream_error is None:
        assert sink.released == plaintext
        assert written == len(genuine.plaintext)
    else:
        _assert_released_only_authentic_segments(sink.released, genuine)


@sized(ci=150, torture=800)
@given(data=st.data())
def test_an_edited_envelope_opened_through_the_key_backend_fails_closed(
    corpus: Corpus, data: st.DataObject
) -> None:
    """The vault's own path: the DEK comes from unwrapping a stanza with the real backend, so
    edited stanzas reach the backend's unwrap (which must fail with its documented errors)."""
    genuine, envelope = _pick(data, corpus)
    backend = corpus.backend

    def key(header: EnvelopeHeader) -> bytes:
        return unwrap_dek(
            header, lambda w: backend.unwrap(w, genuine.context), backend=backend.kind
        )

    sink = _Sink()
    _written, error = only_documented(
        lambda: decrypt_stream(envelope, sink, key=key, context=genuine.context), UNWRAP_ERRORS
    )
    if error is None:
        _assert_genuine_success(sink.released, envelope, genuine)
    else:
        _assert_released_only_authentic_segments(sink.released, genuine)


@sized(ci=150, torture=800)
@given(data=st.data())
def test_a_ranged_read_of_an_edited_envelope_gives_the_genuine_bytes_or_fails_closed(
    corpus: Corpus, data: st.DataObject
) -> None:
    """``plan_range`` + ``Decryptor.decrypt_range``, as the gateway serves an HTTP Range: the
    plan comes from the genuine size (the vault's metadata), the header and body from the edited
    envelope."""
    genuine, envelope = _pick(data, corpus)
    size = len(genuine.plaintext)
    start = data.draw(st.integers(0, size), label="start")
    end = data.draw(st.integers(start, size), label="end")
    plan = plan_range(segment_size=genuine.segment_size, plaintext_size=size, start=start, end=end)
    pieces: list[bytes] = []

    def ranged() -> None:
        header, _, body = split_envelope(envelope)
        window = body[plan.ciphertext_start : plan.ciphertext_end]
        for piece in Decryptor(header, genuine.dek, genuine.context).decrypt_range(plan, window):
            pieces.append(piece)

    # InvalidEnvelopeParameters: documented for a plan made for another segment size (the edit
    # changed the header's).
    _, error = only_documented(ranged, (*DECRYPT_ERRORS, InvalidEnvelopeParameters))
    got = b"".join(pieces)
    if error is None:
        assert got == genuine.plaintext[start:end]
        header, _, body = split_envelope(envelope)
        assert header.fixed == genuine.header.fixed
        assert (
            body[plan.ciphertext_start : plan.ciphertext_end]
            == genuine.body[plan.ciphertext_start : plan.ciphertext_end]
        )
    else:
        if isinstance(error, InvalidEnvelopeParameters):
            assert split_envelope(envelope)[0].segment_size != genuine.segment_size
        assert genuine.plaintext[start:end].startswith(got)
        assert got == b"" or len(got) < end - start
