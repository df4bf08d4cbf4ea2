"""Conformance tests every key backend must pass.

Import them into a test module that defines a ``backend_harness`` fixture (see
``kms_plugins.testing``). Each test names the behaviour it proves; the fixture's parameter id
names the backend, so a failure reads ``test_it_round_trips_a_data_key[pkcs11]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

import pytest

from kms_plugins.errors import (
    BackendUnavailable,
    InvalidInput,
    KeyDestroyed,
    KeyNotFound,
    KeyStateError,
    UnsupportedCapability,
    UnwrapFailed,
)
from kms_plugins.testing import BackendHarness
from kms_plugins.types import Capability, KeyPurpose, KeyRef, KeyState, WrappedKey

CONTEXT = {"tenant": "t-1", "object": "o-1", "version": "1"}
THREADS = 8
THREAD_SECONDS = 3.0

__all__ = [
    "test_a_deactivated_or_compromised_version_unwraps_but_does_not_wrap",
    "test_a_destroyed_version_neither_wraps_nor_unwraps",
    "test_a_new_instance_unwraps_what_an_old_one_wrapped",
    "test_an_unsupported_capability_raises_its_error",
    "test_any_flipped_bit_fails",
    "test_describe_reports_versions_states_and_extractability",
    "test_it_recovers_from_an_outage_with_a_transient_error",
    "test_it_refuses_malformed_input",
    "test_it_round_trips_a_data_key",
    "test_it_stays_correct_under_eight_threads",
    "test_no_secret_reaches_repr_logs_or_errors",
    "test_rotation_keeps_older_versions_unwrapping",
    "test_states_only_move_forward",
    "test_unknown_keys_are_not_found",
    "test_wrong_context_fails",
    "test_wrong_version_fails",
]


def _dek() -> bytes:
    return os.urandom(32)


def test_it_round_trips_a_data_key(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    assert ref.version == 1
    dek = _dek()
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    assert wrapped.backend == backend.kind
    assert wrapped.key == ref
    assert dek not in wrapped.ciphertext
    assert backend.unwrap(wrapped, CONTEXT) == dek
    assert backend.wrap(ref.key_id, dek, CONTEXT).ciphertext != wrapped.ciphertext, "not randomized"


def test_wrong_context_fails(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, _dek(), CONTEXT)
    for other in (
        {**CONTEXT, "object": "o-2"},
        {**CONTEXT, "tenant": "t-2"},
        {k: v for k, v in CONTEXT.items() if k != "version"},
        {**CONTEXT, "extra": "x"},
    ):
        with pytest.raises(UnwrapFailed):
            backend.unwrap(wrapped, other)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_any_flipped_bit_fails(backend_harness: BackendHarness) -> None:
    """One flipped bit in every byte of the wrapped key, each position in turn, fails."""
    backend = backend_harness.backend
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, _dek(), CONTEXT)
    for index in range(len(wrapped.ciphertext)):
        bit = index * 8 + index % 8
        tampered = dataclasses.replace(wrapped, ciphertext=_flip(wrapped.ciphertext, bit))
        with pytest.raises(UnwrapFailed):
            backend.unwrap(tampered, CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(dataclasses.replace(wrapped, ciphertext=wrapped.ciphertext[:-1]), CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(dataclasses.replace(wrapped, ciphertext=wrapped.ciphertext + b"\0"), CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(dataclasses.replace(wrapped, mechanism=wrapped.mechanism + "x"), CONTEXT)


def test_wrong_version_fails(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, _dek(), CONTEXT)
    second = backend.rotate(ref.key_id)
    relabelled = dataclasses.replace(wrapped, key=second)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(relabelled, CONTEXT)
    with pytest.raises((KeyNotFound, UnwrapFailed)):
        backend.unwrap(dataclasses.replace(wrapped, key=KeyRef(ref.key_id, 99)), CONTEXT)


def test_rotation_keeps_older_versions_unwrapping(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    old_dek = _dek()
    old = backend.wrap(ref.key_id, old_dek, CONTEXT)
    second = backend.rotate(ref.key_id)
    assert second == KeyRef(ref.key_id, 2)
    new_dek = _dek()
    new = backend.wrap(ref.key_id, new_dek, CONTEXT)
    assert new.key == second, "the newest version wraps"
    assert backend.unwrap(old, CONTEXT) == old_dek
    assert backend.unwrap(new, CONTEXT) == new_dek
    description = backend.describe(ref.key_id)
    assert [v.ref.version for v in description.versions] == [1, 2]
    assert description.primary is not None
    assert description.primary.ref == second


@pytest.mark.parametrize("state", [KeyState.DEACTIVATED, KeyState.COMPROMISED])
def test_a_deactivated_or_compromised_version_unwraps_but_does_not_wrap(
    backend_harness: BackendHarness, state: KeyState
) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    dek = _dek()
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    backend.set_state(ref, state)
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, _dek(), CONTEXT)
    assert backend.unwrap(wrapped, CONTEXT) == dek
    info = backend.describe(ref.key_id).version(1)
    assert info is not None
    assert info.state == state
    assert info.deactivated is not None


def test_states_only_move_forward(backend_harness: BackendHarness) -> None:
    """A deactivated or compromised version never becomes active again (rotate instead)."""
    backend = backend_harness.backend
    ref = backend.create_key()
    backend.set_state(ref, KeyState.DEACTIVATED)
    with pytest.raises(KeyStateError):
        backend.set_state(ref, KeyState.ACTIVE)
    backend.set_state(ref, KeyState.COMPROMISED)
    with pytest.raises(KeyStateError):
        backend.set_state(ref, KeyState.ACTIVE)
    with pytest.raises(KeyStateError):
        backend.set_state(ref, KeyState.DEACTIVATED)
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, _dek(), CONTEXT)
    info = backend.describe(ref.key_id).version(1)
    assert info is not None
    assert info.state == KeyState.COMPROMISED


def test_a_destroyed_version_neither_wraps_nor_unwraps(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, _dek(), CONTEXT)
    backend.set_state(ref, KeyState.DEACTIVATED)
    backend.destroy(ref)
    with pytest.raises(KeyDestroyed):
        backend.unwrap(wrapped, CONTEXT)
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, _dek(), CONTEXT)
    info = backend.describe(ref.key_id).version(1)
    assert info is not None
    assert info.state == KeyState.DESTROYED
    after_restart = backend_harness.new_backend().describe(ref.key_id).version(1)
    assert after_restart is not None
    assert after_restart.state == KeyState.DESTROYED


def test_an_unsupported_capability_raises_its_error(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    if Capability.SIGN in backend.capabilities:
        ref = backend.create_key(purpose=KeyPurpose.SIGN)
        signed_by, signature = backend.sign(ref.key_id, b"checkpoint")
        assert signed_by == ref
        assert backend.verify(ref, b"checkpoint", signature)
        assert not backend.verify(ref, b"checkpoinT", signature)
        wrap_key = backend.create_key()
        with pytest.raises(KeyStateError):
            backend.sign(wrap_key.key_id, b"x")
    else:
        with pytest.raises(UnsupportedCapability):
            backend.create_key(purpose=KeyPurpose.SIGN)
        with pytest.raises(UnsupportedCapability):
            backend.sign("any", b"x")


def test_describe_reports_versions_states_and_extractability(
    backend_harness: BackendHarness,
) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    description = backend.describe(ref.key_id)
    assert description.backend == backend.kind
    (info,) = description.versions
    assert info.ref == ref
    assert info.state == KeyState.ACTIVE
    assert info.algorithm == "AES"
    assert info.size == 256
    assert info.generated_in_backend
    assert info.fingerprint
    assert info.created is not None
    if backend_harness.expect_non_extractable:
        assert info.extractable is False
        assert info.sensitive is True
    assert backend.describe(ref.key_id).versions[0].fingerprint == info.fingerprint, "stable"
    other = backend.create_key()
    assert backend.describe(other.key_id).versions[0].fingerprint != info.fingerprint


def test_unknown_keys_are_not_found(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    missing = ref.key_id[:-4] + ("0000" if not ref.key_id.endswith("0000") else "1111")
    with pytest.raises(KeyNotFound):
        backend.wrap(missing, _dek(), CONTEXT)
    with pytest.raises(KeyNotFound):
        backend.describe(missing)


def test_it_refuses_malformed_input(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    for dek in (b"", b"x" * 31, b"x" * 33, "x" * 32):
        with pytest.raises(InvalidInput):
            backend.wrap(ref.key_id, dek, CONTEXT)  # type: ignore[arg-type]
    for context in ({"a": 1}, {"": "x"}, ["a"], {"big": "x" * 5000}):
        with pytest.raises(InvalidInput):
            backend.wrap(ref.key_id, _dek(), context)  # type: ignore[arg-type]
    foreign = WrappedKey(backend="elsewhere", key=ref, mechanism="m", ciphertext=b"x" * 40)
    with pytest.raises(InvalidInput):
        backend.unwrap(foreign, CONTEXT)


def test_a_new_instance_unwraps_what_an_old_one_wrapped(backend_harness: BackendHarness) -> None:
    """As after a process restart: keys, versions and states are kept by the backend."""
    backend = backend_harness.backend
    ref = backend.create_key()
    dek = _dek()
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    backend.rotate(ref.key_id)
    backend.set_state(ref, KeyState.DEACTIVATED)
    restarted = backend_harness.new_backend()
    try:
        assert restarted.unwrap(wrapped, CONTEXT) == dek
        description = restarted.describe(ref.key_id)
        assert [v.state for v in description.versions] == [KeyState.DEACTIVATED, KeyState.ACTIVE]
    finally:
        restarted.close()


def _run_bounded(function: Any, limit: float) -> BaseException | None:
    """Run ``function`` in a thread; fail if it has not returned within ``limit`` seconds."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the call did not return within {limit:.0f}s"
    return outcome[0]


def test_it_recovers_from_an_outage_with_a_transient_error(
    backend_harness: BackendHarness,
) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    dek = _dek()
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    limit = backend.timeout * 3 + 30
    assert backend_harness.outage_kinds, "the harness must be able to take its backend away"
    for kind in backend_harness.outage_kinds:
        with backend_harness.outage(kind):
            error = _run_bounded(lambda: backend.wrap(ref.key_id, _dek(), CONTEXT), limit)
            assert isinstance(error, BackendUnavailable), (kind, repr(error))
            assert error.transient
            error = _run_bounded(lambda: backend.unwrap(wrapped, CONTEXT), limit)
            assert isinstance(error, BackendUnavailable), (kind, repr(error))
            health = backend.health()
            assert not health.ok
        assert backend.unwrap(wrapped, CONTEXT) == dek, f"works again after {kind}"
        again = backend.wrap(ref.key_id, dek, CONTEXT)
        assert backend.unwrap(again, CONTEXT) == dek
        assert backend.health().ok


def test_it_stays_correct_under_eight_threads(backend_harness: BackendHarness) -> None:
    backend = backend_harness.backend
    ref = backend.create_key()
    errors: list[BaseException] = []
    counts = [0] * THREADS
    deadline = time.monotonic() + THREAD_SECONDS

    def worker(index: int) -> None:
        context = {**CONTEXT, "object": f"o-{index}"}
        try:
            while time.monotonic() < deadline:
                dek = _dek()
                assert backend.unwrap(backend.wrap(ref.key_id, dek, context), context) == dek
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_SECONDS + 120)
    assert not errors, errors[:3]
    assert all(count > 0 for count in counts), counts


def test_no_secret_reaches_repr_logs_or_errors(
    backend_harness: BackendHarness, caplog: pytest.LogCaptureFixture
) -> None:
    backend = backend_harness.backend
    assert backend_harness.secrets or backend.sensitive_options == frozenset()
    texts = [repr(backend), str(backend)]
    with caplog.at_level(logging.DEBUG):
        ref = backend.create_key()
        dek = _dek()
        wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
        for call in (
            lambda: backend.unwrap(wrapped, {"other": "context"}),
            lambda: backend.wrap(ref.key_id + "x", dek, CONTEXT),
            lambda: backend.wrap(ref.key_id, b"short", CONTEXT),
        ):
            try:
                call()
            except Exception as exc:
                texts.append(str(exc))
                texts.append(repr(exc))
                if exc.__cause__ is not None:
                    texts.append(str(exc.__cause__))
        backend.unwrap(wrapped, CONTEXT)
    texts.extend(record.getMessage() for record in caplog.records)
    everything = "\n".join(texts)
    for secret in backend_harness.secrets:
        assert secret not in everything
    assert dek.hex() not in everything
    assert repr(dek) not in everything
