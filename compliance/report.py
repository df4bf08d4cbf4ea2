"""A run as a report: the JSON document (schema: compliance/schema/report-v1.json) and its CSV.

Both are made from the stored run only (results, requirement findings, evidence, waivers and
attestations), so exporting the same run twice gives the same findings.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from django.utils import timezone

from compliance import catalog
from compliance.checks import all_checks
from compliance.models import Attestation, CheckResult, ComplianceRun, Evidence, Waiver
from vault.audit.models import AuditEvent
from vault.audit.services import log_of, origin_of_log
from vault.crypto import canonical
from vault.crypto.auditbundle import format_time

REPORT_FORMAT = "ciphervault-compliance-report/1"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "report-v1.json"
CSV_COLUMNS = (
    "framework",
    "framework_version",
    "tenant",
    "run",
    "requirement",
    "requirement_finding",
    "check",
    "check_version",
    "status",
    "severity",
    "resource_type",
    "resource_id",
    "detail",
    "finding_id",
    "evidence",
    "waiver",
)
# A spreadsheet treats a cell that starts with one of these as a formula (or as the start of
# one, after a tab or a carriage return).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _time(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def _checkpoint(facts: dict[str, Any], origin: str) -> dict[str, Any] | None:
    if not facts:
        return None
    return {"origin": origin, **facts}


def report_document(run: ComplianceRun) -> dict[str, Any]:
    """The run as the report JSON document."""
    tenant = run.tenant
    origin = origin_of_log(log_of(tenant), tenant)
    results = list(
        CheckResult.objects.filter(run=run).order_by("check_id", "resource_type", "resource_id")
    )
    digests = sorted(
        {d for r in results for d in r.evidence} | _populations_digest(run) | anchored_evidence(run)
    )
    evidence_rows = {
        e.sha256: e for e in Evidence.objects.filter(tenant=tenant, sha256__in=digests)
    }
    refs = {digest: f"E-{n:04d}" for n, digest in enumerate(digests, start=1)}
    checks = {c.id: c for c in all_checks()}
    evidence_checks: dict[str, str] = {}
    for result in results:
        for digest in result.evidence:
            evidence_checks.setdefault(digest, result.check_id)
    requirement_evidence: dict[str, set[str]] = {}
    for result in results:
        requirements = checks[result.check_id].requirements if result.check_id in checks else ()
        for ref in requirements:
            requirement_evidence.setdefault(ref, set()).update(refs[d] for d in result.evidence)
    waiver_ids = {r.waiver_id for r in results if r.waiver_id}
    waivers = Waiver.objects.filter(pk__in=waiver_ids).select_related("requested_by")
    attestation_ids = {a for req in run.requirements.all() for a in req.attestations}
    attestations = Attestation.objects.filter(pk__in=attestation_ids).select_related("signer")
    populations = _populations(run)
    return {
        "format": REPORT_FORMAT,
        "framework": dict(catalog.FRAMEWORK),
        "tenant": {"slug": tenant.slug, "name": tenant.name},
        "run": {
            "id": str(run.pk),
            "trigger": run.trigger,
            "requested_by": run.requested_by,
            "started_at": _time(run.started_at),
            "finished_at": _time(run.finished_at),
            "engine_version": run.engine_version,
            "catalog_sha256": run.catalog_sha256,
            "checkpoint_start": _checkpoint(run.checkpoint_start, origin),
            "checkpoint_end": _checkpoint(run.checkpoint_end, origin),
        },
        "summary": {
            "results": dict(sorted(run.summary.get("results", {}).items())),
            "requirements": dict(sorted(run.summary.get("requirements", {}).items())),
            "results_sha256": run.summary.get("results_sha256", ""),
            "findings_sha256": run.summary.get("findings_sha256", ""),
        },
        "requirements": [
            {
                "ref": req.ref,
                "title": catalog.REQUIREMENTS.get(req.ref, ""),
                "finding": req.finding,
                "narrative": req.narrative,
                "guardrails": req.guardrails,
                "checks": sorted(c.id for c in checks.values() if req.ref in c.requirements),
                "compensating_control_used": req.compensating_control_used,
                "attestations": sorted(req.attestations),
                "evidence": sorted(requirement_evidence.get(req.ref, set())),
            }
            for req in run.requirements.all().order_by("pk")
        ],
        "checks": [c.metadata() for c in checks.values()],
        "results": [
            {
                "finding_id": r.finding_id,
                "check": r.check_id,
                "check_version": r.check_version,
                "status": r.status,
                "severity": r.severity,
                "resource_type": r.resource_type,
                "resource_id": r.resource_id,
                "detail": r.detail,
                "observed": r.observed,
                "requirements": list(checks[r.check_id].requirements)
                if r.check_id in checks
                else [],
                "evidence": [refs[d] for d in r.evidence],
                "waiver": r.waiver_id,
            }
            for r in results
        ],
        "evidence": [
            {
                "ref": refs[digest],
                "sha256": digest,
                "kind": evidence_rows[digest].kind if digest in evidence_rows else "missing",
                "check": evidence_checks.get(digest, ""),
                "media_type": "application/json",
                "size": evidence_rows[digest].size if digest in evidence_rows else 0,
                "collected_at": _time(evidence_rows[digest].collected_at)
                if digest in evidence_rows
                else None,
            }
            for digest in digests
        ],
        "populations": populations,
        "waivers": [
            {
                "id": w.pk,
                "check": w.check_id,
                "finding_id": w.finding_id,
                "justification": w.justification,
                "compensating_control": w.compensating_control,
                "requested_by": w.requested_by.email,
                "approvers": sorted(
                    a.approver.email for a in w.approvals.all().select_related("approver")
                ),
                "approved_at": _time(w.approved_at),
                "expires_at": _time(w.expires_at),
            }
            for w in waivers
        ],
        "attestations": [
            {
                "id": a.pk,
                "requirement": a.requirement,
                "kind": a.kind,
                "statement": a.statement,
                "signer": a.signer.email,
                "signed_at": _time(a.signed_at),
                "valid_until": _time(a.valid_until),
                "document_sha256": a.document_sha256,
                "signature": a.signature,
                "signing_key": a.signing_key,
            }
            for a in attestations
        ],
        "integrity": {
            "audit_verified": bool(run.integrity.get("ok")) if run.integrity else False,
            "leaves": run.integrity.get("leaves", 0) if run.integrity else 0,
            "problems": list(run.integrity.get("problems", [])) if run.integrity else [],
            "anchor_event": str(run.anchor_event) if run.anchor_event else None,
        },
        "generated_at": format_time(timezone.now()),
        "generator": f"ciphervault compliance engine {run.engine_version}",
    }


def anchor_details(run: ComplianceRun) -> dict[str, Any]:
    """The details of the run's ``compliance.evidence`` event ({} when there is none)."""
    if run.anchor_event is None:
        return {}
    leaf = AuditEvent.objects.filter(uuid=run.anchor_event).values_list("leaf", flat=True).first()
    if leaf is None:
        return {}
    details = json.loads(bytes(leaf)).get("details", {})
    return details if isinstance(details, dict) else {}


def anchored_evidence(run: ComplianceRun) -> set[str]:
    """The evidence digests the run's anchor event lists (every piece the checks captured)."""
    return {d for d in anchor_details(run).get("evidence", []) if isinstance(d, str)}


def _populations_digest(run: ComplianceRun) -> set[str]:
    digest = run.summary.get("populations")
    return {digest} if digest else set()


def _populations(run: ComplianceRun) -> dict[str, Any]:
    digest = run.summary.get("populations")
    if not digest:
        return {}
    row = Evidence.objects.filter(tenant=run.tenant, sha256=digest).first()
    if row is None:
        return {}
    document = json.loads(bytes(row.body))
    data = document.get("data", {})
    return data if isinstance(data, dict) else {}


def report_json(document: dict[str, Any]) -> bytes:
    """The report document as canonical JSON (RFC 8785)."""
    return canonical.canonical_json(document)


def neutralise(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def report_csv(document: dict[str, Any]) -> bytes:
    """One row per (requirement, check, resource), RFC 4180, UTF-8, formula-safe."""
    findings = {r["ref"]: r["finding"] for r in document["requirements"]}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    framework = document["framework"]
    for result in document["results"]:
        for ref in result["requirements"] or [""]:
            writer.writerow(
                [
                    neutralise(v)
                    for v in (
                        framework["name"],
                        framework["version"],
                        document["tenant"]["slug"],
                        document["run"]["id"],
                        ref,
                        findings.get(ref, ""),
                        result["check"],
                        result["check_version"],
                        result["status"],
                        result["severity"],
                        result["resource_type"],
                        result["resource_id"],
                        result["detail"],
                        result["finding_id"],
                        " ".join(result["evidence"]),
                        result["waiver"] or "",
                    )
                ]
            )
    return out.getvalue().encode("utf-8")
