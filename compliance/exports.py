"""A run's exports: JSON, CSV, signed PDF, and the signed evidence pack (docs/compliance.md).

Every export is recorded in the tenant's audit log (``compliance.report.export``, PCI-DSS
10.2.1.3: reading evidence about the logs is reading the logs).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from django.utils import timezone

from compliance.models import ComplianceRun, Evidence
from compliance.report import anchor_details, report_csv, report_document, report_json
from vault.audit.models import AuditEvent, AuditLeaf
from vault.audit.services import (
    audit_record,
    latest_checkpoint,
    log_of,
    log_signer,
    log_tree,
    origin_of_log,
)
from vault.crypto import canonical
from vault.crypto.reportpack import report_digests

FORMATS = ("json", "csv", "pdf", "pack")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
    "pack": "application/zip",
}


class ExportError(Exception):
    code = "export_failed"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        if code:
            self.code = code
        if status:
            self.status = status


def audit_proofs(run: ComplianceRun) -> dict[str, Any]:
    """The tenant log's checkpoints at the run's start and end, the consistency proof between
    them, and the inclusion proof of the run's anchor event, as ``audit/proofs.json`` holds.

    When the run could not sign its end checkpoint (the backend was down then), the log's
    newest checkpoint that covers the anchor event stands in for it.
    """
    start = run.checkpoint_start
    if not start or run.anchor_event is None:
        raise ExportError(
            "the run has no signed audit checkpoints to prove its evidence against",
            code="run_not_anchored",
            status=409,
        )
    log = log_of(run.tenant)
    event = AuditEvent.objects.filter(uuid=run.anchor_event).first()
    leaf = AuditLeaf.objects.filter(event=event).first() if event is not None else None
    end = run.checkpoint_end
    if leaf is not None and (not end or leaf.index >= end["size"]):
        newest = latest_checkpoint(log)
        if newest is not None and newest.size > leaf.index:
            end = {
                "size": newest.size,
                "root": base64.b64encode(bytes(newest.root)).decode("ascii"),
                "note": newest.note,
            }
    if event is None or leaf is None or not end or leaf.index >= end["size"]:
        raise ExportError(
            "the run's anchor event is not under a signed checkpoint yet; try again after the "
            "next audit checkpoint",
            code="run_not_anchored",
            status=409,
        )
    tree = log_tree(log, end["size"])
    if tree.size != end["size"] or tree.root() != base64.b64decode(end["root"]):
        raise ExportError(
            "the audit log no longer matches the run's checkpoint",
            code="audit_mismatch",
            status=409,
        )
    anchors = [
        {
            "leaf": base64.b64encode(bytes(event.leaf)).decode("ascii"),
            "index": leaf.index,
            "proof": [h.hex() for h in tree.inclusion_proof(leaf.index, end["size"])],
        }
    ]
    keys = [key.vkey for key in log_signer(log).all_keys]
    return {
        "origin": origin_of_log(log, run.tenant),
        "keys": keys,
        "start": start["note"],
        "end": end["note"],
        # From an empty log every tree is consistent: the proof is empty.
        "consistency": [h.hex() for h in tree.consistency_proof(start["size"], end["size"])]
        if start["size"]
        else [],
        "anchors": anchors,
    }


def _check_against_anchor(run: ComplianceRun, document: dict[str, Any]) -> None:
    """Refuse to sign what the run did not record: the results and findings in the database
    must still give the digests its anchor event carries in the tenant's audit log."""
    details = anchor_details(run)
    results, findings = report_digests(document)
    if details.get("results_sha256") != results or details.get("findings_sha256") != findings:
        raise ExportError(
            "the run's results or findings were changed after the run recorded them in the "
            "audit log; nothing is exported",
            code="run_altered",
            status=409,
        )


def _pdf(document: dict[str, Any], attachments: dict[str, bytes]) -> bytes:
    from compliance.pdf import render_pdf
    from compliance.signing import sign_pdf

    return sign_pdf(render_pdf(document, attachments))


def export_run(run: ComplianceRun, fmt: str) -> bytes:
    """The run's export in ``fmt`` (json, csv, pdf or pack).

    Raises:
        ExportError: an unknown format or a run that did not finish.
        compliance.pdf.PdfUnavailable: WeasyPrint's system libraries are missing (pdf, pack).
        compliance.signing.ReportSigningError: the report keys' backend cannot sign.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format is one of {', '.join(FORMATS)}", code="bad_format", status=400)
    if run.state != "finished":
        raise ExportError("the run has not finished", code="run_not_finished", status=409)
    document = report_document(run)
    _check_against_anchor(run, document)
    data_json = report_json(document)
    if fmt == "json":
        data = data_json
    elif fmt == "csv":
        data = report_csv(document)
    else:
        data_csv = report_csv(document)
        pdf = _pdf(document, {"report.json": data_json, "report.csv": data_csv})
        data = pdf if fmt == "pdf" else _pack(run, document, data_json, data_csv, pdf)
    audit_record(
        "compliance.report.export",
        tenant=run.tenant,
        resource_type="compliance_run",
        resource_id=run.pk,
        details={"format": fmt, "sha256": hashlib.sha256(data).hexdigest()},
    )
    return data


def _pack(
    run: ComplianceRun, document: dict[str, Any], data_json: bytes, data_csv: bytes, pdf: bytes
) -> bytes:
    from compliance.signing import report_authority, sign_detached
    from vault.crypto.reportpack import build_pack

    authority = report_authority()
    digests = sorted({e["sha256"] for e in document["evidence"]})
    files: dict[str, bytes] = {
        "reports/report.json": data_json,
        "reports/report.csv": data_csv,
        "reports/report.pdf": pdf,
        "audit/proofs.json": canonical.canonical_json(audit_proofs(run)),
    }
    for row in Evidence.objects.filter(tenant=run.tenant, sha256__in=digests):
        body = bytes(row.body)
        # Evidence is stored under its digest and the digest is in the audit log: a body that
        # no longer hashes to it was changed after the run, and the pack would carry a lie.
        if hashlib.sha256(body).hexdigest() != row.sha256:
            raise ExportError(
                f"evidence {row.sha256} was altered after the run recorded it",
                code="evidence_altered",
                status=409,
            )
        files[f"evidence/{row.sha256}.json"] = body
    missing = set(digests) - {name[len("evidence/") : -len(".json")] for name in files}
    if missing:
        raise ExportError(
            f"evidence {sorted(missing)[0]} of the run is missing",
            code="evidence_missing",
            status=409,
        )
    return build_pack(
        files,
        tenant=run.tenant.slug,
        run=str(run.pk),
        created_at=timezone.now(),
        sign=lambda data: sign_detached(data, authority=authority),
        signer_cert_pem=authority.signer_pem.encode("ascii"),
        ca_cert_pem=authority.ca_pem.encode("ascii"),
    )
