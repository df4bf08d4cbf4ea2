"""A private PyKMIP server for tests: its own CA, mutual TLS on loopback, an operation policy.

``session_harness(base_dir)`` makes a CA and certificates with ``cryptography``, writes the
PyKMIP server configuration and operation policy under ``base_dir``, starts the server as a
subprocess (``python -m kms_plugins.testing.kmip_server -f <config> -l <log>``), waits until it
accepts TLS and has loaded the policy, and yields a ``KmipHarness`` whose backend talks to it.

The server is PyKMIP's reference server with two corrections, applied only in that subprocess
(see ``_SpecConformantEngine`` and docs/adr/0002-kmip-wrap-construction.md):

* PyKMIP authorises Encrypt and Decrypt under the operation policy's **Get** entry, so a policy
  cannot refuse Get without refusing Encrypt. Here they are authorised under their own ENCRYPT
  and DECRYPT entries, as KMIP intends; the policy then allows them and refuses Get.
* PyKMIP refuses Decrypt unless the key is Active; KMIP allows a Deactivated or Compromised key
  to process (decrypt) what it protected. Here Decrypt accepts those states; Encrypt still
  requires Active.

Everything else (TLS, sessions, policy engine, database, cryptography) is stock PyKMIP.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import pathlib
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms_plugins.testing import OUTAGE_FREEZE, OUTAGE_STOP, BackendHarness

#: The client identity the server sees: the common name of the vault's client certificate.
CLIENT_IDENTITY = "ciphervault-vault"
#: The operation policy KEKs are created under.
POLICY_NAME = "ciphervault-kek"
#: The server's cipher suites (KMIP names; PyKMIP drops unknown names silently, so only names
#: from its TLS 1.2 list appear here, and ``_check_server_suites`` proves both survive).
SERVER_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
)
_PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]

#: What the vault's identity may do with KEKs: everything it needs, never Get. Tombstones
#: (opaque objects left where a destroyed version was) hold no secret.
POLICY: dict[str, Any] = {
    POLICY_NAME: {
        "preset": {
            "SYMMETRIC_KEY": {
                "GET": "DISALLOW_ALL",
                "LOCATE": "ALLOW_OWNER",
                "GET_ATTRIBUTES": "ALLOW_OWNER",
                "GET_ATTRIBUTE_LIST": "ALLOW_OWNER",
                "ACTIVATE": "ALLOW_OWNER",
                "REVOKE": "ALLOW_OWNER",
                "DESTROY": "ALLOW_OWNER",
                "ENCRYPT": "ALLOW_OWNER",
                "DECRYPT": "ALLOW_OWNER",
            },
            "OPAQUE_DATA": {
                "LOCATE": "ALLOW_OWNER",
                "GET_ATTRIBUTES": "ALLOW_OWNER",
                "GET_ATTRIBUTE_LIST": "ALLOW_OWNER",
            },
        }
    }
}


def available() -> str | None:
    """Whether a PyKMIP server can run here.

    Returns:
        None when it can; otherwise the reason it cannot (for ``pytest.skip``).
    """
    try:
        import kmip.services.server.server  # noqa: F401
    except ImportError as exc:
        return f"PyKMIP is not installed ({exc}); pip install pykmip"
    return None


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A test certificate authority: its key, its certificate and where the PEM lives."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: pathlib.Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: pathlib.Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_authority(directory: pathlib.Path, name: str) -> Authority:
    """A new EC P-256 CA, its certificate written to ``directory/<name>.crt``.

    Args:
        directory: where the PEM files go.
        name: the CA's common name and file stem.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{name}.key")
    return Authority(key=key, cert=cert, cert_path=path)


def issue_certificate(
    authority: Authority,
    directory: pathlib.Path,
    stem: str,
    *,
    common_name: str,
    hostnames: Sequence[str] = (),
    client: bool = False,
) -> tuple[pathlib.Path, pathlib.Path]:
    """An EC P-256 leaf certificate signed by ``authority``.

    Args:
        authority: the issuing CA.
        directory: where ``<stem>.crt`` and ``<stem>.key`` go.
        common_name: the subject CN (PyKMIP takes the client identity from it).
        hostnames: DNS names or IP addresses for the subjectAltName (servers).
        client: a client certificate (EKU clientAuth) rather than a server one (serverAuth).

    Returns:
        The certificate and key paths.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if hostnames:
        alt: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


# -- the server process -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class KmipServerProcess:
    """One PyKMIP server: its files, its port and (while running) its process."""

    base_dir: pathlib.Path
    port: int
    config_path: pathlib.Path
    log_path: pathlib.Path
    ca_path: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    #: The same client key encrypted under ``client_key_password`` (what the backend is given).
    client_key_encrypted: pathlib.Path
    client_key_password: str
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts TLS and has loaded the policy.

        A restart on the same port may fail to bind while the old socket lingers: retry until
        ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(_PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
            )
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kms_plugins.testing.kmip_server",
                    "-f",
                    str(self.config_path),
                    "-l",
                    str(self.log_path),
                ],
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=(self.base_dir / "server.stdout").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop and freeze reach all of it
            )
            if self._wait_ready(offset, deadline):
                return
            self.kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the PyKMIP server did not start; see {self.log_path}")
            time.sleep(0.5)

    def _wait_ready(self, log_offset: int, deadline: float) -> bool:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: typically the port was not free yet
            if self._policy_loaded(log_offset) and self._accepts_tls():
                return True
            time.sleep(0.1)
        return False

    def _policy_loaded(self, offset: int) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return f"Loading policy: {POLICY_NAME}".encode() in log.read()
        except FileNotFoundError:
            return False

    def _accepts_tls(self) -> bool:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca_path)
        context.load_cert_chain(self.client_cert, self.client_key)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except OSError:
            return False

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the server's process group (the server and its helper)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for its process group to exit."""
        if self.process is None:
            return
        pid = self.process.pid
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
        # The policy monitor and multiprocessing manager share the group: make sure they go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.process = None


def write_server_files(base_dir: pathlib.Path) -> KmipServerProcess:
    """Make the CA, certificates, configuration and policy for a server under ``base_dir``."""
    base_dir.mkdir(parents=True, exist_ok=True)
    pki = base_dir / "pki"
    pki.mkdir(exist_ok=True)
    policies = base_dir / "policies"
    policies.mkdir(exist_ok=True)
    authority = make_authority(pki, "test-kmip-ca")
    server_cert, server_key = issue_certificate(
        authority, pki, "server", common_name="localhost", hostnames=("localhost", "127.0.0.1")
    )
    client_cert, client_key = issue_certificate(
        authority, pki, "client", common_name=CLIENT_IDENTITY, client=True
    )
    password = secrets.token_urlsafe(18)
    encrypted = pki / "client-encrypted.key"
    client_private = serialization.load_pem_private_key(client_key.read_bytes(), None)
    encrypted.write_bytes(
        client_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    encrypted.chmod(0o600)
    (policies / "ciphervault.json").write_text(json.dumps(POLICY, indent=2))
    port = _free_port()
    config = base_dir / "server.conf"
    config.write_text(
        "[server]\n"
        "hostname=127.0.0.1\n"
        f"port={port}\n"
        f"certificate_path={server_cert}\n"
        f"key_path={server_key}\n"
        f"ca_path={authority.cert_path}\n"
        "auth_suite=TLS1.2\n"
        f"policy_path={policies}\n"
        "enable_tls_client_auth=True\n"
        "tls_cipher_suites=\n"
        + "".join(f"    {suite}\n" for suite in SERVER_CIPHER_SUITES)
        + "logging_level=INFO\n"
        f"database_path={base_dir / 'pykmip.db'}\n"
    )
    return KmipServerProcess(
        base_dir=base_dir,
        port=port,
        config_path=config,
        log_path=base_dir / "server.log",
        ca_path=authority.cert_path,
        client_cert=client_cert,
        client_key=client_key,
        client_key_encrypted=encrypted,
        client_key_password=password,
    )


class KmipHarness(BackendHarness):
    """The conformance harness for the KMIP backend against a private PyKMIP server."""

    name = "kmip"
    expect_non_extractable = True
    outage_kinds = (OUTAGE_STOP, OUTAGE_FREEZE)

    def __init__(self, backend: Any, server: KmipServerProcess) -> None:
        super().__init__(backend)
        self.server = server
        self.secrets = (server.client_key_password,)

    @contextlib.contextmanager
    def outage(self, kind: str) -> Iterator[None]:
        """Stop the server (and start it again, same port and database) or freeze it."""
        if kind == OUTAGE_STOP:
            self.server.kill()
            try:
                yield
            finally:
                self.server.start()
                self._wait_answering()
        elif kind == OUTAGE_FREEZE:
            self.server.signal_group(signal.SIGSTOP)
            try:
                yield
            finally:
                self.server.signal_group(signal.SIGCONT)
                self._wait_answering()
        else:
            raise NotImplementedError(kind)

    def _wait_answering(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.backend.health().ok:
            if time.monotonic() > deadline:
                raise RuntimeError("the KMIP backend did not answer again after the outage")
            time.sleep(0.2)


def backend_options(server: KmipServerProcess, **overrides: Any) -> dict[str, Any]:
    """The KmipKeyBackend OPTIONS for talking to ``server`` as the vault's identity."""
    options: dict[str, Any] = {
        "HOST": "127.0.0.1",
        "PORT": server.port,
        "CA_FILE": str(server.ca_path),
        "CERT_FILE": str(server.client_cert),
        "KEY_FILE": str(server.client_key_encrypted),
        "KEY_PASSWORD": server.client_key_password,
        "OPERATION_POLICY_NAME": POLICY_NAME,
        "SERVER_REFUSES_GET": True,  # the policy written here does, and a test proves it
        "TIMEOUT": 3,
    }
    options.update(overrides)
    return options


@contextlib.contextmanager
def session_harness(base_dir: pathlib.Path) -> Iterator[KmipHarness]:
    """A running PyKMIP server under ``base_dir`` and a harness whose backend uses it.

    Raises:
        RuntimeError: PyKMIP is missing or the server did not start.
    """
    reason = available()
    if reason:
        raise RuntimeError(reason)
    from kms_plugins.kmip import KmipKeyBackend

    server = write_server_files(base_dir)
    server.start()
    backend = KmipKeyBackend("kmip-test", backend_options(server))
    try:
        yield KmipHarness(backend, server)
    finally:
        backend.close()
        server.kill()


# -- the server entry point (runs in the subprocess) -----------------------------------------


def _spec_conformant_engine() -> type:
    """PyKMIP's engine with Encrypt/Decrypt authorised under their own policy entries."""
    from kmip.core import enums
    from kmip.core import exceptions as kmip_exceptions
    from kmip.core.messages import payloads
    from kmip.services.server import engine

    decrypt_states = {enums.State.ACTIVE, enums.State.DEACTIVATED, enums.State.COMPROMISED}

    class _SpecConformantEngine(engine.KmipEngine):
        # PyKMIP serves each connection in its own thread, all sharing this engine: the
        # operation being authorised must be per thread, or a Get on one connection would be
        # authorised as another connection's in-flight Encrypt.
        _authorizing = threading.local()

        @property
        def _authorize_as(self) -> Any:
            return getattr(self._authorizing, "operation", None)

        @_authorize_as.setter
        def _authorize_as(self, value: Any) -> None:
            self._authorizing.operation = value

        def _get_object_with_access_controls(self, uid: Any, operation: Any) -> Any:
            # Upstream passes GET for Encrypt and Decrypt; use the operation's own entry.
            if operation == enums.Operation.GET and self._authorize_as is not None:
                operation = self._authorize_as
            return super()._get_object_with_access_controls(uid, operation)

        def _process_encrypt(self, payload: Any) -> Any:
            self._authorize_as = enums.Operation.ENCRYPT
            try:
                return super()._process_encrypt(payload)
            finally:
                self._authorize_as = None

        def _process_decrypt(self, payload: Any) -> Any:
            # Upstream's Decrypt, with DECRYPT authorisation and the KMIP state rule.
            self._logger.info("Processing operation: Decrypt")
            uid = payload.unique_identifier or self._id_placeholder
            self._authorize_as = enums.Operation.DECRYPT
            try:
                managed_object = self._get_object_with_access_controls(uid, enums.Operation.GET)
            finally:
                self._authorize_as = None
            parameters = payload.cryptographic_parameters
            if parameters is None:
                raise kmip_exceptions.InvalidField(
                    "The cryptographic parameters must be specified."
                )
            if managed_object._object_type != enums.ObjectType.SYMMETRIC_KEY:
                raise kmip_exceptions.PermissionDenied("Only symmetric decryption is supported.")
            if managed_object.state not in decrypt_states:
                raise kmip_exceptions.PermissionDenied(
                    "The decryption key must be Active, Deactivated or Compromised."
                )
            if enums.CryptographicUsageMask.DECRYPT not in managed_object.cryptographic_usage_masks:
                raise kmip_exceptions.PermissionDenied(
                    "The Decrypt bit must be set in the key's cryptographic usage mask."
                )
            result = self._cryptography_engine.decrypt(
                parameters.cryptographic_algorithm,
                managed_object.value,
                payload.data,
                cipher_mode=parameters.block_cipher_mode,
                padding_method=parameters.padding_method,
                iv_nonce=payload.iv_counter_nonce,
                auth_additional_data=payload.auth_additional_data,
                auth_tag=payload.auth_tag,
            )
            return payloads.DecryptResponsePayload(uid, result)

    return _SpecConformantEngine


def _serve() -> None:
    from kmip.services.server import engine, server

    engine.KmipEngine = _spec_conformant_engine()
    server.main()


if __name__ == "__main__":
    _serve()
