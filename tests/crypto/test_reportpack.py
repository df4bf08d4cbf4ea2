"""Evidence packs: built with real P-256 keys and X.509 certificates around a real audit log,
verified offline, and every tampering caught by the check meant for it (each test names the
problem it expects, so removing a check makes its test fail).

The helpers above the tests are also used by ``tests/client/test_report_verify.py``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.crypto.audit_helpers import ORIGIN, Log, event, new_signer
from vault.crypto.canonical import canonical_json
from vault.crypto.checkpoint import CheckpointKey
from vault.crypto.reportpack import (
    CA_PATH,
    MANIFEST_PATH,
    PACK_FORMAT,
    PROOFS_PATH,
    SIGNATURE_PATH,
    SIGNER_PATH,
    VERIFY_PATH,
    InvalidPackParameters,
    PackError,
    PackFormatError,
    PackManifestError,
    PackNameError,
    PackReport,
    PackSigningFailed,
    PackTooLarge,
    build_audit_proofs,
    build_pack,
    certificate_fingerprint,
    report_digests,
    verify_pack,
)

CREATED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TENANT = "acme"
RUN = "0b6f3c1e-7a4d-4c1b-9e2f-5d8a1c3b7e90"
EVIDENCE = canonical_json({"check": "KEY-001", "keys": [{"id": "k1", "rotated": True}]})
EVIDENCE_PATH = f"evidence/{hashlib.sha256(EVIDENCE).hexdigest()}.json"


# --------------------------------------------------------------------------------------------
# Helpers: a report-signing PKI, an audit log, packs and raw ZIPs


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ciphervault test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _usage(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    """A report CA and a report signer, as the server keeps them (keys here in memory)."""

    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey
    signer: x509.Certificate

    @property
    def ca_pem(self) -> bytes:
        return _pem(self.ca)

    @property
    def signer_pem(self) -> bytes:
        return _pem(self.signer)

    def sign(self, message: bytes) -> bytes:
        return self.signer_key.sign(message, ec.ECDSA(hashes.SHA256()))


def new_ca(
    name: str = "Ciphervault report CA", *, is_ca: bool = True
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CREATED - timedelta(days=365))
        .not_valid_after(CREATED + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
        .add_extension(_usage(cert_sign=is_ca, sign=not is_ca), critical=True)
    )
    return key, builder.sign(key, hashes.SHA256())


def new_signer_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    *,
    name: str = "Ciphervault report signer",
    digital_signature: bool = True,
    not_before: datetime = CREATED - timedelta(days=30),
    not_after: datetime = CREATED + timedelta(days=700),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=digital_signature), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def new_pki(ca_name: str = "Ciphervault report CA") -> Pki:
    ca_key, ca = new_ca(ca_name)
    signer_key, signer = new_signer_certificate(ca_key, ca)
    return Pki(ca_key, ca, signer_key, signer)


@dataclass
class Audit:
    """A tenant's audit log with a run's start and end checkpoints and its anchor event."""

    log: Log
    start: bytes
    end: bytes
    anchor: int
    saved: list[CheckpointKey] = field(default_factory=list)

    @property
    def key(self) -> CheckpointKey:
        return self.log.key

    def proofs(self, **changes: Any) -> bytes:
        """``audit/proofs.json`` as ``build_audit_proofs`` writes it, with ``changes`` applied
        to the parsed document."""
        data = build_audit_proofs(
            origin=self.log.origin,
            keys=[self.log.key],
            start=self.start,
            end=self.end,
            tree=self.log.tree,
            anchors=[(self.anchor, self.log.leaves[self.anchor])],
        )
        if not changes:
            return data
        document = json.loads(data)
        document.update(changes)
        return canonical_json(document)


EVIDENCE_DIGEST = hashlib.sha256(EVIDENCE).hexdigest()


def report_document(**changes: Any) -> dict[str, Any]:
    """A report of run RUN with one result whose evidence is the pack's evidence file."""
    document: dict[str, Any] = {
        "format": "ciphervault-compliance-report/1",
        "tenant": {"slug": TENANT, "name": "Acme"},
        "run": {"id": RUN},
        "requirements": [
            {
                "ref": "3.7.4",
                "finding": "IN_PLACE",
                "narrative": "In place: 1 passing result(s).",
                "compensating_control_used": False,
                "guardrails": [],
                "attestations": [],
            }
        ],
        "integrity": {"audit_verified": True, "leaves": 11},
        "evidence": [{"ref": "E-0001", "sha256": EVIDENCE_DIGEST}],
        "results": [
            {
                "finding_id": "f" * 64,
                "check": "KEY-008",
                "check_version": "1.0.0",
                "status": "PASS",
                "detail": "The key is younger than its cryptoperiod.",
                "evidence": ["E-0001"],
            }
        ],
    }
    document.update(changes)
    return document


def anchor_details() -> dict[str, Any]:
    """What the run's compliance.evidence event records (compliance/engine.py)."""
    results, findings = report_digests(report_document())
    return {
        "run": RUN,
        "evidence": [EVIDENCE_DIGEST],
        "results_sha256": results,
        "findings_sha256": findings,
        "integrity": {"ok": True, "leaves": 11},
    }


def new_audit() -> Audit:
    """Checkpoints at sizes 4 (the run's start) and 11 (its end); the anchor event at 8."""
    log = Log(*new_signer())
    log.add_events(4)
    start = log.checkpoint()
    log.add_events(4)
    anchor = len(log.leaves)
    log.add(event(anchor, type="compliance.evidence", details=anchor_details()))
    log.add_events(2)
    end = log.checkpoint()
    return Audit(log, start, end, anchor)


def pack_files(audit: Audit, changes: Mapping[str, bytes | None] | None = None) -> dict[str, bytes]:
    """The files a pack holds besides what ``build_pack`` adds, with ``changes`` (None:
    removed)."""
    files: dict[str, bytes] = {
        "reports/report.json": canonical_json(report_document()),
        "reports/report.csv": b"requirement,check,resource\r\n3.7.4,KEY-008,k1\r\n",
        "reports/report.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 64,
        EVIDENCE_PATH: EVIDENCE,
        PROOFS_PATH: audit.proofs(),
    }
    for path, content in (changes or {}).items():
        if content is None:
            files.pop(path, None)
        else:
            files[path] = content
    return files


def make_pack(pki: Pki, audit: Audit, files: Mapping[str, bytes] | None = None) -> bytes:
    return build_pack(
        pack_files(audit) if files is None else files,
        tenant=TENANT,
        run=RUN,
        created_at=CREATED,
        sign=pki.sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
    )


def members(pack: bytes) -> dict[str, bytes]:
    """The pack's members, in ZIP order."""
    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(
    pack: bytes,
    *,
    replace: Mapping[str, bytes] | None = None,
    add: Mapping[str, bytes] | None = None,
    remove: tuple[str, ...] = (),
) -> bytes:
    """The pack's members written again as a ZIP, changed (the signature left as it was)."""
    content = members(pack)
    content.update(replace or {})
    for name in remove:
        del content[name]
    content.update(add or {})
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return output.getvalue()


def forge(
    content: Mapping[str, bytes],
    *,
    signer_key: ec.EllipticCurvePrivateKey,
    manifest_changes: Mapping[str, Any] | None = None,
) -> bytes:
    """A pack written without ``build_pack``'s checks: the manifest computed over ``content``
    (every member but the manifest and signature) and signed with ``signer_key``."""
    files = {k: v for k, v in content.items() if k not in (MANIFEST_PATH, SIGNATURE_PATH)}
    manifest_value = {
        "format": PACK_FORMAT,
        "tenant": TENANT,
        "run": RUN,
        "created_at": "2025-03-01T12:00:00.000000Z",
        "files": [
            {"path": p, "sha256": hashlib.sha256(files[p]).hexdigest(), "size": len(files[p])}
            for p in sorted(files)
        ],
        "signer": {"certificate": SIGNER_PATH, "ca": CA_PATH},
    }
    manifest_value.update(manifest_changes or {})
    manifest = canonical_json(manifest_value)
    signature = signer_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_PATH, manifest)
        archive.writestr(SIGNATURE_PATH, base64.b64encode(signature) + b"\n")
        for name in sorted(files):
            archive.writestr(name, files[name])
    return output.getvalue()


@dataclass
class Raw:
    """One member of a hand-made ZIP; every field of its records can be set."""

    name: str
    data: bytes
    method: int = 8
    flags: int = 0
    crc: int | None = None
    size: int | None = None
    cd_name: str | None = None
    offset: int | None = None
    in_directory: bool = True
    after: bytes = b""
    compressed: bytes | None = None


def raw_zip(
    entries: list[Raw], *, prefix: bytes = b"", suffix: bytes = b"", comment: bytes = b""
) -> bytes:
    """A ZIP written record by record (APPNOTE 4.3), to build what ``zipfile`` would refuse."""
    out = bytearray(prefix)
    directory = bytearray()
    count = 0
    for entry in entries:
        if entry.compressed is not None:
            body = entry.compressed
        elif entry.method == 8:
            squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
            body = squeezer.compress(entry.data) + squeezer.flush()
        else:
            body = entry.data
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        size = len(entry.data) if entry.size is None else entry.size
        name = entry.name.encode("latin-1")
        offset = len(out) if entry.offset is None else entry.offset
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, entry.flags, entry.method, 0, 0x5A21, crc,
            len(body), size, len(name), 0,
        )  # fmt: skip
        out += name + body + entry.after
        if entry.in_directory:
            cd_name = name if entry.cd_name is None else entry.cd_name.encode("latin-1")
            directory += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, entry.flags, entry.method, 0,
                0x5A21, crc, len(body), size, len(cd_name), 0, 0, 0, 0, 0o100644 << 16, offset,
            )  # fmt: skip
            directory += cd_name
            count += 1
    start = len(out)
    out += directory
    out += struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), start, len(comment)
    )
    return bytes(out + comment + suffix)


def raw_members(pack: bytes) -> list[Raw]:
    return [Raw(name, data) for name, data in members(pack).items()]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


@pytest.fixture(scope="module")
def attacker() -> Pki:
    return new_pki("Ciphervault report CA")  # the same name: only the keys tell them apart


@pytest.fixture(scope="module")
def audit() -> Audit:
    return new_audit()


@pytest.fixture(scope="module")
def pack(pki: Pki, audit: Audit) -> bytes:
    return make_pack(pki, audit)


def _verify(pack: bytes, pki: Pki | None, **kwargs: Any) -> PackReport:
    return verify_pack(pack, trusted_ca_pem=pki.ca_pem if pki is not None else None, **kwargs)


def _problems(pack: bytes, pki: Pki | None, **kwargs: Any) -> list[str]:
    report = _verify(pack, pki, **kwargs)
    assert not report.verified
    return report.problems


def _refused(exc_type: type[PackError], pack: bytes, pki: Pki | None, **kwargs: Any) -> str:
    with pytest.raises(exc_type) as caught:
        _verify(pack, pki, **kwargs)
    assert type(caught.value) is exc_type
    return str(caught.value)


# --------------------------------------------------------------------------------------------
# A good pack


def test_it_verifies_a_good_pack(pack: bytes, pki: Pki, audit: Audit) -> None:
    report = _verify(pack, pki)
    assert report.problems == []
    assert (report.ok, report.anchored, report.verified) == (True, True, True)
    assert (report.tenant, report.run) == (TENANT, RUN)
    assert report.created_at == "2025-03-01T12:00:00.000000Z"
    assert report.files == 8  # five given, two certificates, VERIFY.md
    assert report.signer_subject == "CN=Ciphervault report signer,O=Ciphervault test"
    assert report.signer_fingerprint == certificate_fingerprint(pki.signer)
    assert report.ca_fingerprint == report.pack_ca_fingerprint == certificate_fingerprint(pki.ca)
    assert report.audit_origin == ORIGIN
    assert (report.audit_start_size, report.audit_end_size) == (4, 11)
    assert report.anchors == 1
    assert report.anchor_events == (str(uuid.UUID(int=audit.anchor + 1)),)
    assert report.audit_keys_saved is False


def test_it_writes_the_documented_members_in_a_fixed_order(pack: bytes, pki: Pki) -> None:
    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
    assert [i.filename for i in infos] == [
        MANIFEST_PATH,
        SIGNATURE_PATH,
        VERIFY_PATH,
        PROOFS_PATH,
        CA_PATH,
        SIGNER_PATH,
        EVIDENCE_PATH,
        "reports/report.csv",
        "reports/report.json",
        "reports/report.pdf",
    ]
    assert {i.date_time for i in infos} == {(2025, 3, 1, 12, 0, 0)}
    assert {(i.create_system, i.external_attr >> 16, i.flag_bits) for i in infos} == {
        (3, 0o100644, 0)
    }
    assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
    content = members(pack)
    assert content[CA_PATH] == pki.ca_pem
    assert content[SIGNER_PATH] == pki.signer_pem


def test_it_writes_a_canonical_manifest_signed_by_the_signer(pack: bytes, pki: Pki) -> None:
    content = members(pack)
    manifest = content[MANIFEST_PATH]
    document = json.loads(manifest)
    assert canonical_json(document) == manifest
    assert document["format"] == PACK_FORMAT
    assert (document["tenant"], document["run"]) == (TENANT, RUN)
    assert document["created_at"] == "2025-03-01T12:00:00.000000Z"
    assert document["signer"] == {"certificate": SIGNER_PATH, "ca": CA_PATH}
    listed = {f["path"]: f for f in document["files"]}
    assert set(listed) == set(content) - {MANIFEST_PATH, SIGNATURE_PATH}
    assert [f["path"] for f in document["files"]] == sorted(listed)
    for path, entry in listed.items():
        assert entry == {
            "path": path,
            "sha256": hashlib.sha256(content[path]).hexdigest(),
            "size": len(content[path]),
        }
    signature_file = content[SIGNATURE_PATH]
    assert signature_file.endswith(b"\n")
    signature = base64.b64decode(signature_file[:-1], validate=True)
    pki.signer_key.public_key().verify(signature, manifest, ec.ECDSA(hashes.SHA256()))


def test_it_builds_the_same_bytes_from_the_same_input(pki: Pki, audit: Audit) -> None:
    # ECDSA signatures are randomized: the same signature each time shows the rest is fixed.
    sign = _fixed_signature(pki)
    first = build_pack(
        pack_files(audit),
        tenant=TENANT,
        run=RUN,
        created_at=CREATED,
        sign=sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
    )
    again = build_pack(
        dict(reversed(pack_files(audit).items())),
        tenant=TENANT,
        run=RUN,
        created_at=CREATED.astimezone(timezone(timedelta(hours=2))),
        sign=sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
    )
    assert first == again


def _fixed_signature(pki: Pki) -> Callable[[bytes], bytes]:
    signatures: dict[bytes, bytes] = {}

    def sign(message: bytes) -> bytes:
        if message not in signatures:
            signatures[message] = pki.sign(message)
        return signatures[message]

    return sign


def test_it_writes_verify_instructions_for_this_pack(pack: bytes, pki: Pki) -> None:
    text = members(pack)[VERIFY_PATH].decode("utf-8")
    assert TENANT in text
    assert RUN in text
    assert certificate_fingerprint(pki.ca) in text
    assert f"-attime {int(CREATED.timestamp())}" in text
    assert "cvault report verify" in text
    assert "sha256sum --check" in text
    assert "openssl dgst -sha256 -verify" in text


def test_it_takes_the_verify_text_it_is_given(pki: Pki, audit: Audit) -> None:
    pack = build_pack(
        pack_files(audit),
        tenant=TENANT,
        run=RUN,
        created_at=CREATED,
        sign=pki.sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
        verify_text="# Check it\n",
    )
    assert members(pack)[VERIFY_PATH] == b"# Check it\n"
    assert _verify(pack, pki).verified


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("unzip", "sha256sum", "openssl", "jq", "bash")),
    reason="[tools] unzip, sha256sum, openssl and jq are needed to follow VERIFY.md by hand",
)
def test_the_by_hand_instructions_of_verify_md_work(pack: bytes, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "evidence-pack.zip").write_bytes(pack)
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    text = members(pack)[VERIFY_PATH].decode("utf-8")
    blocks = [line[4:] for line in text.splitlines() if line.startswith("    ")]
    script = "\n".join(
        line.strip() for line in blocks if not line.strip().startswith("cvault")
    ).replace("CA=~/.config/cvault/trust/report-ca.pem", f"CA={tmp_path / 'ca.pem'}")
    script = script.replace("\\\n", " ")
    lines = [
        line
        for line in script.splitlines()
        if line and not all(c in "0123456789abcdefABCDEF:" for c in line)
    ]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same files" in done.stdout
    assert "reports/report.pdf: OK" in done.stdout
    assert "certificates/report-signer.pem: OK" in done.stdout
    assert "Digital Signature" in done.stdout
    assert done.stdout.rstrip().endswith("Verified OK")


def test_it_imports_without_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import vault.crypto.reportpack\n"
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules"
        " if sys.modules[m] is not None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# Unanchored


def test_without_a_trusted_ca_it_checks_everything_else_but_is_unanchored(
    pack: bytes, pki: Pki
) -> None:
    report = _verify(pack, None)
    assert (report.ok, report.anchored, report.verified) == (True, False, False)
    assert report.ca_fingerprint == certificate_fingerprint(pki.ca)  # the pack's own copy


def test_without_a_trusted_ca_a_tampered_pack_still_fails(pack: bytes) -> None:
    edited = rezip(pack, replace={"reports/report.csv": b"requirement\r\n"})
    report = _verify(edited, None)
    assert report.ok is False
    assert report.anchored is False


# --------------------------------------------------------------------------------------------
# Tampering with files and the manifest


def test_it_catches_an_edited_file(pack: bytes, pki: Pki) -> None:
    original = members(pack)["reports/report.json"]
    same_size = original.replace(b"report/1", b"report/2")
    assert len(same_size) == len(original)
    problems = _problems(rezip(pack, replace={"reports/report.json": same_size}), pki)
    assert problems == ["reports/report.json: its SHA-256 does not match the manifest's"]


def test_it_catches_a_file_of_another_size(pack: bytes, pki: Pki) -> None:
    size = len(members(pack)["reports/report.csv"])
    problems = _problems(rezip(pack, replace={"reports/report.csv": b"x"}), pki)
    assert problems == [f"reports/report.csv: 1 bytes, but the manifest says {size}"]


def test_it_catches_an_added_file(pack: bytes, pki: Pki) -> None:
    problems = _problems(rezip(pack, add={"evidence/extra.json": b"{}"}), pki)
    assert problems == ["evidence/extra.json: in the pack but not in the manifest"]


def test_it_catches_a_removed_file(pack: bytes, pki: Pki) -> None:
    problems = _problems(rezip(pack, remove=(EVIDENCE_PATH,)), pki)
    assert problems == [f"{EVIDENCE_PATH}: in the manifest but not in the pack"]


def test_it_catches_a_removed_signature(pack: bytes, pki: Pki) -> None:
    problems = _problems(rezip(pack, remove=(SIGNATURE_PATH,)), pki)
    assert problems == ["manifest.sig: missing: the manifest is not signed"]


def _manifest(pack: bytes) -> dict[str, Any]:
    return json.loads(members(pack)[MANIFEST_PATH])


def test_it_catches_an_edited_manifest(pack: bytes, pki: Pki) -> None:
    document = _manifest(pack)
    document["tenant"] = "another"
    problems = _problems(rezip(pack, replace={MANIFEST_PATH: canonical_json(document)}), pki)
    assert problems == [
        "manifest.sig: does not verify over manifest.json under the signer certificate's key "
        "(the manifest was changed, or signed by another key)"
    ]


def test_it_catches_a_file_edited_along_with_its_manifest_entry(pack: bytes, pki: Pki) -> None:
    forged = b"requirement,check,resource\r\n3.7.4,KEY-008,ALL GOOD\r\n"
    document = _manifest(pack)
    for entry in document["files"]:
        if entry["path"] == "reports/report.csv":
            entry.update(sha256=hashlib.sha256(forged).hexdigest(), size=len(forged))
    edited = rezip(
        pack,
        replace={MANIFEST_PATH: canonical_json(document), "reports/report.csv": forged},
    )
    assert _problems(edited, pki) == [
        "manifest.sig: does not verify over manifest.json under the signer certificate's key "
        "(the manifest was changed, or signed by another key)"
    ]


def test_it_catches_an_evidence_file_not_named_by_its_digest(pki: Pki, audit: Audit) -> None:
    files = pack_files(audit)
    wrong = "evidence/" + "0" * 64 + ".json"
    files[wrong] = files.pop(EVIDENCE_PATH)
    problems = _problems(make_pack(pki, audit, files), pki)
    assert problems == [f"{wrong}: the manifest's SHA-256 is not the one it is named by"]


# --------------------------------------------------------------------------------------------
# Signatures and certificates


def test_it_catches_a_pack_re_signed_by_another_chain(
    pack: bytes, pki: Pki, attacker: Pki, audit: Audit
) -> None:
    files = pack_files(audit, {"reports/report.csv": b"requirement\r\n3.7.4,KEY-008,PASS\r\n"})
    forged = make_pack(attacker, audit, files)
    # Consistent in itself, so without trust it looks fine: only the trusted CA tells.
    assert _verify(forged, None).ok
    problems = _problems(forged, pki)
    assert problems == [
        f"{SIGNER_PATH}: not issued by the trusted report CA (SHA-256 "
        f"{certificate_fingerprint(pki.ca)}): its issuer or signature does not match"
    ]


def test_it_catches_the_manifest_re_signed_by_another_key_beside_the_real_certificates(
    pack: bytes, attacker: Pki, pki: Pki
) -> None:
    content = members(pack)
    content["reports/report.csv"] = b"requirement\r\n"
    forged = forge(content, signer_key=attacker.signer_key)
    assert _problems(forged, pki) == [
        "manifest.sig: does not verify over manifest.json under the signer certificate's key "
        "(the manifest was changed, or signed by another key)"
    ]


def test_it_catches_a_signer_the_trusted_ca_did_not_issue(pack: bytes, attacker: Pki) -> None:
    problems = _problems(pack, attacker)
    assert problems == [
        f"{SIGNER_PATH}: not issued by the trusted report CA (SHA-256 "
        f"{certificate_fingerprint(attacker.ca)}): its issuer or signature does not match"
    ]


def test_it_catches_a_signer_certificate_swapped_for_one_of_the_same_ca(
    pack: bytes, pki: Pki
) -> None:
    _, other = new_signer_certificate(pki.ca_key, pki.ca)
    content = members(pack)
    content[SIGNER_PATH] = _pem(other)
    problems = _problems(forge(content, signer_key=pki.signer_key), pki)
    assert problems == [
        "manifest.sig: does not verify over manifest.json under the signer certificate's key "
        "(the manifest was changed, or signed by another key)"
    ]


def _with_signer(pack: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    content = members(pack)
    content[SIGNER_PATH] = _pem(cert)
    return forge(content, signer_key=key)


def test_it_catches_a_signer_without_digital_signature(pack: bytes, pki: Pki) -> None:
    key, cert = new_signer_certificate(pki.ca_key, pki.ca, digital_signature=False)
    problems = _problems(_with_signer(pack, key, cert), pki)
    assert problems == [f"{SIGNER_PATH}: its key usage does not include digitalSignature"]


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (CREATED - timedelta(days=800), CREATED - timedelta(seconds=1)),
        (CREATED + timedelta(seconds=1), CREATED + timedelta(days=800)),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_it_catches_a_signer_not_valid_at_created_at(
    pack: bytes, pki: Pki, not_before: datetime, not_after: datetime
) -> None:
    key, cert = new_signer_certificate(
        pki.ca_key, pki.ca, not_before=not_before, not_after=not_after
    )
    problems = _problems(_with_signer(pack, key, cert), pki)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{SIGNER_PATH}: not valid at the manifest's created_at 2025-03-01T12:00:00.000000Z"
    )


def test_it_catches_a_trusted_certificate_that_is_not_a_ca(pack: bytes, pki: Pki) -> None:
    report = verify_pack(pack, trusted_ca_pem=pki.signer_pem)
    assert not report.ok
    assert "the trusted report CA: not a CA certificate (no basicConstraints with CA true)" in (
        report.problems
    )
    assert "the trusted report CA: its key usage does not allow keyCertSign" in report.problems


def test_it_catches_a_pack_whose_own_ca_copy_is_not_a_ca(pack: bytes) -> None:
    key, not_ca = new_ca("Ciphervault report CA", is_ca=False)
    signer_key, signer = new_signer_certificate(key, not_ca)
    content = members(pack)
    content[CA_PATH] = _pem(not_ca)
    content[SIGNER_PATH] = _pem(signer)
    problems = _problems(forge(content, signer_key=signer_key), None)
    assert f"the pack's {CA_PATH}: not a CA certificate (no basicConstraints with CA true)" in (
        problems
    )


@pytest.mark.parametrize(
    ("signature_file", "expected"),
    [
        (b"not base64!\n", "manifest.sig: not canonical base64 of a signature"),
        (b"", None),
        (b"QUJD\n", None),
        (b"QUJD\n\n", "manifest.sig: not canonical base64 of a signature"),
    ],
    ids=["not-base64", "empty", "not-der", "two-newlines"],
)
def test_it_catches_a_malformed_signature_file(
    pack: bytes, pki: Pki, signature_file: bytes, expected: str | None
) -> None:
    problems = _problems(rezip(pack, replace={SIGNATURE_PATH: signature_file}), pki)
    assert problems == [
        expected
        or "manifest.sig: does not verify over manifest.json under the signer certificate's key "
        "(the manifest was changed, or signed by another key)"
    ]


def test_it_refuses_a_ber_encoded_signature(pack: bytes, pki: Pki) -> None:
    content = members(pack)
    der = base64.b64decode(content[SIGNATURE_PATH])
    # The same signature with a non-minimal (long form) outer length: valid BER, not DER.
    ber = b"\x30\x81" + der[1:2] + der[2:]
    assert der[1] < 0x80
    problems = _problems(rezip(pack, replace={SIGNATURE_PATH: base64.b64encode(ber)}), pki)
    assert problems[0].startswith("manifest.sig: does not verify")


def test_it_accepts_a_signature_file_without_a_final_newline(pack: bytes, pki: Pki) -> None:
    signature = members(pack)[SIGNATURE_PATH].rstrip(b"\n")
    assert _verify(rezip(pack, replace={SIGNATURE_PATH: signature}), pki).verified


def test_it_refuses_a_certificate_file_that_is_not_one_canonical_pem(pack: bytes, pki: Pki) -> None:
    content = members(pack)
    content[SIGNER_PATH] = b"issued to the signer\n" + content[SIGNER_PATH]
    problems = _problems(forge(content, signer_key=pki.signer_key), pki)
    assert problems == [f"{SIGNER_PATH}: not exactly one certificate in standard PEM form"]
    content[SIGNER_PATH] = pki.signer_pem + pki.ca_pem
    problems = _problems(forge(content, signer_key=pki.signer_key), pki)
    assert problems == [f"{SIGNER_PATH}: 2 certificates where one was expected"]


# --------------------------------------------------------------------------------------------
# audit/proofs.json


def _with_proofs(pki: Pki, audit: Audit, proofs: bytes) -> bytes:
    """A pack built and signed by the real signer around ``proofs``: only the proof check can
    catch what is wrong in it."""
    return make_pack(pki, audit, pack_files(audit, {PROOFS_PATH: proofs}))


def _flip_hex(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


def _tampered_anchor(audit: Audit, **changes: Any) -> bytes:
    anchors = json.loads(audit.proofs())["anchors"]
    anchors[0].update(changes)
    return audit.proofs(anchors=anchors)


def test_it_catches_a_tampered_consistency_proof(pki: Pki, audit: Audit) -> None:
    # PCI-DSS 10.3.4: change detection on the audit log, carried inside the pack.
    consistency = json.loads(audit.proofs())["consistency"]
    consistency[0] = _flip_hex(consistency[0])
    problems = _problems(_with_proofs(pki, audit, audit.proofs(consistency=consistency)), pki)
    assert problems == [
        f"{PROOFS_PATH}: the end checkpoint (size 11) does not extend the start checkpoint "
        "(size 4): proof does not verify: new root mismatch"
    ]


def test_it_catches_a_tampered_inclusion_proof(pki: Pki, audit: Audit) -> None:
    # PCI-DSS 10.3.4: change detection on the audit log, carried inside the pack.
    proof = json.loads(audit.proofs())["anchors"][0]["proof"]
    proof[-1] = _flip_hex(proof[-1])
    problems = _problems(_with_proofs(pki, audit, _tampered_anchor(audit, proof=proof)), pki)
    assert problems == [
        f"{PROOFS_PATH}: anchor 0 (index 8): the event {uuid.UUID(int=9)} is not in the log at "
        "the end checkpoint (size 11): proof does not verify: root mismatch"
    ]


def test_it_catches_an_anchor_event_that_was_altered(pki: Pki, audit: Audit) -> None:
    altered = event(audit.anchor, type="compliance.evidence", details={"digests": []})
    leaf = base64.b64encode(canonical_json(altered)).decode()
    problems = _problems(_with_proofs(pki, audit, _tampered_anchor(audit, leaf=leaf)), pki)
    assert len(problems) == 1
    assert problems[0].endswith("is not in the log at the end checkpoint (size 11): proof does "
                                "not verify: root mismatch")  # fmt: skip


def test_it_catches_an_anchor_moved_to_another_index(pki: Pki, audit: Audit) -> None:
    problems = _problems(_with_proofs(pki, audit, _tampered_anchor(audit, index=7)), pki)
    assert len(problems) == 1
    assert problems[0].startswith(f"{PROOFS_PATH}: anchor 0 (index 7): the event")


def test_it_catches_an_anchor_that_is_not_a_canonical_event(pki: Pki, audit: Audit) -> None:
    leaf = base64.b64encode(b'{"v": 1}').decode()
    problems = _problems(_with_proofs(pki, audit, _tampered_anchor(audit, leaf=leaf)), pki)
    assert len(problems) == 1
    assert problems[0].startswith(f"{PROOFS_PATH}: anchor 0 (index 8): not a canonical audit")


def test_it_catches_a_checkpoint_signed_by_a_key_the_proofs_do_not_list(
    pki: Pki, audit: Audit
) -> None:
    other = Log(*new_signer())
    other.leaves, other.tree = audit.log.leaves, audit.log.tree
    end = other.sign()
    problems = _problems(_with_proofs(pki, audit, audit.proofs(end=end.decode())), pki)
    assert problems == [
        f"{PROOFS_PATH}: the end checkpoint does not verify under the keys it lists: no "
        "signature from a trusted key (audit_checkpoint_not_trusted)"
    ]


def test_it_catches_checkpoints_out_of_order(pki: Pki, audit: Audit) -> None:
    swapped = audit.proofs(start=audit.end.decode(), end=audit.start.decode(), anchors=[])
    problems = _problems(_with_proofs(pki, audit, swapped), pki)
    assert problems == [
        f"{PROOFS_PATH}: the end checkpoint (size 4) is smaller than the start checkpoint (size 11)"
    ]


def test_it_catches_proofs_for_another_origin(pki: Pki, audit: Audit) -> None:
    problems = _problems(
        _with_proofs(pki, audit, audit.proofs(origin="ciphervault.example/audit/other")), pki
    )
    assert problems[0] == (
        f"{PROOFS_PATH}: the start checkpoint does not verify under the keys it lists: the "
        "checkpoint is for another log (audit_checkpoint_origin_mismatch)"
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"keys": []}, "keys is not a list of 1 to 16 verifier keys"),
        ({"keys": ["nope"]}, "keys[0] is not a verifier key"),
        ({"consistency": ["AB" * 32]}, "consistency holds a hash that is not 64 lowercase hex"),
        ({"consistency": ["00" * 32] * 66}, "consistency has more than 65 hashes"),
        ({"anchors": [{"leaf": "", "index": 0, "proof": []}]}, "anchors[0].leaf is not"),
        ({"anchors": [{"leaf": "e30=", "index": -1, "proof": []}]}, "anchors[0].index is not"),
        ({"anchors": [{"leaf": "e30=", "index": 1}]}, "anchors[0] has the wrong members"),
        ({"start": 5}, "start is not a string"),
        ({"extra": 1}, "the document has the wrong members (unknown 'extra')"),
    ],
)
def test_it_catches_malformed_proofs(
    pki: Pki, audit: Audit, changes: dict[str, Any], expected: str
) -> None:
    problems = _problems(_with_proofs(pki, audit, audit.proofs(**changes)), pki)
    assert len(problems) == 1
    assert problems[0].startswith(f"{PROOFS_PATH}: malformed: {expected}")


@pytest.mark.parametrize(
    "raw",
    [b'{"origin": 1.5}', b'{"a":1,"a":2}', b"[]", b"\xff", b'{"origin":"x"} {}'],
    ids=["float", "duplicate", "not-object", "not-utf8", "trailing"],
)
def test_it_catches_proofs_that_are_not_strict_json(pki: Pki, audit: Audit, raw: bytes) -> None:
    problems = _problems(_with_proofs(pki, audit, raw), pki)
    assert len(problems) == 1
    assert problems[0].startswith(f"{PROOFS_PATH}: malformed:")


def test_it_checks_the_checkpoints_against_saved_audit_keys(pack: bytes, pki: Pki) -> None:
    asked: list[str] = []

    def saved_elsewhere(origin: str) -> list[CheckpointKey]:
        asked.append(origin)
        return [new_signer()[1]]

    problems = _problems(pack, pki, audit_trust=saved_elsewhere)
    assert asked == [ORIGIN]
    assert problems == [
        f"{PROOFS_PATH}: the {which} checkpoint is not signed by a key saved for {ORIGIN} "
        "(cvault trust save): no signature from a trusted key (audit_checkpoint_not_trusted)"
        for which in ("start", "end")
    ]


def test_saved_audit_keys_that_match_are_reported(pack: bytes, pki: Pki, audit: Audit) -> None:
    report = _verify(pack, pki, audit_trust=lambda origin: [audit.key])
    assert report.verified
    assert report.audit_keys_saved is True
    report = _verify(pack, pki, audit_trust=lambda origin: None)
    assert report.verified
    assert report.audit_keys_saved is False


def test_it_requires_audit_proofs_unless_told_otherwise(pki: Pki, audit: Audit) -> None:
    pack = make_pack(pki, audit, pack_files(audit, {PROOFS_PATH: None}))
    assert _problems(pack, pki) == [
        f"{PROOFS_PATH}: not in the manifest, so nothing ties the run to the tenant's audit log"
    ]
    report = _verify(pack, pki, require_proofs=False)
    assert report.verified
    assert report.audit_origin is None


def test_it_accepts_a_run_that_started_on_an_empty_log(pki: Pki) -> None:
    log = Log(*new_signer())
    start = log.checkpoint()
    log.add_events(2)
    log.add(event(2, type="compliance.evidence", details=anchor_details()))
    end = log.checkpoint()
    proofs = build_audit_proofs(
        origin=ORIGIN, keys=[log.key], start=start, end=end, tree=log.tree,
        anchors=[(2, log.leaves[2])],
    )  # fmt: skip
    assert json.loads(proofs)["consistency"] == []
    audit = Audit(log, start, end, 2)
    report = _verify(_with_proofs(pki, audit, proofs), pki)
    assert report.verified
    assert (report.audit_start_size, report.audit_end_size, report.anchors) == (0, 3, 1)
    nonempty = json.loads(proofs)
    nonempty["consistency"] = ["00" * 32]
    problems = _problems(_with_proofs(pki, audit, canonical_json(nonempty)), pki)
    assert problems == [f"{PROOFS_PATH}: a consistency proof from the empty tree must be empty"]


def test_it_refuses_to_build_proofs_that_cannot_verify(audit: Audit) -> None:
    arguments: dict[str, Any] = {
        "origin": ORIGIN,
        "keys": [audit.key],
        "start": audit.start,
        "end": audit.end,
        "tree": audit.log.tree,
        "anchors": [],
    }
    with pytest.raises(InvalidPackParameters, match="smaller than the start"):
        build_audit_proofs(**{**arguments, "start": audit.end, "end": audit.start})
    with pytest.raises(InvalidPackParameters, match="not below the end"):
        build_audit_proofs(**{**arguments, "anchors": [(11, b"{}")]})
    with pytest.raises(InvalidPackParameters, match="another origin"):
        build_audit_proofs(**{**arguments, "origin": "ciphervault.example/audit/other"})
    with pytest.raises(InvalidPackParameters, match="audit keys"):
        build_audit_proofs(**{**arguments, "keys": []})


# --------------------------------------------------------------------------------------------
# The ZIP container


def test_a_pack_written_record_by_record_verifies(pack: bytes, pki: Pki) -> None:
    assert _verify(raw_zip(raw_members(pack)), pki).verified
    stored = [Raw(e.name, e.data, method=0) for e in raw_members(pack)]
    assert _verify(raw_zip(stored), pki).verified


def test_it_refuses_what_is_not_a_zip(pki: Pki) -> None:
    assert "not a ZIP" in _refused(PackFormatError, b"PK", pki)
    assert "not a ZIP" in _refused(PackFormatError, b"%PDF-1.7\n" + b"\0" * 64, pki)


def test_it_refuses_data_after_the_zip(pack: bytes, pki: Pki) -> None:
    message = _refused(PackFormatError, pack + b"hidden", pki)
    assert "data after its end record" in message


def test_it_refuses_a_zip_comment(pack: bytes, pki: Pki) -> None:
    message = _refused(PackFormatError, raw_zip(raw_members(pack), comment=b"hi"), pki)
    assert "a comment" in message


def test_it_refuses_data_before_the_first_member(pack: bytes, pki: Pki) -> None:
    message = _refused(PackFormatError, raw_zip(raw_members(pack), prefix=b"#!/bin/sh\n"), pki)
    assert "data before it that no member owns" in message


def test_it_refuses_data_hidden_between_members(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    entries[3].after = b"a member the directory does not list"
    message = _refused(PackFormatError, raw_zip(entries), pki)
    assert f"member {entries[4].name}: data before it" in message


def test_it_refuses_a_local_member_the_directory_does_not_list(pack: bytes, pki: Pki) -> None:
    entries = [*raw_members(pack), Raw("evidence/hidden.json", b"{}", in_directory=False)]
    message = _refused(PackFormatError, raw_zip(entries), pki)
    assert "data between the last member and the central directory" in message


def test_it_refuses_overlapping_members(pack: bytes, pki: Pki) -> None:
    # A second directory entry pointing at the first member's bytes (the overlapping-files bomb).
    entries = [*raw_members(pack), Raw("evidence/again.json", b"{}", offset=0)]
    message = _refused(PackFormatError, raw_zip(entries), pki)
    assert "member evidence/again.json: data before it that no member owns, or members that " in (
        message
    )


def test_it_refuses_names_that_differ_only_in_case(pack: bytes, pki: Pki) -> None:
    entries = [*raw_members(pack), Raw("Reports/Report.csv", b"{}")]
    assert _refused(PackNameError, raw_zip(entries), pki) == (
        "member names reports/report.csv and Reports/Report.csv differ only in case"
    )


def test_it_refuses_a_local_header_that_disagrees_with_the_directory(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    entries[2].cd_name = "VERIFY.txt"
    message = _refused(PackFormatError, raw_zip(entries), pki)
    assert "member VERIFY.txt: its local header disagrees with the central directory" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/etc/passwd", "an absolute path"),
        ("C:/x.json", "an absolute path"),
        ("../x.json", "a '..' component"),
        ("reports/../../x.json", "a '..' component"),
        ("reports\\x.json", "a backslash"),
        ("reports/", "a directory entry"),
        ("reports//x.json", "not a relative path"),
        ("./x.json", "not a relative path"),
        (".hidden", "not a relative path"),
        ("a b.json", "not a relative path"),
        ("x\n.json", "not a relative path"),
    ],
)
def test_it_refuses_a_bad_member_name(pack: bytes, pki: Pki, name: str, expected: str) -> None:
    entries = [*raw_members(pack), Raw(name, b"{}")]
    message = _refused(PackNameError, raw_zip(entries), pki)
    assert message.endswith(expected) or expected in message


def test_it_refuses_a_non_ascii_member_name(pack: bytes, pki: Pki) -> None:
    entries = [*raw_members(pack), Raw("r\xe9sum\xe9.json", b"{}")]
    assert "not ASCII" in _refused(PackNameError, raw_zip(entries), pki)


def test_it_refuses_duplicate_member_names(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    duplicate = Raw("reports/report.csv", b"requirement\r\n")
    message = _refused(PackNameError, raw_zip([*entries, duplicate]), pki)
    assert message == "duplicate member name reports/report.csv"


def test_it_refuses_a_name_that_is_both_a_file_and_a_directory(pack: bytes, pki: Pki) -> None:
    entries = [*raw_members(pack), Raw("reports/report.csv/x", b"{}")]
    message = _refused(PackNameError, raw_zip(entries), pki)
    assert message == "reports/report.csv is a file and also the directory of reports/report.csv/x"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"flags": 0x1}, "an encrypted member"),
        ({"flags": 0x8}, "a member with a data descriptor"),
        ({"flags": 0x2000}, "unsupported flags"),
        ({"method": 12}, "method 12"),
        ({"size": 0xFFFFFFFF}, "ZIP64"),
    ],
)
def test_it_refuses_zip_features_packs_never_use(
    pack: bytes, pki: Pki, change: dict[str, int], expected: str
) -> None:
    entries = raw_members(pack)
    for name, value in change.items():
        setattr(entries[4], name, value)
    assert expected in _refused(PackFormatError, raw_zip(entries), pki)


def test_it_bounds_the_member_count(pack: bytes, pki: Pki) -> None:
    message = _refused(PackTooLarge, pack, pki, max_members=5)
    assert message == "the pack has 10 members, more than the 5 allowed"


def test_it_bounds_the_total_uncompressed_size_before_inflating(pki: Pki, audit: Audit) -> None:
    files = pack_files(audit, {"reports/zeros.bin": b"\0" * (8 << 20)})
    pack = make_pack(pki, audit, files)
    assert len(pack) < 100_000
    message = _refused(PackTooLarge, pack, pki, max_uncompressed=4 << 20)
    assert message.startswith("the members declare ")
    assert "a zip bomb?" in message
    assert _verify(pack, pki).verified


def test_it_bounds_the_pack_size(pack: bytes, pki: Pki) -> None:
    assert _refused(PackTooLarge, pack, pki, max_bytes=1000) == (
        "the pack is larger than 1000 bytes"
    )


def test_it_stops_inflating_at_the_declared_size(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    target = next(e for e in entries if e.name == "reports/report.pdf")
    real = target.data
    target.data = real + b"\0" * (1 << 20)  # inflates to a megabyte more than declared
    target.size = len(real)
    target.crc = zlib.crc32(real)
    problems = _problems(raw_zip(entries), pki)
    assert problems == ["reports/report.pdf: cannot be read: it inflates to more than its "
                        "declared size"]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"crc": 1}, "its CRC-32 does not match"),
        ({"compressed": b"\xff\xff\xff\xff"}, "its deflate data is corrupt"),
    ],
)
def test_it_catches_a_corrupt_member(
    pack: bytes, pki: Pki, change: dict[str, Any], expected: str
) -> None:
    entries = raw_members(pack)
    target = next(e for e in entries if e.name == "reports/report.csv")
    for name, value in change.items():
        setattr(target, name, value)
    problems = _problems(raw_zip(entries), pki)
    assert f"reports/report.csv: cannot be read: {expected}" in problems[0]


def test_it_catches_deflate_data_after_the_stream_ends(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    target = next(e for e in entries if e.name == "reports/report.csv")
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    target.compressed = squeezer.compress(target.data) + squeezer.flush() + b"hidden"
    problems = _problems(raw_zip(entries), pki)
    assert problems == ["reports/report.csv: cannot be read: data after its deflate stream"]


def test_it_catches_truncated_deflate_data(pack: bytes, pki: Pki) -> None:
    entries = raw_members(pack)
    target = next(e for e in entries if e.name == "reports/report.pdf")
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    target.compressed = (squeezer.compress(target.data) + squeezer.flush())[:-20]
    problems = _problems(raw_zip(entries), pki)
    assert problems == ["reports/report.pdf: cannot be read: its deflate data is truncated"]


# --------------------------------------------------------------------------------------------
# The manifest's shape


def test_it_refuses_a_pack_without_a_manifest(pack: bytes, pki: Pki) -> None:
    entries = [e for e in raw_members(pack) if e.name != MANIFEST_PATH]
    assert _refused(PackManifestError, raw_zip(entries), pki) == "the pack has no manifest.json"


def _manifest_replaced(pack: bytes, manifest: bytes) -> bytes:
    return rezip(pack, replace={MANIFEST_PATH: manifest})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: json.dumps(m).encode(), "not canonical JSON"),
        (lambda m: canonical_json(m) + b"\n", "data after the JSON value"),
        (lambda m: canonical_json(m)[:-1] + b',"tenant":"x"}', "a member appears twice"),
        (lambda m: canonical_json({**m, "extra": 1}), "wrong members (unknown 'extra')"),
        (lambda m: canonical_json({**m, "format": "other/1"}), "format is not"),
        (lambda m: canonical_json({**m, "run": m["run"].upper()}), "run is not a lowercase"),
        (lambda m: canonical_json({**m, "created_at": "2025-03-01"}), "created_at is not"),
        (lambda m: canonical_json({**m, "tenant": "a\nb"}), "tenant is not one printable"),
        (
            lambda m: canonical_json({**m, "signer": {"certificate": CA_PATH, "ca": CA_PATH}}),
            "signer is not",
        ),
        (
            lambda m: canonical_json({**m, "files": [*m["files"], m["files"][0]]}),
            "duplicate member name",
        ),
        (
            lambda m: canonical_json(
                {**m, "files": [{"path": "../x", "sha256": "0" * 64, "size": 1}]}
            ),
            "a '..' component",
        ),
        (
            lambda m: canonical_json(
                {**m, "files": [{"path": "manifest.sig", "sha256": "0" * 64, "size": 1}]}
            ),
            "cannot list manifest.sig",
        ),
        (
            lambda m: canonical_json(
                {**m, "files": [{"path": "x", "sha256": "0" * 63, "size": 1}]}
            ),
            "sha256 is not 64 lowercase hex",
        ),
        (
            lambda m: canonical_json({**m, "files": [{"path": "x", "sha256": "0" * 64}]}),
            "wrong members (missing size)",
        ),
        (
            lambda m: json.dumps({**m, "run": 2**60}, separators=(",", ":")).encode(),
            "has no canonical form: an integer beyond",
        ),
        (
            lambda m: json.dumps({**m, "signer": json.loads("[" * 40 + "]" * 40)}).encode(),
            "has no canonical form: nested too deeply",
        ),
        (
            lambda m: canonical_json(
                {**m, "files": [{"path": "x", "sha256": "0" * 64, "size": True}]}
            ),
            "size is not an integer",
        ),
    ],
)
def test_it_refuses_a_malformed_manifest(
    pack: bytes, pki: Pki, change: Callable[[dict[str, Any]], bytes], expected: str
) -> None:
    message = _refused(PackManifestError, _manifest_replaced(pack, change(_manifest(pack))), pki)
    assert expected in message


def test_it_refuses_a_manifest_with_a_float(pack: bytes, pki: Pki) -> None:
    size = len(members(pack)["reports/report.csv"])
    manifest = members(pack)[MANIFEST_PATH].replace(b'"size":%d' % size, b'"size":%d.0' % size)
    assert b"%d.0" % size in manifest
    message = _refused(PackManifestError, _manifest_replaced(pack, manifest), pki)
    assert "a floating-point number" in message


# --------------------------------------------------------------------------------------------
# Building refuses what would not verify


def _build(pki: Pki, audit: Audit, **changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "tenant": TENANT,
        "run": RUN,
        "created_at": CREATED,
        "sign": pki.sign,
        "signer_cert_pem": pki.signer_pem,
        "ca_cert_pem": pki.ca_pem,
    }
    files = changes.pop("files", pack_files(audit))
    arguments.update(changes)
    return build_pack(files, **arguments)


@pytest.mark.parametrize(
    "path",
    [MANIFEST_PATH, SIGNATURE_PATH, CA_PATH, SIGNER_PATH, VERIFY_PATH],
)
def test_it_refuses_to_build_with_a_reserved_path(pki: Pki, audit: Audit, path: str) -> None:
    with pytest.raises(InvalidPackParameters, match="written by build_pack itself"):
        _build(pki, audit, files={**pack_files(audit), path: b"x"})


@pytest.mark.parametrize(
    "path", ["/abs.json", "../up.json", "a\\b", "dir/", "Reports/report.csv", "reports"]
)
def test_it_refuses_to_build_with_a_bad_path(pki: Pki, audit: Audit, path: str) -> None:
    with pytest.raises(InvalidPackParameters):
        _build(pki, audit, files={**pack_files(audit), path: b"x"})


def test_it_refuses_to_build_with_a_signer_the_ca_did_not_issue(
    pki: Pki, attacker: Pki, audit: Audit
) -> None:
    with pytest.raises(InvalidPackParameters, match="not issued by the CA certificate"):
        _build(pki, audit, ca_cert_pem=attacker.ca_pem)


def test_it_refuses_to_build_with_a_signer_expired_at_created_at(pki: Pki, audit: Audit) -> None:
    with pytest.raises(InvalidPackParameters, match="not valid at the manifest's created_at"):
        _build(pki, audit, created_at=CREATED + timedelta(days=800))


def test_it_refuses_to_build_without_an_aware_time(pki: Pki, audit: Audit) -> None:
    with pytest.raises(InvalidPackParameters, match="aware"):
        _build(pki, audit, created_at=CREATED.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tenant": ""}, "tenant"),
        ({"run": "not-a-uuid"}, "run"),
        ({"ca_cert_pem": b"not a certificate"}, "not a PEM certificate"),
        ({"files": {"reports/report.json": "text"}}, "must be bytes"),
    ],
)
def test_it_refuses_to_build_with_bad_parameters(
    pki: Pki, audit: Audit, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidPackParameters, match=expected):
        _build(pki, audit, **changes)


@pytest.mark.parametrize(
    "signature",
    [lambda m: b"\x30\x00", lambda m: "text", None],
    ids=["garbage", "not-bytes", "another-key"],
)
def test_it_refuses_to_write_a_signature_that_does_not_verify(
    pki: Pki, attacker: Pki, audit: Audit, signature: Any
) -> None:
    sign = signature if signature is not None else attacker.sign
    with pytest.raises(PackSigningFailed):
        _build(pki, audit, sign=sign)


# --------------------------------------------------------------------------------------------
# The run's anchor event vouches for the evidence and the results


def test_it_catches_results_changed_and_re_signed_with_the_report_key(
    pki: Pki, audit: Audit
) -> None:
    """Whoever holds the report-signing key still cannot change the results: the tenant's
    audit log recorded their digest."""
    forged = report_document()
    forged["results"][0]["status"] = "FAIL"
    pack = make_pack(pki, audit, pack_files(audit, {"reports/report.json": canonical_json(forged)}))
    problems = _problems(pack, pki)
    assert problems == [
        "reports/report.json: its results are not the ones the run recorded in the audit log "
        "(results_sha256 of the anchor event differs)"
    ]


def test_it_catches_evidence_dropped_and_re_signed_with_the_report_key(
    pki: Pki, audit: Audit
) -> None:
    files = pack_files(audit, {EVIDENCE_PATH: None})
    pack = make_pack(pki, audit, files)
    problems = _problems(pack, pki)
    assert any("lists other evidence than the pack holds" in p for p in problems), problems


def test_it_catches_a_pack_of_another_run(pki: Pki, audit: Audit) -> None:
    pack = build_pack(
        pack_files(audit),
        tenant=TENANT,
        run="11111111-2222-4333-8444-555555555555",
        created_at=CREATED,
        sign=pki.sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
    )
    problems = _problems(pack, pki)
    assert any("no proved compliance.evidence event of run" in p for p in problems), problems


def test_it_catches_findings_changed_and_re_signed_with_the_report_key(
    pki: Pki, audit: Audit
) -> None:
    forged = report_document()
    forged["requirements"][0]["finding"] = "NOT_APPLICABLE"
    pack = make_pack(pki, audit, pack_files(audit, {"reports/report.json": canonical_json(forged)}))
    assert _problems(pack, pki) == [
        "reports/report.json: its requirement findings are not the ones the run recorded in the "
        "audit log (findings_sha256 of the anchor event differs)"
    ]


def test_it_catches_a_pack_relabelled_as_another_tenants(pki: Pki, audit: Audit) -> None:
    pack = build_pack(
        pack_files(audit),
        tenant="bravo",
        run=RUN,
        created_at=CREATED,
        sign=pki.sign,
        signer_cert_pem=pki.signer_pem,
        ca_cert_pem=pki.ca_pem,
    )
    problems = _problems(pack, pki)
    assert "reports/report.json: the report is of another tenant than the manifest's" in problems
    assert any("not tenant bravo's" in p for p in problems), problems
