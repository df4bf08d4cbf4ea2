"""The known-answer vectors under tests/vectors/, positive and negative."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto import Encryptor, decrypt, errors, split_envelope

pytestmark: list[pytest.MarkDecorator] = []

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = json.loads((VECTORS_DIR / "envelope-v1.json").read_text())


def _stanza(data: dict[str, Any]) -> WrappedKey:
    return WrappedKey(
        data["backend"],
        KeyRef(data["key_id"], data["key_version"]),
        data["mechanism"],
        bytes.fromhex(data["wrapped"]),
    )


@pytest.mark.parametrize("vector", VECTORS["positive"], ids=lambda v: v["name"])
def test_it_reproduces_and_opens_each_positive_vector(vector: dict[str, Any]) -> None:
    dek = bytes.fromhex(vector["dek"])
    plaintext = bytes.fromhex(vector["plaintext"])
    envelope = bytes.fromhex(vector["envelope"])
    encryptor = Encryptor(
        dek,
        vector["context"],
        [_stanza(s) for s in vector["stanzas"]],
        segment_size=vector["segment_size"],
        _salt=bytes.fromhex(vector["salt"]),
    )
    assert encryptor.header + b"".join(encryptor.iter_body(plaintext)) == envelope
    assert decrypt(envelope, key=dek, context=vector["context"]) == plaintext
    header, header_bytes, _ = split_envelope(envelope)
    assert header_bytes.hex() == vector["header"]
    assert header.fixed.hex() == vector["fixed_header"]
    assert len(header_bytes) == vector["header_length"]
    assert header.context == vector["context"]
    assert header.segment_size == vector["segment_size"]


@pytest.mark.parametrize("vector", VECTORS["negative"], ids=lambda v: v["name"])
def test_it_rejects_each_negative_vector_with_the_named_error(vector: dict[str, Any]) -> None:
    error = getattr(errors, vector["error"])
    with pytest.raises(errors.EnvelopeError) as info:
        decrypt(
            bytes.fromhex(vector["envelope"]),
            key=bytes.fromhex(vector["dek"]),
            context=vector["context"],
        )
    assert type(info.value) is error


def test_it_keeps_the_vector_file_in_step_with_its_generator() -> None:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS_DIR / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (VECTORS_DIR / "envelope-v1.json").read_text()
