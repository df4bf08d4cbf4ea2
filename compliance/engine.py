"""Running every check for a tenant: results, evidence, waivers, findings and the audit anchor.

A run:

1. integrates the tenant's audit log and records its checkpoint (``checkpoint_start``);
2. runs every check; an exception out of a check becomes one ERROR result, never FAIL;
3. applies the tenant's active waivers to FAIL results;
4. stores the results, the evidence (once per digest) and the requirements' findings, and
   records a ``compliance.evidence`` event naming the digest of every piece of evidence and of
   the results, all in one transaction;
5. integrates the log again and records its checkpoint (``checkpoint_end``), which covers that
   event: the evidence and results cannot be swapped later without breaking the log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compliance import catalog, populations
from compliance.checks import Check, Context, Outcome, all_checks
from compliance.models import (
    Attestation,
    CheckResult,
    ComplianceRun,
    Evidence,
    Finding,
    RequirementResult,
    RunState,
    Status,
    Trigger,
    Waiver,
    WaiverState,
)
from compliance.services import attestation_verifies, waiver_holds
from kms_plugins.errors import KeyBackendError
from vault.audit.context import acting_as
from vault.audit.models import PLATFORM_LOG
from vault.audit.services import audit_integrate, audit_record, latest_checkpoint, log_of
from vault.crypto import canonical
from vault.crypto.reportpack import digest_rows
from vault.tenants.models import Tenant

logger = logging.getLogger(__name__)

ENGINE_VERSION = "1.0.0"


class RunFailed(Exception):
    code = "compliance_run_failed"


def finding_id(check_id: str, tenant: Tenant, resource_type: str, resource_id: str) -> str:
    """The stable id of a finding: the same check on the same resource keeps it across runs."""
    text = f"{check_id}|{tenant.slug}|{resource_type}|{resource_id}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _checkpoint_facts(log: str) -> dict[str, Any]:
    """Integrate ``log`` and describe its newest checkpoint ({} when it cannot be signed)."""
    try:
        audit_integrate(log)
    except Exception as exc:  # no signing backend, or it is down: the run says so
        logger.warning("compliance run: audit log %s not integrated (%s)", log, type(exc).__name__)
    point = latest_checkpoint(log)
    if point is None:
        return {}
    return {
        "size": point.size,
        "root": base64.b64encode(bytes(point.root)).decode("ascii"),
        "note": point.note,
    }


def _run_check(check: Check, ctx: Context) -> list[Outcome]:
    """The check's outcomes; one ERROR outcome when it could not read its data."""
    try:
        outcomes = list(check.run(ctx))
    except KeyBackendError as exc:
        return [
            check.error(
                "tenant",
                ctx.tenant.slug,
                f"The key backend did not answer ({exc.code}); the check could not read its data.",
            )
        ]
    except Exception as exc:
        logger.exception("compliance check %s failed for tenant %s", check.id, ctx.tenant.slug)
        return [
            check.error(
                "tenant",
                ctx.tenant.slug,
                f"The check could not read its data ({type(exc).__name__}).",
            )
        ]
    if not outcomes:
        return [check.not_applicable("tenant", ctx.tenant.slug, "Nothing in scope for this check.")]
    return outcomes


def active_waivers(tenant: Tenant, now: datetime) -> list[Waiver]:
    """The tenant's waivers in force at ``now`` whose approvals hold up (``waiver_holds``)."""
    return [
        waiver
        for waiver in Waiver.objects.filter(
            tenant=tenant, state=WaiverState.ACTIVE, expires_at__gt=now
        ).select_related("tenant")
        if waiver_holds(waiver)
    ]


def valid_attestations(tenant: Tenant, now: datetime) -> dict[str, list[Attestation]]:
    """The tenant's attestations valid at ``now``, by requirement."""
    found: dict[str, list[Attestation]] = defaultdict(list)
    items = list(
        Attestation.objects.filter(tenant=tenant, signed_at__lte=now, valid_until__gt=now)
        .select_related("tenant", "signer")
        .order_by("-signed_at")
    )
    keys = None
    if items:
        from vault.audit.services import log_signer

        try:
            keys = log_signer(log_of(tenant)).all_keys
        except Exception:
            return found  # no key to check them against: none counts
    for item in items:
        if attestation_verifies(item, keys):  # one edited in the database counts for nothing
            found[item.requirement].append(item)
    return found


def _waiver_for(waivers: Iterable[Waiver], check_id: str, finding: str) -> Waiver | None:
    for waiver in waivers:
        if waiver.check_id == check_id and waiver.finding_id in ("", finding):
            return waiver
    return None


def aggregate(
    ref: str,
    statuses: list[str],
    guardrails: list[dict[str, Any]],
    attested: bool,
) -> tuple[str, str, bool]:
    """A requirement's finding from its results: (finding, narrative, compensating control)."""
    counts = Counter(statuses)
    violated = [g for g in guardrails if g["violated"]]
    if counts[Status.FAIL] or violated:
        parts = []
        if counts[Status.FAIL]:
            parts.append(f"{counts[Status.FAIL]} failing result(s)")
        for g in violated:
            parts.append(
                f"setting {g['setting']} is {g['actual']}, looser than the requirement "
                f"tolerates ({g['operator']} {g['value']})"
            )
        return Finding.NOT_IN_PLACE, "Not in place: " + "; ".join(parts) + ".", False
    if counts[Status.ERROR]:
        return (
            Finding.NOT_TESTED,
            f"Not tested: {counts[Status.ERROR]} check result(s) could not read their data.",
            False,
        )
    if counts[Status.MANUAL] and not attested:
        return (
            Finding.NOT_TESTED,
            "Not tested: needs people; no valid signed attestation is on record.",
            False,
        )
    if statuses and all(s == Status.NOT_APPLICABLE for s in statuses) and not attested:
        return Finding.NOT_APPLICABLE, "Not applicable: nothing in scope.", False
    if not statuses and not attested:
        return Finding.NOT_TESTED, "Not tested: no check covers it and nothing is attested.", False
    waived = counts[Status.WAIVED]
    narrative = f"In place: {counts[Status.PASS]} passing result(s)"
    if waived:
        narrative += f", {waived} waived under an approved exception"
    if attested:
        narrative += ", with a valid signed attestation"
    return Finding.IN_PLACE, narrative + ".", bool(waived)


def compliance_run(
    tenant: Tenant,
    *,
    trigger: str = Trigger.MANUAL,
    requested_by: str = "",
    checks: list[type[Check]] | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> ComplianceRun:
    """Run every check (or ``checks``) for ``tenant`` now and store the results."""
    run = run_start(tenant, trigger=trigger, requested_by=requested_by, now=now)
    return run_evaluate(run, checks=checks, progress=progress)


RUN_STALE_AFTER = timedelta(hours=2)


class RunInProgress(Exception):
    """Another run of the tenant is in progress (``run``)."""

    code = "run_in_progress"
    status = 409

    def __init__(self, run: ComplianceRun) -> None:
        super().__init__("a compliance run of this tenant is already running")
        self.run = run


def run_start(
    tenant: Tenant,
    *,
    trigger: str,
    requested_by: str = "",
    now: datetime | None = None,
    exclusive: bool = False,
) -> ComplianceRun:
    """Record a run's start: its row, the audit checkpoint then, and a ``compliance.run`` event.

    Raises:
        RunInProgress: ``exclusive`` and another run of the tenant, started less than two hours
            ago, is still running (its ``run``).
    """
    if exclusive:
        running = ComplianceRun.objects.filter(
            tenant=tenant,
            state=RunState.RUNNING,
            started_at__gte=timezone.now() - RUN_STALE_AFTER,
        ).first()
        if running is not None:
            raise RunInProgress(running)
    from compliance.checks.logs import pending_events

    with acting_as("compliance"):
        pending = {}
        for log in (log_of(tenant), PLATFORM_LOG):
            facts = pending_events(log)
            oldest = facts["oldest_pending"]
            pending[log] = {
                "pending": facts["pending"],
                "oldest_pending": oldest.isoformat() if oldest else None,
                "newest_checkpoint": facts["newest_checkpoint"].isoformat()
                if facts["newest_checkpoint"]
                else None,
            }
        start = _checkpoint_facts(log_of(tenant))
        with transaction.atomic():
            run = ComplianceRun.objects.create(
                pending_at_start=pending,
                tenant=tenant,
                trigger=trigger,
                requested_by=requested_by[:200],
                started_at=now or timezone.now(),
                engine_version=ENGINE_VERSION,
                catalog_sha256=catalog.catalog_digest(),
                checkpoint_start=start,
            )
            audit_record(
                "compliance.run",
                tenant=tenant,
                resource_type="compliance_run",
                resource_id=run.pk,
                details={"run": str(run.pk), "trigger": str(trigger)},
            )
    return run


def run_not_queued(run: ComplianceRun, exc: BaseException) -> None:
    """Close a started run whose job could not be enqueued (the task queue is down) as failed.

    Left running, it would never end, and for ``RUN_STALE_AFTER`` every later start would be
    answered with it instead of a new run. A run already closed (the job ran eagerly and
    failed) is left as it is.
    """
    ComplianceRun.objects.filter(pk=run.pk, state=RunState.RUNNING).update(
        state=RunState.FAILED, finished_at=timezone.now(), last_error=type(exc).__name__
    )


def run_evaluate(
    run: ComplianceRun,
    *,
    checks: list[type[Check]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ComplianceRun:
    """Evaluate a started run: results, evidence, findings, the anchor event, the end checkpoint.

    Raises:
        vault.audit.services.AuditUnavailable: the anchor event could not be written (the run
            is marked failed and keeps no results).
    """
    tenant = run.tenant
    selected = checks if checks is not None else all_checks()
    with acting_as("compliance"):
        try:
            _evaluate(run, tenant, selected, run.started_at, progress)
        except Exception as exc:
            ComplianceRun.objects.filter(pk=run.pk).update(
                state=RunState.FAILED, finished_at=timezone.now(), last_error=type(exc).__name__
            )
            raise
        run.checkpoint_end = _checkpoint_facts(log_of(tenant))
        run.save(update_fields=["checkpoint_end"])
    return run


def _evaluate(
    run: ComplianceRun,
    tenant: Tenant,
    selected: list[type[Check]],
    moment: datetime,
    progress: Callable[[str], None] | None,
) -> None:
    ctx = Context(tenant, moment)
    ctx.shared["pending_at_start"] = {
        log: {
            key: datetime.fromisoformat(value) if key != "pending" and value else value
            for key, value in facts.items()
        }
        for log, facts in run.pending_at_start.items()
    }
    waivers = active_waivers(tenant, moment)
    attestations = valid_attestations(tenant, moment)
    rows: list[CheckResult] = []
    by_requirement: dict[str, list[str]] = defaultdict(list)
    waived_any: set[str] = set()
    for number, cls in enumerate(selected, start=1):
        if progress is not None:
            progress(f"[{number}/{len(selected)}] {cls.id} {cls.title}")
        check = cls()
        for outcome in _run_check(check, ctx):
            finding = finding_id(cls.id, tenant, outcome.resource_type, outcome.resource_id)
            status = outcome.status
            waiver = None
            if status == Status.FAIL:
                waiver = _waiver_for(waivers, cls.id, finding)
                if waiver is not None:
                    status = Status.WAIVED
                    waived_any.add(cls.id)
            try:
                canonical.check(outcome.observed)
                observed = outcome.observed
            except canonical.NotCanonicalizable:
                observed = {"note": "observations not representable as canonical JSON"}
            rows.append(
                CheckResult(
                    run=run,
                    check_id=cls.id,
                    check_version=cls.version,
                    finding_id=finding,
                    status=status,
                    severity=cls.severity,
                    resource_type=outcome.resource_type[:40],
                    resource_id=outcome.resource_id[:300],
                    detail=outcome.detail,
                    observed=observed,
                    evidence=sorted(set(outcome.evidence)),
                    waiver=waiver,
                )
            )
            for ref in cls.requirements:
                by_requirement[ref].append(status)
    requirement_rows = []
    for ref in sorted(catalog.REQUIREMENTS, key=_ref_key):
        guardrails = [g.evaluate(tenant) for g in catalog.guardrails_for(ref)]
        attested = attestations.get(ref, [])
        finding, narrative, compensating = aggregate(
            ref, by_requirement.get(ref, []), guardrails, bool(attested)
        )
        requirement_rows.append(
            RequirementResult(
                run=run,
                ref=ref,
                finding=finding,
                narrative=narrative,
                guardrails=guardrails,
                compensating_control_used=compensating,
                attestations=[a.pk for a in attested],
            )
        )
    # The anchor event carries these, computed as vault.crypto.reportpack.report_digests
    # recomputes them from a report: the audit log vouches for the results and the findings.
    results_digest = digest_rows(
        [r.finding_id, r.check_id, r.check_version, str(r.status), r.detail, r.evidence]
        for r in rows
    )
    findings_digest = digest_rows(
        [
            r.ref,
            str(r.finding),
            r.narrative,
            r.compensating_control_used,
            r.guardrails,
            sorted(r.attestations),
        ]
        for r in requirement_rows
    )
    summary = {
        "results": dict(Counter(str(r.status) for r in rows)),
        "requirements": dict(Counter(str(r.finding) for r in requirement_rows)),
        "results_sha256": results_digest,
        "findings_sha256": findings_digest,
    }
    summary["populations"] = ctx.evidence("populations", populations.collect(ctx))
    integrity = ctx.shared.get("audit_verify")
    with transaction.atomic():
        existing = set(
            Evidence.objects.filter(
                tenant=tenant, sha256__in=list(ctx.evidence_bodies)
            ).values_list("sha256", flat=True)
        )
        Evidence.objects.bulk_create(
            [
                Evidence(
                    tenant=tenant,
                    sha256=digest,
                    kind=kind,
                    body=body,
                    size=len(body),
                    collected_at=moment,
                )
                for digest, (kind, body) in ctx.evidence_bodies.items()
                if digest not in existing
            ],
            ignore_conflicts=True,
        )
        CheckResult.objects.bulk_create(rows, batch_size=2000)
        RequirementResult.objects.bulk_create(requirement_rows)
        event = audit_record(
            "compliance.evidence",
            tenant=tenant,
            resource_type="compliance_run",
            resource_id=run.pk,
            details={
                "run": str(run.pk),
                "catalog_sha256": run.catalog_sha256,
                "results_sha256": results_digest,
                "findings_sha256": findings_digest,
                "integrity": {
                    "ok": bool(integrity.get("ok")) if integrity else False,
                    "leaves": int(integrity.get("leaves", 0)) if integrity else 0,
                },
                "evidence": sorted(ctx.evidence_bodies),
                "summary": {
                    k: v
                    for k, v in summary.items()
                    if k not in ("results_sha256", "findings_sha256")
                },
            },
        )
        run.summary = summary
        run.integrity = integrity or {}
        run.anchor_event = event.uuid
        run.state = RunState.FINISHED
        run.finished_at = timezone.now()
        run.save(update_fields=["summary", "integrity", "anchor_event", "state", "finished_at"])


def _ref_key(ref: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ref.split("."))


def latest_run(tenant: Tenant) -> ComplianceRun | None:
    """The tenant's newest finished run."""
    return (
        ComplianceRun.objects.filter(tenant=tenant, state=RunState.FINISHED)
        .order_by("-started_at")
        .first()
    )


def tenants_due(now: datetime, hours: int = 24) -> list[Tenant]:
    """Active tenants with no scheduled run started in the last ``hours`` (minus a margin)."""
    since = now - timedelta(hours=hours) + timedelta(minutes=30)
    # A failed scheduled run does not count: the next hourly tick tries that tenant again.
    recent = ComplianceRun.objects.filter(
        Q(trigger=Trigger.SCHEDULE) & Q(started_at__gte=since) & ~Q(state=RunState.FAILED)
    ).values_list("tenant_id", flat=True)
    return list(
        Tenant.objects.filter(is_active=True, shredded_at__isnull=True)
        .exclude(pk__in=recent)
        .order_by("pk")
    )
