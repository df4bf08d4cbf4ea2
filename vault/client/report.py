"""Compliance evidence packs on the user's side: the report CA in the trust store, the CA part of
``cvault trust save``, and ``cvault report verify``. Django-free.

The report CA certificate is kept beside the audit logs' trust files, in
``<config dir>/trust/report-ca.pem`` (mode 0600 in a 0700 directory). ``trust save`` fetches it
from ``GET /api/v1/compliance/ca/`` and trusts it on first use, printing its SHA-256 fingerprint
to compare out of band; from then on a server that answers with another CA is refused unless the
user passes ``--replace-keys``. ``report verify`` checks a pack offline against that certificate
(or ``--trust CERT``) with :func:`vault.crypto.reportpack.verify_pack`, and against the audit
keys saved for the pack's audit log, if any.

Security: the CA copy inside a pack is never trusted; without a trusted CA the verdict is
"unanchored" (exit status 2), never "verified".
"""

from __future__ import annotations

import hmac
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault.client import config as cfg
from vault.client.audit import TRUST_DIR, JsonApi, load_trust
from vault.client.errors import (
    ConfigurationError,
    NetworkError,
    ReportCheckFailed,
    ReportUnanchored,
    ServerError,
    UnknownReportCa,
)
from vault.crypto.checkpoint import CheckpointKey
from vault.crypto.reportpack import (
    MAX_CERTIFICATE_BYTES,
    MAX_PACK_BYTES,
    InvalidPackParameters,
    PackError,
    PackReport,
    ca_certificate_problems,
    certificate_fingerprint,
    load_certificate,
    verify_pack,
)

__all__ = [
    "CA_ENDPOINT",
    "REPORT_CA_FILE",
    "ReportCaSaved",
    "ReportVerdict",
    "fetch_report_ca",
    "load_report_ca",
    "read_pack",
    "report_ca_path",
    "report_ca_save",
    "report_verify",
]

#: The file name of the saved report CA certificate, in the trust directory.
REPORT_CA_FILE = "report-ca.pem"
#: The API path that serves the report CA certificate.
CA_ENDPOINT = "/compliance/ca/"


# -- the saved CA --------------------------------------------------------------------------------


def report_ca_path(directory: Path) -> Path:
    """The saved report CA certificate in the configuration directory ``directory``."""
    return directory / TRUST_DIR / REPORT_CA_FILE


def _read_certificate_file(path: Path, what: str) -> x509.Certificate:
    """Exactly one PEM certificate from ``path``, read with a bound.

    Raises:
        FileNotFoundError: there is no such file.
        ConfigurationError: it cannot be read, is too large, or is not one PEM certificate.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CERTIFICATE_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path} ({exc.strerror})") from exc
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise ConfigurationError(f"{what} {path} is larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        return load_certificate(data)
    except InvalidPackParameters as exc:
        raise ConfigurationError(
            f"{what} {path} does not hold one PEM certificate ({exc})"
        ) from exc


def load_report_ca(directory: Path) -> x509.Certificate | None:
    """The saved report CA certificate, or None if none was saved.

    Raises:
        ConfigurationError: the file is unreadable or damaged (not one PEM certificate).
    """
    try:
        return _read_certificate_file(report_ca_path(directory), "the saved report CA file")
    except FileNotFoundError:
        return None


# -- trust save ----------------------------------------------------------------------------------


def fetch_report_ca(api: JsonApi) -> x509.Certificate | None:
    """The server's report CA certificate (``GET /api/v1/compliance/ca/``), or None when the
    server answers 404 (a server from before compliance reports).

    Raises:
        ReportCheckFailed: the certificate is not one PEM certificate, its fingerprint is not
            the one stated beside it, or it is not a CA certificate (code ``report_ca_invalid``).
        NetworkError, ServerError: the server could not be asked, or answered another error.
    """
    try:
        data = api.json("GET", api.path(CA_ENDPOINT))
    except ServerError as exc:
        if exc.status == 404:
            return None
        raise
    pem = data.get("certificate") if isinstance(data, dict) else None
    stated = data.get("fingerprint") if isinstance(data, dict) else None
    if not isinstance(pem, str) or not isinstance(stated, str):
        raise NetworkError(f"{api.url} did not answer {CA_ENDPOINT} like a Ciphervault server")
    try:
        certificate = load_certificate(pem.encode("utf-8"))
    except (InvalidPackParameters, UnicodeEncodeError) as exc:
        raise ReportCheckFailed(
            f"the server's report CA certificate is not one PEM certificate ({exc})",
            "report_ca_invalid",
        ) from exc
    fingerprint = certificate_fingerprint(certificate)
    stated_hex = stated.replace(":", "").lower().encode("utf-8", "replace")
    if not hmac.compare_digest(fingerprint.encode("ascii"), stated_hex):
        raise ReportCheckFailed(
            "the server's report CA certificate does not have the fingerprint stated beside it",
            "report_ca_invalid",
        )
    problems = ca_certificate_problems(certificate)
    if problems:
        raise ReportCheckFailed(
            f"the server's report CA certificate is unusable: {'; '.join(problems)}",
            "report_ca_invalid",
        )
    return certificate


@dataclass(frozen=True)
class ReportCaSaved:
    """What :func:`report_ca_save` did.

    Attributes:
        path: the saved certificate's file.
        certificate: the report CA certificate now trusted.
        fingerprint: its SHA-256 (hex), to compare out of band.
        first_use: no CA was saved before, or it was replaced: trusted on the server's word.
        replaced: another CA was saved before and ``replace`` replaced it.
        previous_fingerprint: the replaced CA's fingerprint (else "").
        unchanged: the server's CA is the one already saved.
    """

    path: Path
    certificate: x509.Certificate
    fingerprint: str
    first_use: bool
    replaced: bool = False
    previous_fingerprint: str = ""
    unchanged: bool = False

    @property
    def subject(self) -> str:
        """The CA certificate's subject (RFC 4514)."""
        return self.certificate.subject.rfc4514_string()


def report_ca_save(api: JsonApi, directory: Path, *, replace: bool = False) -> ReportCaSaved | None:
    """Save the server's report CA certificate: trust on first use, then refuse any other.

    Args:
        api: the logged-in API client.
        directory: the configuration directory.
        replace: trust the server's CA even though another one is saved (``--replace-keys``,
            after an out-of-band check of the new fingerprint).

    Returns:
        What was saved, or None when the server has no report CA (it answered 404).

    Raises:
        UnknownReportCa: another CA is saved and ``replace`` is false (nothing is written).
        ReportCheckFailed: the server's certificate is unusable (see :func:`fetch_report_ca`).
        ConfigurationError: the saved file is damaged or the new one cannot be written.
        NetworkError, ServerError: the server could not be asked.

    Security: after the first use the saved CA only changes when the user says so; the caller
    must show the fingerprint so that the user can compare it out of band.
    """
    saved = load_report_ca(directory)
    certificate = fetch_report_ca(api)
    if certificate is None:
        return None
    path = report_ca_path(directory)
    fingerprint = certificate_fingerprint(certificate)
    der = serialization.Encoding.DER
    if saved is not None and hmac.compare_digest(
        saved.public_bytes(der), certificate.public_bytes(der)
    ):
        return ReportCaSaved(path, certificate, fingerprint, first_use=False, unchanged=True)
    previous = certificate_fingerprint(saved) if saved is not None else ""
    if saved is not None and not replace:
        raise UnknownReportCa(
            f"the server's report CA (SHA-256 {fingerprint}) is not the one saved in {path} "
            f"(SHA-256 {previous}). If your administrator confirms the new CA's fingerprint out "
            "of band, run 'cvault trust save --replace-keys'",
            "report_ca_changed",
        )
    cfg.write_private(path, certificate.public_bytes(serialization.Encoding.PEM))
    return ReportCaSaved(
        path,
        certificate,
        fingerprint,
        first_use=True,
        replaced=saved is not None,
        previous_fingerprint=previous,
    )


# -- report verify -------------------------------------------------------------------------------


def read_pack(source: str, *, max_bytes: int = MAX_PACK_BYTES) -> bytes:
    """Read a pack file (``-``: standard input), refusing more than ``max_bytes``.

    Raises:
        ReportCheckFailed: the file is larger than ``max_bytes`` (code ``pack_too_large``).
        ConfigurationError: it cannot be read (a usage error: exit status 2).
    """
    try:
        if source == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source} ({exc.strerror})") from exc
    if len(data) > max_bytes:
        raise ReportCheckFailed(f"the pack is larger than {max_bytes} bytes", "pack_too_large")
    return data


@dataclass(frozen=True)
class ReportVerdict:
    """A verified pack.

    Attributes:
        report: what the pack showed (``report.verified`` is true).
        ca_source: where the trusted CA came from: the saved file's path, or the ``--trust``
            path.
    """

    report: PackReport
    ca_source: str


def report_verify(data: bytes, *, directory: Path, trust: str | None = None) -> ReportVerdict:
    """Verify an evidence pack offline against the saved report CA (or ``trust``).

    Args:
        data: the pack's bytes.
        directory: the configuration directory (its trust store: the report CA, and the audit
            keys saved for the pack's audit log, which the checkpoints must then also match).
        trust: the path of a PEM CA certificate to trust instead of the saved one.

    Returns:
        The verdict, when every check passed against a trusted CA.

    Raises:
        ReportCheckFailed: any check failed (``problems`` lists each), or the pack is malformed
            (``code`` names it).
        ReportUnanchored: nothing failed, but no CA certificate is trusted.
        ConfigurationError: ``trust`` or a saved trust file is unreadable or damaged.
    """
    if trust is not None:
        path = Path(trust).expanduser()
        try:
            trusted: x509.Certificate | None = _read_certificate_file(path, "--trust")
        except FileNotFoundError as exc:
            raise ConfigurationError(f"--trust {trust}: no such file") from exc
        source = str(path)
    else:
        trusted = load_report_ca(directory)
        source = str(report_ca_path(directory))

    def audit_keys(origin: str) -> tuple[CheckpointKey, ...] | None:
        saved = load_trust(directory, origin)
        return saved.keys if saved is not None else None

    pem = trusted.public_bytes(serialization.Encoding.PEM) if trusted is not None else None
    try:
        report = verify_pack(data, trusted_ca_pem=pem, audit_trust=audit_keys)
    except InvalidPackParameters as exc:  # the trusted certificate; checked above already
        raise ConfigurationError(f"{source}: {exc}") from exc
    except PackError as exc:
        raise ReportCheckFailed(str(exc), exc.code) from exc
    if report.problems:
        raise ReportCheckFailed(
            f"the evidence pack does not verify: {len(report.problems)} problem(s)",
            "pack_verification_failed",
            tuple(report.problems),
        )
    if not report.anchored:
        raise ReportUnanchored(
            "no report CA certificate is trusted: the pack is consistent, but only with its own "
            "copy of the CA, which anyone could have made",
            pack_ca_fingerprint=report.pack_ca_fingerprint,
        )
    return ReportVerdict(report=report, ca_source=source)
