"""The TPM 2.0 backend against a real swtpm (and tpm2-abrmd for several processes); no mocks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms_plugins.errors import (
    BackendUnavailable,
    ConfigurationError,
    KeyDestroyed,
    KeyStateError,
    UnwrapFailed,
)
from kms_plugins.testing import swtpm as harness
from kms_plugins.types import KeyPurpose, KeyState

pytestmark = [
    pytest.mark.tpm,
    pytest.mark.skipif(harness.available() is not None, reason=str(harness.available())),
]

if harness.available() is None:
    from tpm2_pytss.constants import TPM2_RC, TPMA_OBJECT
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    from kms_plugins.tpm import (
        DESTROY_ASSURANCE,
        PcrPolicyMismatch,
        TpmKeyBackend,
        _split_blob,
        parse_pcrs,
    )

CONTEXT = {"tenant": "t-1", "object": "o-1"}


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.SwtpmProcess]:
    with harness.running_swtpm(tmp_path_factory.mktemp("swtpm")) as process:
        yield process


def _backend(
    tcti: str, state_dir: Path, timeout: float = 5, pcrs: str | None = None
) -> TpmKeyBackend:
    options: dict[str, Any] = {"TCTI": tcti, "STATE_DIR": str(state_dir), "TIMEOUT": timeout}
    if pcrs is not None:
        options["PCRS"] = pcrs
    return TpmKeyBackend("tpm", options)


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


# -- PCR policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pcrs",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:7,",
        "sha256:24",
        "sha256:0,0",
        "sha256:07",
        "sha256:-1",
        "sha256: 0",
        "sha256:0;7",
        "sha256:0\n",
        " sha256:0",
        "SHA256:0",
        "md5:0",
        "sha256:0+sha256:7",
        "sha256:0+",
        "0,7",
        7,
        ["sha256:0"],
    ],
    ids=repr,
)
def test_a_bad_pcrs_value_is_a_configuration_error(pcrs: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PCRS"):
        TpmKeyBackend("tpm", {"TCTI": "swtpm:port=1", "STATE_DIR": str(tmp_path), "PCRS": pcrs})


def test_pcrs_values_are_normalized() -> None:
    assert parse_pcrs("sha256:0,7") == "sha256:0,7"
    assert parse_pcrs("sha256:7,0+sha1:23") == "sha1:23+sha256:0,7"
    assert parse_pcrs("sha512:10,2,1") == "sha512:1,2,10"


def _extend(swtpm: harness.SwtpmProcess, pcr: int) -> None:
    """TPM2_PCR_Extend of one sha256 PCR, by tpm2-tools' own client on that swtpm."""
    subprocess.run(
        ["tpm2_pcrextend", "-T", swtpm.tcti, f"{pcr}:sha256={hashlib.sha256(b'x').hexdigest()}"],
        env={**os.environ, "TSS2_LOG": "all+none"},
        capture_output=True,
        timeout=30,
        check=True,
    )


def _refuses_with_pcr_mismatch(call: Any, *args: Any) -> None:
    # Raised, so nothing (no DEK, no wrapped key, no signature) is returned.
    with pytest.raises(PcrPolicyMismatch) as caught:
        call(*args)
    error = caught.value
    assert isinstance(error, KeyStateError)
    assert error.code == "tpm_pcr_mismatch"
    assert error.transient is False
    assert "sha256:0,7" in str(error)


def test_a_pcr_bound_key_works_only_while_its_pcrs_hold_their_values(tmp_path: Path) -> None:
    # Its own swtpm: extending PCRs must not disturb the module's shared one.
    with harness.running_swtpm(tmp_path / "swtpm") as swtpm:
        bound = _backend(swtpm.tcti, tmp_path / "keys", pcrs="sha256:7,0")
        unbound = _backend(swtpm.tcti, tmp_path / "keys")  # same STATE_DIR, no PCRS
        try:
            kek = bound.create_key()
            signer = bound.create_key(purpose=KeyPurpose.SIGN)
            plain = unbound.create_key()
            assert bound.pcr_policy(kek) == bound.pcr_policy(signer) == "sha256:0,7"
            assert unbound.pcr_policy(plain) is None

            # The blob carries the policy and no password path; the metadata records it.
            meta = json.loads((tmp_path / "keys" / "keys" / kek.key_id / "meta.json").read_text())
            record = meta["versions"][0]["pcr_policy"]
            assert record["pcrs"] == "sha256:0,7"
            private, public = bound._read_blob(kek.key_id, 1)
            assert bytes(public.publicArea.authPolicy).hex() == record["policy_digest"]
            assert not int(public.publicArea.objectAttributes) & int(TPMA_OBJECT.USERWITHAUTH)

            dek = os.urandom(32)
            wrapped = bound.wrap(kek.key_id, dek, CONTEXT)
            assert bound.unwrap(wrapped, CONTEXT) == dek
            # Use follows the version's record, not the instance's PCRS.
            assert unbound.unwrap(wrapped, CONTEXT) == dek
            assert unbound.unwrap(unbound.wrap(kek.key_id, dek, CONTEXT), CONTEXT) == dek
            with pytest.raises(UnwrapFailed):
                bound.unwrap(wrapped, {**CONTEXT, "object": "o-2"})  # the context still binds
            _, signature = bound.sign(signer.key_id, b"checkpoint")
            assert bound.verify(signer, b"checkpoint", signature)
            plain_dek = os.urandom(32)
            plain_wrapped = bound.wrap(plain.key_id, plain_dek, CONTEXT)

            # The password path cannot bypass the policy: the TPM refuses it outright.
            sealed_private, sealed_public = _split_blob(wrapped.ciphertext)
            with bound._tpm() as conn:
                handle = conn.esapi.load(conn.primary, private, public)
                with bound._flushing(conn, handle):
                    with pytest.raises(TSS2_Exception) as refused:
                        conn.esapi.load(handle, sealed_private, sealed_public)  # password auth
                    assert int(refused.value.error) == int(TPM2_RC.AUTH_UNAVAILABLE)

            _extend(swtpm, 7)

            for backend in (bound, unbound):
                _refuses_with_pcr_mismatch(backend.unwrap, wrapped, CONTEXT)
                _refuses_with_pcr_mismatch(backend.wrap, kek.key_id, dek, CONTEXT)
                _refuses_with_pcr_mismatch(backend.sign, signer.key_id, b"checkpoint")
            # A key made without PCRS on the same TPM is not affected.
            assert bound.unwrap(plain_wrapped, CONTEXT) == plain_dek
            assert unbound.unwrap(unbound.wrap(plain.key_id, dek, CONTEXT), CONTEXT) == dek
            # A version rotated in without PCRS is unbound, while v1 stays bound.
            second = unbound.rotate(kek.key_id)
            assert unbound.pcr_policy(second) is None
            again = bound.wrap(kek.key_id, dek, CONTEXT)
            assert again.key == second
            assert bound.unwrap(again, CONTEXT) == dek
            _refuses_with_pcr_mismatch(bound.unwrap, wrapped, CONTEXT)
            # A key created now is bound to the values the PCRs hold now.
            later = bound.create_key()
            later_wrapped = bound.wrap(later.key_id, dek, CONTEXT)
            assert bound.unwrap(later_wrapped, CONTEXT) == dek

            # A TPM restart resets the PCRs (startup clear): the first key works again, the
            # later one, bound to the extended value, does not.
            swtpm.stop()
            swtpm.start()
            assert bound.unwrap(wrapped, CONTEXT) == dek
            _, signature = unbound.sign(signer.key_id, b"checkpoint")
            assert unbound.verify(signer, b"checkpoint", signature)
            _refuses_with_pcr_mismatch(bound.unwrap, later_wrapped, CONTEXT)
            assert bound.health().ok
        finally:
            bound.close()
            unbound.close()


@pytest.mark.skipif(shutil.which("swtpm_setup") is None, reason="swtpm_setup is not installed")
def test_a_pcr_bank_the_tpm_does_not_have_is_a_configuration_error(tmp_path: Path) -> None:
    state = tmp_path / "swtpm"
    state.mkdir()
    subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--pcr-banks", "sha256"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with harness.running_swtpm(state) as swtpm:
        backend = _backend(swtpm.tcti, tmp_path / "keys", pcrs="sha1:0")
        try:
            with pytest.raises(ConfigurationError, match="not active"):
                backend.create_key()
            assert list((tmp_path / "keys").glob("keys/*")) == []
        finally:
            backend.close()


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


@pytest.mark.parametrize("pcrs", [None, "sha256:0,7"], ids=["hmac-session", "pcr-policy"])
def test_no_data_key_crosses_the_tpm_connection_in_clear(
    swtpm: harness.SwtpmProcess, tmp_path: Path, pcrs: str | None
) -> None:
    proxy = RecordingProxy(swtpm.port)
    backend = _backend(f"swtpm:host=127.0.0.1,port={proxy.port}", tmp_path / "keys", pcrs=pcrs)
    try:
        ref = backend.create_key()
        assert backend.pcr_policy(ref) == pcrs
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
