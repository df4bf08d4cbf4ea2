"""The report-signing authority: a CA and a signer certificate made by the key backend, detached
signatures, and signed report PDFs that pyHanko validates against the CA certificate."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db.models import Q
from django.utils import timezone
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from compliance import signing
from compliance.models import CertificateKind, ReportCertificate
from compliance.pdf import render_pdf
from compliance.signing import (
    CA_COMMON_NAME,
    SIGNER_COMMON_NAME,
    ReportSigningError,
    ReportSigningUnavailable,
    ca_certificate_pem,
    report_authority,
    sign_detached,
    sign_pdf,
)
from kms_plugins.testing import BackendHarness
from kms_plugins.types import KeyPurpose
from tests.compliance.test_pdf import ATTACHMENTS, embedded_files, pdftotext, sample_report
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend

pytestmark = pytest.mark.django_db


def load(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode("ascii"))


def validate(pdf: bytes, trust_pem: str) -> PdfSignatureStatus:
    """pyHanko's verdict on the PDF's only signature, trusting only ``trust_pem``."""
    reader = PdfFileReader(BytesIO(pdf))
    (embedded,) = reader.embedded_signatures
    trust = asn1_x509.Certificate.load(pem.unarmor(trust_pem.encode("ascii"))[2])
    context = ValidationContext(trust_roots=[trust], allow_fetching=False)
    return validate_pdf_signature(embedded, context)


@pytest.fixture(scope="module")
def report_pdf() -> bytes:
    return render_pdf(sample_report(), ATTACHMENTS)


# -- the chain -------------------------------------------------------------------------------------


def test_it_issues_a_self_signed_ca_and_a_signer_certificate_issued_by_it(settings: Any) -> None:
    authority = report_authority()
    ca, signer = load(authority.ca_pem), load(authority.signer_pem)

    ca.verify_directly_issued_by(ca)  # self-signed
    signer.verify_directly_issued_by(ca)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(signer.signature_hash_algorithm, hashes.SHA256)
    for certificate in (ca, signer):
        public = certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"

    organization = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert organization == settings.VAULT_AUDIT_ORIGIN
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CA_COMMON_NAME
    assert signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        SIGNER_COMMON_NAME
    )
    assert signer.issuer == ca.subject

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.content_commitment  # nonRepudiation
    assert not usage.key_cert_sign
    aki = signer.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    now = datetime.now(UTC)
    assert ca.not_valid_before_utc <= now < ca.not_valid_after_utc
    assert ca.not_valid_after_utc - now > timedelta(days=3640)
    assert timedelta(days=720) < signer.not_valid_after_utc - now <= timedelta(days=731)


def test_it_stores_only_certificates_and_the_keys_stay_in_the_backend() -> None:
    authority = report_authority()
    for role, record in (
        (KeyRole.REPORT_CA, authority.ca),
        (KeyRole.REPORT_SIGNING, authority.signer),
    ):
        binding = KeyBinding.objects.get(tenant__isnull=True, role=role)
        assert record.binding_id == binding.pk
        backend = key_backend(binding.backend_alias)
        info = backend.describe(binding.key_id).version(record.key_version)
        # The backend holds a signing key pair; the vault's row names it and pins it.
        assert info is not None
        assert info.purpose == KeyPurpose.SIGN
        assert (info.algorithm, info.size) == ("EC", 256)
        assert info.fingerprint == binding.fingerprint
        # The stored PEM is one certificate, and its key is the backend's public key.
        assert pem.detect(record.pem.encode("ascii"))
        kind, _, der = pem.unarmor(record.pem.encode("ascii"))
        assert kind == "CERTIFICATE"
        assert record.fingerprint == hashlib.sha256(der).hexdigest()
        public = (
            load(record.pem)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        assert public == backend.public_key(info.ref)
    # Nothing that looks like key material anywhere in the rows.
    for text in ReportCertificate.objects.values_list("pem", flat=True):
        assert "PRIVATE" not in text
        assert text.count("BEGIN ") == 1
    for fields in KeyBinding.objects.values_list("key_id", "fingerprint"):
        assert not any("PRIVATE" in value for value in fields)


def test_it_keeps_one_chain_across_calls() -> None:
    first = report_authority()
    second = report_authority()
    assert (second.ca.pk, second.signer.pk) == (first.ca.pk, first.signer.pk)
    assert ca_certificate_pem() == first.ca_pem
    assert ReportCertificate.objects.filter(kind=CertificateKind.CA).count() == 1
    assert ReportCertificate.objects.filter(kind=CertificateKind.SIGNER).count() == 1
    assert (
        KeyBinding.objects.filter(
            Q(role=KeyRole.REPORT_CA) | Q(role=KeyRole.REPORT_SIGNING), tenant__isnull=True
        ).count()
        == 2
    )


def test_it_renews_the_signer_certificate_30_days_before_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = report_authority()
    later = timezone.now() + timedelta(days=730 - 29)
    monkeypatch.setattr(signing.timezone, "now", lambda: later)
    renewed = report_authority()
    assert renewed.ca.pk == first.ca.pk
    assert renewed.signer.pk != first.signer.pk
    load(renewed.signer_pem).verify_directly_issued_by(load(first.ca_pem))
    assert renewed.signer.not_after > first.signer.not_after


def test_a_rotated_signer_key_gets_a_new_certificate() -> None:
    first = report_authority()
    binding = first.signer_binding
    key_backend(binding.backend_alias).rotate(binding.key_id)
    after = report_authority()
    assert after.signer.pk != first.signer.pk
    assert (first.signer.key_version, after.signer.key_version) == (1, 2)
    signature = sign_detached(b"manifest")
    public = load(after.signer_pem).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"manifest", ec.ECDSA(hashes.SHA256()))


def test_it_ignores_a_stored_certificate_that_names_another_key() -> None:
    first = report_authority()
    # Someone with database access swaps in a certificate for a key of their own.
    own = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(own.public_key())
        .serial_number(1)
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=3650))
        .sign(own, hashes.SHA256())
    )
    ReportCertificate.objects.filter(pk=first.ca.pk).update(
        pem=forged.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    after = report_authority()
    assert after.ca.pk != first.ca.pk
    load(after.signer_pem).verify_directly_issued_by(load(after.ca_pem))


def test_a_caller_that_lost_the_race_uses_the_winners_certificates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    winner = report_authority()
    # The loser looked before the winner committed: its first look at each kind finds nothing,
    # and it goes on to issue under the key binding's row lock, where it looks again.
    real = signing._usable
    looked: set[str] = set()

    def stale_first_look(kind: str, *args: Any, **kwargs: Any) -> Any:
        if kind not in looked:
            looked.add(kind)
            return []
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(signing, "_usable", stale_first_look)
    loser = report_authority()
    assert looked == {CertificateKind.CA, CertificateKind.SIGNER}
    assert (loser.ca.pk, loser.signer.pk) == (winner.ca.pk, winner.signer.pk)
    assert ReportCertificate.objects.count() == 2


# -- detached signatures ---------------------------------------------------------------------------


def test_a_detached_signature_verifies_under_the_signer_certificate() -> None:
    data = b'{"format":"ciphervault-evidence-pack/1"}'
    authority = report_authority()
    signature = sign_detached(data, authority=authority)
    public = load(authority.signer_pem).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(signature, data + b" ", ec.ECDSA(hashes.SHA256()))


# -- signed PDFs -----------------------------------------------------------------------------------


def test_a_signed_report_validates_against_the_ca_certificate(report_pdf: bytes) -> None:
    signed = sign_pdf(report_pdf)
    status = validate(signed, ca_certificate_pem())
    assert status.intact
    assert status.valid
    assert status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert status.bottom_line
    assert status.md_algorithm == "sha256"
    signer_name = status.signing_cert.subject.native["common_name"]
    assert signer_name == SIGNER_COMMON_NAME
    # Signing added a revision; the report, its text and its attachments are all still there.
    assert signed.startswith(report_pdf)
    assert "KEY-001" in pdftotext(signed)
    assert embedded_files(signed) == ATTACHMENTS


def test_a_report_changed_after_signing_fails_validation(report_pdf: bytes) -> None:
    signed = sign_pdf(report_pdf)
    # Change one byte of the signed revision in place: in the binary comment after the header,
    # so the file still parses and only the signature can tell.
    at = signed.index(b"\n") + 2
    tampered = signed[:at] + bytes([signed[at] ^ 0x01]) + signed[at + 1 :]
    status = validate(tampered, ca_certificate_pem())
    assert not status.intact
    assert not status.bottom_line


def test_a_report_is_not_trusted_under_another_ca(report_pdf: bytes) -> None:
    signed = sign_pdf(report_pdf)
    own = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    other = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(own.public_key())
        .serial_number(7)
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(own, hashes.SHA256())
    )
    status = validate(signed, other.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    assert status.intact
    assert not status.trusted
    assert not status.bottom_line


def test_it_refuses_to_sign_something_that_is_not_a_pdf() -> None:
    with pytest.raises(ReportSigningError) as caught:
        sign_pdf(b"%PDF-1.7\nnot really\n")
    assert caught.value.code == "report_signing_error"


# -- when nothing can sign -------------------------------------------------------------------------


def test_without_a_signing_backend_reports_cannot_be_signed(settings: Any) -> None:
    settings.VAULT_SIGNING_BACKEND = ""
    settings.VAULT_REPORT_SIGNING_BACKEND = ""
    with pytest.raises(ReportSigningUnavailable) as caught:
        report_authority()
    assert caught.value.code == "report_signing_unavailable"
    assert caught.value.transient is False
    assert isinstance(caught.value, ReportSigningError)


def test_a_backend_that_does_not_answer_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch, report_pdf: bytes
) -> None:
    authority = report_authority()
    backend = key_backend(authority.signer_binding.backend_alias)

    def unreachable(*args: Any) -> Any:
        raise ConnectionRefusedError("no answer")

    monkeypatch.setattr(backend, "_sign", unreachable)
    for attempt in (lambda: sign_detached(b"x"), lambda: sign_pdf(report_pdf)):
        with pytest.raises(ReportSigningUnavailable) as caught:
            attempt()
        assert caught.value.code == "report_signing_unavailable"
        assert caught.value.transient is True


def test_a_suspended_report_key_signs_nothing() -> None:
    authority = report_authority()
    KeyBinding.objects.filter(pk=authority.signer_binding.pk).update(
        suspended_at=timezone.now(), suspended_reason="fingerprint changed"
    )
    with pytest.raises(ReportSigningUnavailable, match="suspended"):
        report_authority()


# -- a real HSM: SoftHSM2 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendHarness]:
    module = importlib.import_module("kms_plugins.testing.softhsm")
    reason = module.available()
    if reason is not None:
        pytest.skip(f"[softhsm] {reason}")
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(module.session_harness(tmp_path_factory.mktemp("report-hsm")))


@pytest.mark.softhsm
def test_a_report_signed_with_keys_in_softhsm_validates(
    softhsm: BackendHarness, settings: Any, report_pdf: bytes, tmp_path: Path
) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "hsm": {"BACKEND": "pkcs11", "OPTIONS": dict(softhsm.backend._options)},
    }
    settings.VAULT_REPORT_SIGNING_BACKEND = "hsm"
    authority = report_authority()
    for record in (authority.ca, authority.signer):
        binding = record.binding
        assert (binding.backend_alias, binding.backend_kind) == ("hsm", "pkcs11")
        info = key_backend("hsm").describe(binding.key_id).version(record.key_version)
        assert info is not None
        # The token made the keys and will not hand them out.
        assert not info.extractable
        assert info.sensitive
        assert info.generated_in_backend
    load(authority.signer_pem).verify_directly_issued_by(load(authority.ca_pem))

    signed = sign_pdf(report_pdf, authority=authority)
    status = validate(signed, authority.ca_pem)
    assert status.intact
    assert status.valid
    assert status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    (tmp_path / "signed.pdf").write_bytes(signed)
