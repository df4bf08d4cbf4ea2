"""The KMIP backend against a real PyKMIP server over mutual TLS on loopback (no mocks)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import pytest
from cryptography.hazmat.primitives import serialization

from kms_plugins.errors import (
    BackendUnavailable,
    KeyDestroyed,
    KeyStateError,
    UnwrapFailed,
)
from kms_plugins.testing import kmip_server
from kms_plugins.types import KeyRef, KeyState

if kmip_server.available():
    pytest.skip(kmip_server.available() or "", allow_module_level=True)

from kmip.core import enums as kmip_enums
from kmip.pie import exceptions as pie_exceptions
from kmip.pie.client import ProxyKmipClient

from kms_plugins.kmip import ECDHE_CIPHERS, KmipKeyBackend, client_tls_context

pytestmark = pytest.mark.kmip

CONTEXT = {"tenant": "acme", "object": "42"}
DEK = bytes(range(32))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kmip_server.KmipHarness]:
    with kmip_server.session_harness(tmp_path_factory.mktemp("kmip")) as harness:
        yield harness


@pytest.fixture
def backend(harness: kmip_server.KmipHarness) -> KmipKeyBackend:
    assert isinstance(harness.backend, KmipKeyBackend)
    return harness.backend


def _server_state(harness: kmip_server.KmipHarness, uid: str) -> object:
    """The object's State as the server reports it, read with PyKMIP's own client."""
    with _stock_client(harness) as client:
        _, attributes = client.get_attributes(uid, ["State"])
        return attributes[0].attribute_value.value


@contextlib.contextmanager
def _stock_client(harness: kmip_server.KmipHarness) -> Iterator[ProxyKmipClient]:
    """PyKMIP's stock client, authenticated as the vault's own identity."""
    server = harness.server
    # PyKMIP's own TLS set-up (no hostname check): fine for a test helper on loopback.
    client = ProxyKmipClient(
        hostname="127.0.0.1",
        port=server.port,
        cert=str(server.client_cert),
        key=str(server.client_key),
        ca=str(server.ca_path),
        ssl_version="PROTOCOL_TLSv1_2",
        kmip_version=kmip_enums.KMIPVersion.KMIP_1_2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.PROTOCOL_TLSv1_2
        client.open()
    try:
        yield client
    finally:
        client.close()


def _uid(backend: KmipKeyBackend, ref: KeyRef) -> str:
    return backend._call(backend._version_uid, ref)


@contextlib.contextmanager
def _impostor(cert: pathlib.Path, key: pathlib.Path) -> Iterator[int]:
    """A TLS server on loopback presenting ``cert``; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(5)


# -- wrap and unwrap ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32])
def test_it_round_trips_a_data_key(backend: KmipKeyBackend, size: int) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK[:size], CONTEXT)
    assert wrapped.key == ref
    assert DEK[:size] not in wrapped.ciphertext
    assert backend.unwrap(wrapped, CONTEXT) == DEK[:size]


def test_it_rejects_another_context(backend: KmipKeyBackend) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(wrapped, {**CONTEXT, "object": "43"})


def test_it_rejects_every_flipped_bit(backend: KmipKeyBackend) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    for position in range(len(wrapped.ciphertext) * 8):
        blob = bytearray(wrapped.ciphertext)
        blob[position // 8] ^= 1 << (position % 8)
        with pytest.raises(UnwrapFailed):
            backend.unwrap(replace(wrapped, ciphertext=bytes(blob)), CONTEXT)


def test_it_rejects_a_relabelled_version_or_mechanism(backend: KmipKeyBackend) -> None:
    ref = backend.create_key()
    v2 = backend.rotate(ref.key_id)
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    assert wrapped.key == v2
    with pytest.raises(UnwrapFailed):
        backend.unwrap(replace(wrapped, key=ref), CONTEXT)
    with pytest.raises(UnwrapFailed):
        backend.unwrap(replace(wrapped, mechanism="kmip-aes256-cbc"), CONTEXT)
    other = backend.create_key()
    with pytest.raises(UnwrapFailed):
        backend.unwrap(replace(wrapped, key=other), CONTEXT)


def test_it_unwraps_older_versions_after_rotation_and_restart(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    old = backend.wrap(ref.key_id, DEK, CONTEXT)
    v2 = backend.rotate(ref.key_id)
    restarted = harness.new_backend()  # no local state: versions are found by KMIP Name
    try:
        new = restarted.wrap(ref.key_id, DEK, CONTEXT)
        assert new.key == v2
        assert restarted.unwrap(old, CONTEXT) == DEK
        assert backend.unwrap(new, CONTEXT) == DEK
        assert [v.ref.version for v in restarted.describe(ref.key_id).versions] == [1, 2]
    finally:
        restarted.close()


# -- key material stays on the server -----------------------------------------------------------


def test_it_refuses_get_of_kek_material_to_the_vault_identity(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    uid = _uid(backend, ref)
    with _stock_client(harness) as client:
        client.get_attributes(uid, ["State"])  # same identity, same object: it is policy, not luck
        with pytest.raises(pie_exceptions.KmipOperationFailure) as failure:
            client.get(uid)
    assert failure.value.reason == kmip_enums.ResultReason.PERMISSION_DENIED


def test_it_describes_keys_as_generated_on_the_server_and_not_extractable(
    backend: KmipKeyBackend,
) -> None:
    ref = backend.create_key()
    info = backend.describe(ref.key_id).versions[0]
    assert (info.algorithm, info.size, info.state) == ("AES", 256, KeyState.ACTIVE)
    assert info.extractable is False
    assert info.sensitive is True
    assert info.generated_in_backend is True
    assert info.created is not None
    assert len(info.fingerprint) == 32
    other = backend.create_key()
    assert backend.describe(other.key_id).versions[0].fingerprint != info.fingerprint


# -- TLS ----------------------------------------------------------------------------------------


def test_it_negotiates_tls12_with_an_ecdhe_suite(backend: KmipKeyBackend) -> None:
    session = backend.tls_session()
    assert session["version"] == "TLSv1.2"
    assert session["cipher"].startswith("ECDHE-")
    assert session["cipher"] in ECDHE_CIPHERS


def test_it_offers_only_forward_secret_suites(harness: kmip_server.KmipHarness) -> None:
    server = harness.server
    context = client_tls_context(
        ca_file=str(server.ca_path),
        cert_file=str(server.client_cert),
        key_file=str(server.client_key),
    )
    offered = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert offered
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in offered)


def test_it_refuses_a_server_certificate_for_another_hostname(
    harness: kmip_server.KmipHarness, tmp_path: pathlib.Path
) -> None:
    ca = _server_authority(harness)
    cert, key = kmip_server.issue_certificate(
        ca, tmp_path, "evil", common_name="kmip.evil.example", hostnames=("kmip.evil.example",)
    )
    with _impostor(cert, key) as port:
        impostor = KmipKeyBackend("kmip-impostor", _options(harness, PORT=port))
        with pytest.raises(BackendUnavailable) as failure:
            impostor.create_key()
    assert isinstance(failure.value.__cause__, ssl.SSLCertVerificationError)
    assert "mismatch" in str(failure.value.__cause__)
    # And the genuine server, when the vault expects another name.
    renamed = KmipKeyBackend("kmip-renamed", _options(harness, SERVER_NAME="kmip.other.example"))
    with pytest.raises(BackendUnavailable):
        renamed.create_key()


def test_it_refuses_a_server_certificate_from_another_ca(
    harness: kmip_server.KmipHarness, tmp_path: pathlib.Path
) -> None:
    rogue = kmip_server.make_authority(tmp_path, "rogue-ca")
    cert, key = kmip_server.issue_certificate(
        rogue, tmp_path, "rogue", common_name="127.0.0.1", hostnames=("127.0.0.1", "localhost")
    )
    with _impostor(cert, key) as port:
        impostor = KmipKeyBackend("kmip-impostor", _options(harness, PORT=port))
        with pytest.raises(BackendUnavailable) as failure:
            impostor.create_key()
    assert isinstance(failure.value.__cause__, ssl.SSLCertVerificationError)
    # And the genuine server, when the vault trusts only another CA.
    distrusting = KmipKeyBackend("kmip-distrust", _options(harness, CA_FILE=str(rogue.cert_path)))
    with pytest.raises(BackendUnavailable):
        distrusting.create_key()


def test_it_opens_with_an_encrypted_client_key_and_never_shows_the_password(
    harness: kmip_server.KmipHarness, tmp_path: pathlib.Path
) -> None:
    password = "correct horse battery staple"
    key = serialization.load_pem_private_key(harness.server.client_key.read_bytes(), None)
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    locked = KmipKeyBackend(
        "kmip-locked", _options(harness, KEY_FILE=str(encrypted), KEY_PASSWORD=password)
    )
    try:
        assert locked.health().ok
        assert password not in repr(locked)
        assert password not in str(locked)
    finally:
        locked.close()


# -- connections ----------------------------------------------------------------------------------


def test_it_reuses_one_connection_across_calls(harness: kmip_server.KmipHarness) -> None:
    fresh = cast(KmipKeyBackend, harness.new_backend())
    try:
        ref = fresh.create_key()
        socket_id = fresh.tls_session()["socket_id"]
        for _ in range(5):
            fresh.unwrap(fresh.wrap(ref.key_id, DEK, CONTEXT), CONTEXT)
        assert fresh.describe(ref.key_id).primary is not None
        assert fresh.handshakes == 1
        assert fresh.tls_session()["socket_id"] == socket_id
    finally:
        fresh.close()


def test_it_reconnects_after_a_broken_connection(harness: kmip_server.KmipHarness) -> None:
    fresh = cast(KmipKeyBackend, harness.new_backend())
    try:
        ref = fresh.create_key()
        fresh._proxy.socket.shutdown(socket.SHUT_RDWR)  # the connection dies under the backend
        with contextlib.suppress(BackendUnavailable):
            fresh.wrap(ref.key_id, DEK, CONTEXT)
        assert fresh.unwrap(fresh.wrap(ref.key_id, DEK, CONTEXT), CONTEXT) == DEK
        assert fresh.handshakes == 2
    finally:
        fresh.close()


def test_it_opens_its_own_connection_after_fork(harness: kmip_server.KmipHarness) -> None:
    fresh = cast(KmipKeyBackend, harness.new_backend())
    try:
        ref = fresh.create_key()
        wrapped = fresh.wrap(ref.key_id, DEK, CONTEXT)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            ok = fresh.unwrap(wrapped, CONTEXT) == DEK and fresh.handshakes == 2
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connection was left alone by the child.
        assert fresh.unwrap(wrapped, CONTEXT) == DEK
        assert fresh.handshakes == 1
    finally:
        fresh.close()


def test_it_reports_a_frozen_server_as_unavailable_and_recovers(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    with harness.outage("freeze"):
        with pytest.raises(BackendUnavailable) as failure:
            backend.unwrap(wrapped, CONTEXT)
        assert failure.value.transient
    assert backend.unwrap(wrapped, CONTEXT) == DEK


def test_it_reports_a_stopped_server_as_unavailable_and_recovers(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    with harness.outage("stop"), pytest.raises(BackendUnavailable):
        backend.wrap(ref.key_id, DEK, CONTEXT)
    assert backend.unwrap(wrapped, CONTEXT) == DEK  # same database after the restart


# -- states ---------------------------------------------------------------------------------------


def test_it_deactivates_by_revoking_for_cessation_of_operation(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    backend.set_state(ref, KeyState.DEACTIVATED)
    assert _server_state(harness, _uid(backend, ref)) == kmip_enums.State.DEACTIVATED
    assert backend.describe(ref.key_id).versions[0].state == KeyState.DEACTIVATED
    assert backend.unwrap(wrapped, CONTEXT) == DEK
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, DEK, CONTEXT)


def test_it_marks_a_compromised_key_by_revoking_for_key_compromise(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    backend.set_state(ref, KeyState.COMPROMISED)
    assert _server_state(harness, _uid(backend, ref)) == kmip_enums.State.COMPROMISED
    assert backend.unwrap(wrapped, CONTEXT) == DEK
    with pytest.raises(KeyStateError):
        backend.wrap(ref.key_id, DEK, CONTEXT)
    with pytest.raises(KeyStateError):
        backend.set_state(ref, KeyState.ACTIVE)  # KMIP has no way back


def test_it_destroys_on_the_server_and_then_neither_wraps_nor_unwraps(
    harness: kmip_server.KmipHarness, backend: KmipKeyBackend
) -> None:
    ref = backend.create_key()
    wrapped = backend.wrap(ref.key_id, DEK, CONTEXT)
    uid = _uid(backend, ref)
    fingerprint = backend.describe(ref.key_id).versions[0].fingerprint
    backend.destroy(ref)
    refusal = pie_exceptions.KmipOperationFailure
    with _stock_client(harness) as client, pytest.raises(refusal) as gone:
        client.get_attributes(uid, ["State"])
    assert gone.value.reason == kmip_enums.ResultReason.ITEM_NOT_FOUND
    with pytest.raises(KeyDestroyed):
        backend.unwrap(wrapped, CONTEXT)
    restarted = harness.new_backend()
    try:
        with pytest.raises(KeyDestroyed):
            restarted.unwrap(wrapped, CONTEXT)
        with pytest.raises(KeyStateError):
            restarted.wrap(ref.key_id, DEK, CONTEXT)
        info = restarted.describe(ref.key_id).versions[0]
        assert (info.state, info.fingerprint) == (KeyState.DESTROYED, fingerprint)
    finally:
        restarted.close()
    backend.destroy(ref)  # idempotent


# -- helpers --------------------------------------------------------------------------------------


def _options(harness: kmip_server.KmipHarness, **overrides: object) -> dict[str, object]:
    return kmip_server.backend_options(harness.server, **overrides)


def _server_authority(harness: kmip_server.KmipHarness) -> kmip_server.Authority:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    pki = harness.server.ca_path.parent
    key = serialization.load_pem_private_key((pki / "test-kmip-ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(harness.server.ca_path.read_bytes())
    return kmip_server.Authority(key=key, cert=cert, cert_path=harness.server.ca_path)
