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
    shown = Counter()
    for check, lines in rows.items():
        for line in lines:
            for status in ("PASS", "FAIL", "MANUAL", "ERROR", "NOT_APPLICABLE", "WAIVED"):
                if f" {status}" in line:
                    shown[(check, status)] += 1
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
    Evidence.objects.filter(pk=row.pk).update(body=bytes(row.body).replace(b"{", b"{ ", 1))
    with pytest.raises(ExportError) as refused:
        export_run(run, "pack")
    assert refused.value.code == "evidence_altered"


def test_unknown_formats_and_unfinished_runs_are_refused(run) -> None:
    with pytest.raises(ExportError) as bad:
        export_run(run, "xlsx")
    assert bad.value.code == "bad_format"
    type(run).objects.filter(pk=run.pk).update(state="running")
    run.refresh_from_db()
    with pytest.raises(ExportError) as unfinished:
        export_run(run, "json")
    assert unfinished.value.code == "run_not_finished"
