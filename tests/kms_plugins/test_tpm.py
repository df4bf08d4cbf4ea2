"""The TPM 2.0 backend against a real swtpm (and tpm2-abrmd for several processes); no mocks."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms_plugins.errors import BackendUnavailable, ConfigurationError, KeyDestroyed, UnwrapFailed
from kms_plugins.testing import swtpm as harness
from kms_plugins.types import KeyPurpose, KeyState

pytestmark = [
    pytest.mark.tpm,
    pytest.mark.skipif(harness.available() is not None, reason=str(harness.available())),
]

if harness.available() is None:
    from kms_plugins.tpm import DESTROY_ASSURANCE, TpmKeyBackend

CONTEXT = {"tenant": "t-1", "object": "o-1"}


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.SwtpmProcess]:
    with harness.running_swtpm(tmp_path_factory.mktemp("swtpm")) as process:
        yield process


def _backend(tcti: str, state_dir: Path, timeout: float = 5) -> TpmKeyBackend:
    return TpmKeyBackend("tpm", {"TCTI": tcti, "STATE_DIR": str(state_dir), "TIMEOUT": timeout})


@pytest.fixture
def backend(swtpm: harness.SwtpmProcess, tmp_path: Path) -> Iterator[TpmKeyBackend]:
    instance = _backend(swtpm.tcti, tmp_path / "keys")
    yield instance
    instance.close()


def test_it_round_trips_data_keys_of_every_size(backend: TpmKeyBackend) -> None:
    ref = backend.create_key()
    for size in (16, 24, 32):
        dek = os.urandom(size)
        wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
        assert wrapped.backend == "tpm"
        assert dek not in wrapped.ciphertext
        assert backend.unwrap(wrapped, CONTEXT) == dek


def test_wrong_context_fails(backend: TpmKeyBackend) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, os.urandom(32), CONTEXT)
    for other in ({**CONTEXT, "object": "o-2"}, {"tenant": "t-1"}, {**CONTEXT, "x": ""}):
        with pytest.raises(UnwrapFailed):
            backend.unwrap(wrapped, other)


def test_keys_and_states_survive_a_new_instance_and_an_swtpm_restart(
    swtpm: harness.SwtpmProcess, backend: TpmKeyBackend, tmp_path: Path
) -> None:
    ref = backend.create_key()
    dek = os.urandom(32)
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    second = backend.rotate(ref.key_id)
    backend.set_state(ref, KeyState.DEACTIVATED)

    swtpm.stop()
    swtpm.start()

    restarted = _backend(swtpm.tcti, tmp_path / "keys")
    try:
        assert restarted.unwrap(wrapped, CONTEXT) == dek
        states = [v.state for v in restarted.describe(ref.key_id).versions]
        assert states == [KeyState.DEACTIVATED, KeyState.ACTIVE]
        again = restarted.wrap(ref.key_id, dek, CONTEXT)
        assert again.key == second
    finally:
        restarted.close()
    assert backend.unwrap(again, CONTEXT) == dek, "the old instance reconnects by itself"


def test_describe_reports_non_extractable_and_the_weaker_destroy_assurance(
    backend: TpmKeyBackend,
) -> None:
    ref = backend.create_key()
    (info,) = backend.describe(ref.key_id).versions
    assert info.extractable is False
    assert info.sensitive is True
    assert info.generated_in_backend
    assert (info.algorithm, info.size) == ("AES", 256)
    assert info.destroy_assurance == DESTROY_ASSURANCE == TpmKeyBackend.destroy_assurance
    assert "copy" in info.destroy_assurance
    assert "TPM2_Clear" in info.destroy_assurance
    # The fingerprint is the TPM Name: nameAlg (SHA-256, 0x000b) then the public area's digest.
    assert info.fingerprint.startswith("000b")
    assert len(bytes.fromhex(info.fingerprint)) == 34


def test_a_copied_blob_still_unwraps_after_destroy_on_the_same_tpm(
    swtpm: harness.SwtpmProcess, backend: TpmKeyBackend, tmp_path: Path
) -> None:
    """What the destroy assurance warns about, shown rather than claimed."""
    ref = backend.create_key()
    dek = os.urandom(32)
    wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "keys", backup)

    backend.destroy(ref)
    with pytest.raises(KeyDestroyed):
        backend.unwrap(wrapped, CONTEXT)
    assert not (tmp_path / "keys" / "keys" / ref.key_id / "v1.blob").exists()

    from_backup = _backend(swtpm.tcti, backup)
    try:
        assert from_backup.unwrap(wrapped, CONTEXT) == dek
    finally:
        from_backup.close()


def test_it_signs_with_a_p256_key_that_cryptography_verifies(backend: TpmKeyBackend) -> None:
    ref = backend.create_key(purpose=KeyPurpose.SIGN)
    signed_by, signature = backend.sign(ref.key_id, b"audit checkpoint")
    assert signed_by == ref
    public = serialization.load_pem_public_key(backend.public_key(ref))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    public.verify(signature, b"audit checkpoint", ec.ECDSA(hashes.SHA256()))  # DER, or raises
    (info,) = backend.describe(ref.key_id).versions
    assert (info.algorithm, info.size, info.purpose) == ("EC", 256, KeyPurpose.SIGN)


def test_a_frozen_swtpm_fails_within_the_timeout_and_recovers(
    swtpm: harness.SwtpmProcess, tmp_path: Path
) -> None:
    backend = _backend(swtpm.tcti, tmp_path / "keys", timeout=1)
    try:
        ref = backend.create_key()
        dek = os.urandom(32)
        wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
        # More rounds than the TPM has object slots: abandoned calls must not leak them.
        for _ in range(4):
            swtpm.freeze()
            try:
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    backend.unwrap(wrapped, CONTEXT)
                assert time.monotonic() - started < 30, "bounded by TIMEOUT, not by the TPM"
            finally:
                swtpm.thaw()
            assert backend.unwrap(wrapped, CONTEXT) == dek
    finally:
        backend.close()


def test_it_refuses_a_storage_key_other_than_the_pinned_one(
    swtpm: harness.SwtpmProcess, backend: TpmKeyBackend, tmp_path: Path
) -> None:
    backend.create_key()
    backend.close()
    pin = tmp_path / "keys" / "storage-key.json"
    pinned = json.loads(pin.read_text())
    pin.write_text(json.dumps({**pinned, "name": "000b" + "00" * 32}))
    other = _backend(swtpm.tcti, tmp_path / "keys")
    try:
        with pytest.raises(ConfigurationError):
            other.create_key()
        assert not other.health().ok
    finally:
        other.close()


def test_pcr_policies_are_refused_until_implemented(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        TpmKeyBackend(
            "tpm", {"TCTI": "swtpm:port=1", "STATE_DIR": str(tmp_path), "PCRS": "sha256:7"}
        )


# -- the bytes on the wire ------------------------------------------------------------------------


class RecordingProxy:
    """A loopback TCP proxy that records every byte in each direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.to_tpm = bytearray()
        self.from_tpm = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for source, sink, record in (
                (client, upstream, self.to_tpm),
                (upstream, client, self.from_tpm),
            ):
                threading.Thread(
                    target=self._pump, args=(source, sink, record), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    record += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def test_no_data_key_crosses_the_tpm_connection_in_clear(
    swtpm: harness.SwtpmProcess, tmp_path: Path
) -> None:
    proxy = RecordingProxy(swtpm.port)
    backend = _backend(f"swtpm:host=127.0.0.1,port={proxy.port}", tmp_path / "keys")
    try:
        ref = backend.create_key()
        dek = os.urandom(32)
        wrapped = backend.wrap(ref.key_id, dek, CONTEXT)
        assert backend.unwrap(wrapped, CONTEXT) == dek
    finally:
        backend.close()
        proxy.close()
    with proxy._lock:
        sent, received = bytes(proxy.to_tpm), bytes(proxy.from_tpm)
    # The recording is real: the sealed object's public area (its last 34 bytes are the unique
    # digest) went both ways in clear, out of Create and into Load.
    unique = wrapped.ciphertext[-34:]
    assert unique in received
    assert unique in sent
    for direction in (sent, received):
        assert dek not in direction
        assert dek[:16] not in direction
        assert dek[16:] not in direction
        assert dek.hex().encode() not in direction
        assert dek.hex().upper().encode() not in direction


# -- several processes through tpm2-abrmd ---------------------------------------------------------


@pytest.fixture(scope="module")
def abrmd_tcti(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str]]]:
    reason = harness.abrmd_available()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("abrmd")
    # Its own swtpm: abrmd must be the only client of the TPM behind it.
    with harness.running_swtpm(base / "swtpm") as process, harness.abrmd(process, base) as found:
        yield found


def _in_child_create_key(options: dict[str, Any]) -> str:
    backend = TpmKeyBackend("tpm", options)
    try:
        return backend.create_key().key_id
    finally:
        backend.close()


def _in_child_wrap_and_unwrap(args: tuple[dict[str, Any], str, int]) -> list[tuple[bytes, Any]]:
    options, key_id, worker = args
    backend = TpmKeyBackend("tpm", options)
    made = []
    try:
        for round_ in range(12):
            context = {"worker": str(worker), "round": str(round_)}
            dek = os.urandom(32)
            wrapped = backend.wrap(key_id, dek, context)
            assert backend.unwrap(wrapped, context) == dek
            made.append((dek, wrapped))
        return made
    finally:
        backend.close()


def test_several_processes_wrap_and_unwrap_at_once_through_abrmd(
    abrmd_tcti: tuple[str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tcti, env = abrmd_tcti
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = {"TCTI": tcti, "STATE_DIR": str(tmp_path / "keys"), "TIMEOUT": 30}
    fork = multiprocessing.get_context("fork")
    # This process never opens the tabrmd TCTI itself: GLib's D-Bus connection does not survive
    # fork, so only the forked workers do.
    with fork.Pool(1) as pool:
        key_id = pool.apply_async(_in_child_create_key, (options,)).get(120)
    workers = 4
    with fork.Pool(workers) as pool:
        results = pool.map_async(
            _in_child_wrap_and_unwrap, [(options, key_id, i) for i in range(workers)]
        ).get(300)
    assert [len(made) for made in results] == [12] * workers
    # What one process wrapped, another unwraps.
    dek, wrapped = results[0][5]
    with fork.Pool(1) as pool:
        unwrapped = pool.apply_async(
            _in_child_unwrap_one, (options, wrapped, {"worker": "0", "round": "5"})
        ).get(120)
    assert unwrapped == dek


def _in_child_unwrap_one(options: dict[str, Any], wrapped: Any, context: dict[str, str]) -> bytes:
    backend = TpmKeyBackend("tpm", options)
    try:
        return backend.unwrap(wrapped, context)
    finally:
        backend.close()
