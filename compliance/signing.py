"""The report-signing authority: a CA certificate and a signer certificate whose private keys
stay in the report-signing key backend (docs/compliance.md, "Report signing").

Both certificates are built here with asn1crypto and signed by the backend (ECDSA P-256 over
SHA-256); the vault stores only the certificates, which carry public keys. ``sign_detached``
signs evidence-pack manifests and ``sign_pdf`` signs report PDFs (PAdES B-B, through pyHanko,
with a pyHanko ``Signer`` that calls the backend's ``sign``).

Recording that something was signed is the caller's job (it knows what it signed, and for whom).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asn1crypto import keys, pem, x509
from asn1crypto.algos import SignedDigestAlgorithm
from cryptography import x509 as cx509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError
from pyhanko_certvalidator.registry import SimpleCertificateStore

from compliance.models import CertificateKind, ReportCertificate
from kms_plugins.base import KeyBackend
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyRef
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.keys.services import (
    KeySuspended,
    NoSigningBackend,
    binding_check_usable,
    platform_key_binding,
)

logger = logging.getLogger(__name__)

CA_COMMON_NAME = "Ciphervault report CA"
SIGNER_COMMON_NAME = "Ciphervault report signer"
CA_LIFETIME = timedelta(days=3653)  # ten years
SIGNER_LIFETIME = timedelta(days=730)  # two years
# A certificate this close to its end is replaced before it is used again.
RENEW_BEFORE = timedelta(days=30)
# Clocks differ a little between the vault and whoever validates a signature just made.
BACKDATE = timedelta(minutes=5)
# The longest DER encoding of an ECDSA P-256 signature (two 33-byte INTEGERs in a SEQUENCE).
ECDSA_P256_MAX_DER = 72
SIGNATURE_FIELD = "CiphervaultReportSignature"


class ReportSigningError(Exception):
    """Base of the report-signing errors; ``code`` is the stable error code.

    ``transient`` says whether the same call may succeed later with nothing changed (a key
    backend that did not answer); callers answer 503 then, and fail for good otherwise.
    """

    code = "report_signing_error"

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ReportSigningUnavailable(ReportSigningError):
    """No backend can sign reports: none is configured, it is down, or its key is suspended."""

    code = "report_signing_unavailable"
    status = 503


@dataclass(frozen=True)
class Authority:
    """The report-signing chain as it stands: the CA and signer certificates (stored rows and
    parsed), and the binding of the signer's key, which signs through its backend."""

    ca: ReportCertificate
    signer: ReportCertificate
    ca_certificate: x509.Certificate
    signer_certificate: x509.Certificate
    signer_binding: KeyBinding

    @property
    def ca_pem(self) -> str:
        """The CA certificate, PEM."""
        return self.ca.pem

    @property
    def signer_pem(self) -> str:
        """The signer certificate, PEM."""
        return self.signer.pem


@contextlib.contextmanager
def _unavailable_on_backend_errors() -> Iterator[None]:
    """Turn the key services' and backends' errors into ``ReportSigningUnavailable``."""
    try:
        yield
    except (NoSigningBackend, KeySuspended) as exc:
        raise ReportSigningUnavailable(f"reports cannot be signed: {exc}") from exc
    except KeyBackendError as exc:
        # Backend messages carry no key material or PINs (kms_plugins.errors).
        raise ReportSigningUnavailable(
            f"reports cannot be signed: the key backend failed ({exc.code})",
            transient=exc.transient,
        ) from exc


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """A platform signing key's current version in its backend."""

    binding: KeyBinding
    backend: KeyBackend
    ref: KeyRef
    public: keys.PublicKeyInfo

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA P-256/SHA-256 signature over ``data`` by exactly this version."""
        ref, signature = self.backend.sign(self.binding.key_id, data)
        if ref != self.ref:
            # The key was rotated since we looked: the certificate would name the wrong key.
            raise ReportSigningUnavailable(
                f"the {self.binding.role} key changed while signing; try again", transient=True
            )
        return signature


def _current_key(role: str) -> _Key:
    binding = platform_key_binding(role)
    binding_check_usable(binding)  # a possibly substituted key signs nothing (PCI-DSS 3.7.7)
    backend = key_backend(binding.backend_alias)
    primary = backend.describe(binding.key_id).primary
    if primary is None:
        raise ReportSigningUnavailable(f"the platform {role} key has no active version")
    public = keys.PublicKeyInfo.load(_unarmor(backend.public_key(primary.ref)))
    if public.algorithm != "ec" or public.curve != ("named", "secp256r1"):
        raise ReportSigningUnavailable(f"the platform {role} key is not an EC P-256 key")
    return _Key(binding=binding, backend=backend, ref=primary.ref, public=public)


def _unarmor(data: bytes) -> bytes:
    _, _, der = pem.unarmor(data)
    return bytes(der)


def _time(moment: datetime) -> x509.Time:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 on.
    choice = "utc_time" if moment.year < 2050 else "general_time"
    return x509.Time({choice: moment})


def _name(common_name: str) -> x509.Name:
    return x509.Name.build(
        {"common_name": common_name, "organization_name": settings.VAULT_AUDIT_ORIGIN}
    )


def _issue(
    *,
    subject: x509.Name,
    public: keys.PublicKeyInfo,
    issuer: x509.Name,
    issuer_key_id: bytes,
    not_before: datetime,
    not_after: datetime,
    ca: bool,
    sign: Callable[[bytes], bytes],
) -> x509.Certificate:
    """Build a certificate and have ``sign`` (the issuer's backend) sign its TBS part."""
    if ca:
        constraints = {"ca": True, "path_len_constraint": 0}
        usage = {"key_cert_sign", "crl_sign"}
    else:
        constraints = {"ca": False}
        usage = {"digital_signature", "non_repudiation"}
    algorithm = {"algorithm": "sha256_ecdsa"}
    tbs = x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": secrets.randbits(159) | 1,  # positive, unpredictable, <= 20 octets
            "signature": algorithm,
            "issuer": issuer,
            "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
            "subject": subject,
            "subject_public_key_info": public,
            "extensions": [
                {"extn_id": "basic_constraints", "critical": True, "extn_value": constraints},
                {"extn_id": "key_usage", "critical": True, "extn_value": usage},
                {"extn_id": "key_identifier", "critical": False, "extn_value": public.sha1},
                {
                    "extn_id": "authority_key_identifier",
                    "critical": False,
                    "extn_value": {"key_identifier": issuer_key_id},
                },
            ],
        }
    )
    signature = sign(tbs.dump())
    return x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )


def _check_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """Refuse to store a certificate whose signature does not verify under its issuer's key."""
    child = cx509.load_der_x509_certificate(certificate.dump())
    parent = cx509.load_der_x509_certificate(issuer.dump())
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ReportSigningError("the key backend made a certificate that does not verify") from exc


def _store(kind: str, key: _Key, certificate: x509.Certificate) -> ReportCertificate:
    der = certificate.dump()
    validity = certificate["tbs_certificate"]["validity"]
    return ReportCertificate.objects.create(
        kind=kind,
        binding=key.binding,
        key_version=key.ref.version,
        pem=pem.armor("CERTIFICATE", der).decode("ascii"),
        fingerprint=hashlib.sha256(der).hexdigest(),
        not_before=validity["not_before"].native,
        not_after=validity["not_after"].native,
    )


def _load(record: ReportCertificate) -> x509.Certificate:
    return x509.Certificate.load(_unarmor(record.pem.encode("ascii")))


def _usable(
    kind: str, key: _Key, now: datetime, *, remaining: timedelta
) -> list[tuple[ReportCertificate, x509.Certificate]]:
    """This key version's certificates of ``kind`` valid now and for ``remaining`` more, oldest
    first (so concurrent callers that each made one settle on the same)."""
    rows = ReportCertificate.objects.filter(
        kind=kind,
        binding=key.binding,
        key_version=key.ref.version,
        not_before__lte=now,
        not_after__gt=now + remaining,
    ).order_by("created_at", "pk")
    found = []
    for record in rows:
        certificate = _load(record)
        # The stored certificate must name the backend's key: a substituted row signs nothing.
        if certificate.public_key.dump() == key.public.dump():
            found.append((record, certificate))
        else:
            logger.error("report certificate %s names another key; ignored", record.fingerprint)
    return found


def _ca_certificate(key: _Key, now: datetime) -> tuple[ReportCertificate, x509.Certificate]:
    # Renewed while it can still cover a whole signer certificate's life.
    remaining = SIGNER_LIFETIME + RENEW_BEFORE
    found = _usable(CertificateKind.CA, key, now, remaining=remaining)
    if found:
        return found[0]
    with transaction.atomic():
        # The binding row's lock serializes issuers (a no-op on SQLite, which writes one at a
        # time anyway); whoever waited finds the winner's certificate.
        KeyBinding.objects.select_for_update().filter(pk=key.binding.pk).first()
        found = _usable(CertificateKind.CA, key, now, remaining=remaining)
        if found:
            return found[0]
        name = _name(CA_COMMON_NAME)
        certificate = _issue(
            subject=name,
            public=key.public,
            issuer=name,
            issuer_key_id=key.public.sha1,
            not_before=now - BACKDATE,
            not_after=now + CA_LIFETIME,
            ca=True,
            sign=key.sign,
        )
        _check_issued_by(certificate, certificate)
        record = _store(CertificateKind.CA, key, certificate)
    logger.info("report CA certificate %s issued", record.fingerprint)
    return record, certificate


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    return bool(
        certificate.issuer.dump() == ca.subject.dump()
        and certificate.authority_key_identifier == ca.key_identifier
    )


def _signer_certificate(
    key: _Key, ca_key: _Key, ca: x509.Certificate, now: datetime
) -> tuple[ReportCertificate, x509.Certificate]:
    def current() -> tuple[ReportCertificate, x509.Certificate] | None:
        for record, certificate in _usable(
            CertificateKind.SIGNER, key, now, remaining=RENEW_BEFORE
        ):
            if _issued_by(certificate, ca):
                return record, certificate
        return None

    found = current()
    if found is not None:
        return found
    with transaction.atomic():
        KeyBinding.objects.select_for_update().filter(pk=key.binding.pk).first()
        found = current()
        if found is not None:
            return found
        ca_not_after = ca["tbs_certificate"]["validity"]["not_after"].native
        certificate = _issue(
            subject=_name(SIGNER_COMMON_NAME),
            public=key.public,
            issuer=ca.subject,
            issuer_key_id=ca.key_identifier,
            not_before=now - BACKDATE,
            not_after=min(now + SIGNER_LIFETIME, ca_not_after),
            ca=False,
            sign=ca_key.sign,
        )
        _check_issued_by(certificate, ca)
        record = _store(CertificateKind.SIGNER, key, certificate)
    logger.info("report signer certificate %s issued", record.fingerprint)
    return record, certificate


def report_authority() -> Authority:
    """The report-signing chain, made on first need and renewed as it nears its end.

    Creates the report CA and report signer keys in ``VAULT_REPORT_SIGNING_BACKEND`` (default:
    ``VAULT_SIGNING_BACKEND``) if they do not exist; issues a self-signed CA certificate (ten
    years) and a signer certificate issued by it (two years, renewed 30 days before its end,
    and whenever either key was rotated). Concurrent callers settle on the same certificates.
    The private keys never leave the backend: only certificates are stored.

    Raises:
        ReportSigningUnavailable: no backend that signs is configured, it did not answer
            (``transient``), or one of the keys is suspended.
        ReportSigningError: the backend produced a certificate signature that does not verify.
    """
    with _unavailable_on_backend_errors():
        now = timezone.now().astimezone(UTC).replace(microsecond=0)
        ca_key = _current_key(KeyRole.REPORT_CA)
        signer_key = _current_key(KeyRole.REPORT_SIGNING)
        ca_record, ca = _ca_certificate(ca_key, now)
        signer_record, signer = _signer_certificate(signer_key, ca_key, ca, now)
    return Authority(
        ca=ca_record,
        signer=signer_record,
        ca_certificate=ca,
        signer_certificate=signer,
        signer_binding=signer_key.binding,
    )


def ca_certificate_pem() -> str:
    """The report CA certificate (PEM), what assessors trust to verify reports and packs.

    Raises:
        ReportSigningUnavailable, ReportSigningError: as ``report_authority``.
    """
    return report_authority().ca_pem


# -- signing --------------------------------------------------------------------------------------


def _sign_as(authority: Authority, data: bytes) -> bytes:
    """Sign with the signer key version that ``authority``'s signer certificate names, and
    check the signature under that certificate before handing it out."""
    with _unavailable_on_backend_errors():
        binding = authority.signer_binding
        backend = key_backend(binding.backend_alias)
        ref, signature = backend.sign(binding.key_id, data)
    if ref.version != authority.signer.key_version:
        raise ReportSigningUnavailable(
            "the report signing key was rotated while signing; try again", transient=True
        )
    public = cx509.load_der_x509_certificate(authority.signer_certificate.dump()).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ReportSigningError("the report signer certificate does not hold an EC key")
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise ReportSigningError("the key backend made a signature that does not verify") from exc
    return signature


def sign_detached(data: bytes, *, authority: Authority | None = None) -> bytes:
    """A detached DER ECDSA P-256/SHA-256 signature over ``data`` by the report signer key.

    It verifies under the public key of ``authority.signer_pem`` (pass the authority whose
    certificates go out with the signature; by default ``report_authority()``).

    Raises:
        ReportSigningUnavailable: no backend can sign now (see ``report_authority``).
        ReportSigningError: the backend's signature did not verify.
    """
    return _sign_as(authority or report_authority(), bytes(data))


class BackendPdfSigner(signers.Signer):
    """A pyHanko signer whose raw signatures come from the report signer key's backend: pyHanko
    never sees the private key (ECDSA P-256 with SHA-256 only)."""

    def __init__(self, authority: Authority) -> None:
        super().__init__(
            signing_cert=authority.signer_certificate,
            cert_registry=SimpleCertificateStore.from_certs([authority.ca_certificate]),
            signature_mechanism=SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            embed_roots=True,
        )
        self._authority = authority

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        """Sign pyHanko's signed attributes through the backend (a placeholder on dry runs)."""
        if digest_algorithm.lower() != "sha256":
            raise SigningError(f"report signing uses SHA-256, not {digest_algorithm}")
        if dry_run:
            return bytes(ECDSA_P256_MAX_DER)
        return _sign_as(self._authority, data)


def sign_pdf(pdf: bytes, *, authority: Authority | None = None) -> bytes:
    """``pdf`` with a PAdES B-B signature by the report signer, covering the whole file.

    The signature is an incremental update holding an invisible signature field; its CMS
    carries the signer certificate and the CA certificate. It validates against the CA
    certificate as trust root until the signer certificate expires. Call it from synchronous
    code (a task, a command, a sync view): pyHanko runs its own event loop.

    Raises:
        ReportSigningUnavailable: no backend can sign now (see ``report_authority``).
        ReportSigningError: ``pdf`` is not a PDF pyHanko can extend, or the backend's signature
            did not verify.
    """
    authority = authority or report_authority()
    pdf_signer = signers.PdfSigner(
        signers.PdfSignatureMetadata(
            field_name=SIGNATURE_FIELD,
            md_algorithm="sha256",
            subfilter=fields.SigSeedSubFilter.PADES,
            reason="Ciphervault compliance report",
            name=SIGNER_COMMON_NAME,
        ),
        signer=BackendPdfSigner(authority),
    )
    try:
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        output = pdf_signer.sign_pdf(writer, output=io.BytesIO())
    except ReportSigningError:
        raise
    except (PdfError, SigningError, ValueError) as exc:
        raise ReportSigningError(f"the PDF could not be signed ({type(exc).__name__})") from exc
    return bytes(output.getvalue())
