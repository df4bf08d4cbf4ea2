"""Exports of a real run: the signed PDF says what the JSON says; packs verify or fail."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
from django.core.management import call_command
from pyhanko.sign.validation.status import SignatureCoverageLevel

from compliance.engine import compliance_run
from compliance.exports import ExportError, export_run
from compliance.models import Evidence
from compliance.signing import ca_certificate_pem
from tests.compliance.test_pdf import embedded_files, pdftotext
from tests.compliance.test_signing import validate
from tests.factories import make_tenant
from vault.audit.models import AuditEvent
from vault.crypto.canonical import canonical_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def run():
    tenant = make_tenant(slug="acme", name="Acme")
    call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "local")
    return compliance_run(tenant)


def _rows(text: str, keys: set[str]) -> dict[str, list[str]]:
    """Lines of ``pdftotext -layout`` output whose first word is one of ``keys``."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in keys:
            found.setdefault(words[0], []).append(line)
    return found


def test_the_signed_pdf_shows_the_findings_of_the_json_and_verifies(run, tmp_path) -> None:
    document = json.loads(export_run(run, "json"))
    pdf = export_run(run, "pdf")
    # pyHanko's validator: intact, valid, trusted under the report CA, covering the whole file.
    status = validate(pdf, ca_certificate_pem())
    assert status.intact
    assert status.valid
    assert status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    # Its first page as an image.
    (tmp_path / "report.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", "report.pdf", "page"],
        cwd=tmp_path,
        check=True,
    )
    [page] = list(tmp_path.glob("page*.png"))
    assert page.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert page.stat().st_size > 2000
    # Its text: every requirement's row shows the JSON's finding, every check's rows its statuses.
    text = pdftotext(pdf)
    assert "acme" in text
    requirements = {r["ref"]: r["finding"] for r in document["requirements"]}
    rows = _rows(text, set(requirements))
    for ref, finding in requirements.items():
        assert any(finding in line for line in rows.get(ref, [])), (ref, finding)
    expected = Counter((r["check"], r["status"]) for r in document["results"])
    rows = _rows(text, {check for check, _ in expected})
    shown: Counter[tuple[str, str]] = Counter()
    for check, lines in rows.items():
        for line in lines:
            for name in ("PASS", "FAIL", "MANUAL", "ERROR", "NOT_APPLICABLE", "WAIVED"):
                if f" {name}" in line:
                    shown[(check, name)] += 1
    assert shown == expected
    assert "FAIL" in {status for _, status in expected}, "a fresh tenant has real failures"
    # The JSON and CSV travel inside the PDF, byte for byte as their own exports (but for the
    # time of generation).
    attached = embedded_files(pdf)
    assert set(attached) == {"report.json", "report.csv"}
    inner = json.loads(attached["report.json"])
    assert inner["results"] == document["results"]
    assert inner["requirements"] == document["requirements"]
    assert AuditEvent.objects.filter(type="compliance.report.export").count() == 2


def test_a_run_whose_evidence_was_altered_exports_no_pack(run) -> None:
    row = Evidence.objects.filter(tenant=run.tenant).first()
    assert row is not None
    Evidence.objects.filter(pk=row.pk).update(body=bytes(row.body).replace(b"{", b"{ ", 1))
    with pytest.raises(ExportError) as refused:
        export_run(run, "pack")
    assert refused.value.code == "evidence_altered"


def test_a_run_whose_findings_or_results_were_edited_exports_nothing(run) -> None:
    from compliance.models import CheckResult, RequirementResult

    RequirementResult.objects.filter(run=run, ref="3.6.1.2").update(finding="IN_PLACE")
    for fmt in ("json", "csv", "pdf", "pack"):
        with pytest.raises(ExportError) as refused:
            export_run(run, fmt)
        assert refused.value.code == "run_altered"
        assert refused.value.status == 409
    RequirementResult.objects.filter(run=run, ref="3.6.1.2").update(finding="NOT_IN_PLACE")
    assert export_run(run, "json")
    CheckResult.objects.filter(run=run, check_id="KEY-001").update(status="PASS")
    with pytest.raises(ExportError) as refused:
        export_run(run, "pdf")
    assert refused.value.code == "run_altered"


def test_a_run_whose_end_checkpoint_failed_still_packs_under_a_later_one(run) -> None:
    from vault.audit.services import audit_integrate, log_of

    type(run).objects.filter(pk=run.pk).update(checkpoint_end={})
    run.refresh_from_db()
    audit_integrate(log_of(run.tenant))
    report = _verify(export_run(run, "pack"), ca_certificate_pem())
    assert report.verified, report.problems


def test_unknown_formats_and_unfinished_runs_are_refused(run) -> None:
    with pytest.raises(ExportError) as bad:
        export_run(run, "xlsx")
    assert bad.value.code == "bad_format"
    type(run).objects.filter(pk=run.pk).update(state="running")
    run.refresh_from_db()
    with pytest.raises(ExportError) as unfinished:
        export_run(run, "json")
    assert unfinished.value.code == "run_not_finished"


# --- evidence packs of a real run ----------------------------------------------------------------


def _verify(pack: bytes, ca: str | bytes | None):
    from vault.crypto.reportpack import verify_pack

    trusted = ca.encode("ascii") if isinstance(ca, str) else ca
    return verify_pack(pack, trusted_ca_pem=trusted)


def _resign(files: dict[str, bytes], run, sign, signer_pem: bytes, ca_pem: bytes) -> bytes:
    from django.utils import timezone

    from vault.crypto.reportpack import build_pack

    return build_pack(
        files,
        tenant=run.tenant.slug,
        run=str(run.pk),
        created_at=timezone.now(),
        sign=sign,
        signer_cert_pem=signer_pem,
        ca_cert_pem=ca_pem,
    )


def test_a_real_pack_verifies_and_every_tampering_fails(run) -> None:
    from tests.crypto.test_reportpack import members, new_pki, rezip

    pack = export_run(run, "pack")
    ca = ca_certificate_pem()
    report = _verify(pack, ca)
    assert report.verified, report.problems
    assert report.anchor_events == (str(run.anchor_event),)
    content = members(pack)
    assert {"reports/report.pdf", "reports/report.csv", "audit/proofs.json", "VERIFY.md"} <= set(
        content
    )
    assert any(name.startswith("evidence/") for name in content)
    evidence = next(name for name in content if name.startswith("evidence/"))
    edited = bytearray(content["reports/report.csv"])
    edited[-3] ^= 1
    manifest = json.loads(content["manifest.json"])
    manifest["tenant"] = "globex"
    tampered = {
        "edited": rezip(pack, replace={"reports/report.csv": bytes(edited)}),
        "added": rezip(pack, add={"evidence/" + "0" * 64 + ".json": b"{}"}),
        "removed": rezip(pack, remove=(evidence,)),
        "manifest edited": rezip(pack, replace={"manifest.json": canonical_json(manifest)}),
    }
    attacker = new_pki()
    files = {
        k: v for k, v in content.items() if k.split("/")[0] in {"reports", "evidence", "audit"}
    }
    tampered["re-signed with another key"] = _resign(
        files, run, attacker.sign, attacker.signer_pem, attacker.ca_pem
    )
    for what, forged in tampered.items():
        verdict = _verify(forged, ca)
        assert not verdict.verified, what
        assert verdict.problems, what
    assert not _verify(pack, None).verified, "nothing trusted: unanchored"


def test_the_report_key_alone_cannot_change_a_runs_results(run) -> None:
    """Whoever holds the report-signing key (or the database) and re-signs a pack with changed
    results is caught by the run's anchor event in the tenant's audit log."""
    from compliance.signing import report_authority, sign_detached
    from tests.crypto.test_reportpack import members

    content = members(export_run(run, "pack"))
    document = json.loads(content["reports/report.json"])
    failing = next(r for r in document["results"] if r["status"] == "FAIL")
    failing["status"] = "PASS"
    files = {
        k: v for k, v in content.items() if k.split("/")[0] in {"reports", "evidence", "audit"}
    }
    files["reports/report.json"] = json.dumps(document).encode()
    authority = report_authority()
    forged = _resign(
        files,
        run,
        lambda data: sign_detached(data, authority=authority),
        authority.signer_pem.encode(),
        authority.ca_pem.encode(),
    )
    verdict = _verify(forged, ca_certificate_pem())
    assert not verdict.verified
    assert any("results_sha256 of the anchor event differs" in p for p in verdict.problems)
