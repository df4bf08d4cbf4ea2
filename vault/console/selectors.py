"""Reads for the console's pages: the tenant dashboard.

Everything here is cheap enough for every page load. The audit log's full verification is not:
the dashboard shows the log's newest signed checkpoint, and whether the verification the last
compliance run made (LOG-004, ``vault.audit.services.audit_verify``) found the log intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.apps import apps
from django.db.models import Count, Sum
from django.utils import timezone

from kms_plugins.types import Health
from vault.audit.models import AuditEvent
from vault.audit.services import latest_checkpoint, log_of
from vault.keys.models import KeyBinding
from vault.keys.registry import key_backend
from vault.lifecycle.models import ApprovalRequest, RequestState
from vault.objects.models import ObjectVersion, StoredObject
from vault.tenants.models import Role, Tenant


@dataclass(frozen=True)
class BackendStatus:
    """One of the tenant's keys and whether its backend answers now."""

    key_role: str
    alias: str
    kind: str
    ok: bool
    detail: str
    suspended: bool


@dataclass(frozen=True)
class ObjectTotals:
    """The tenant's live objects (neither deleted nor shredded)."""

    objects: int
    versions: int
    bytes: int  # plaintext bytes of every version


@dataclass(frozen=True)
class ComplianceSummary:
    """The tenant's last finished compliance run, by requirement finding."""

    run_id: str
    finished_at: datetime | None
    findings: list[tuple[str, int]]  # (label, requirements), in the catalogue's order
    integrity_ok: bool | None  # the run's audit_verify of the tenant's log; None: not recorded
    integrity_problems: int


@dataclass(frozen=True)
class AuditStatus:
    """The tenant log's newest signed checkpoint and the last verification's verdict."""

    checkpoint_size: int | None
    checkpoint_at: datetime | None
    pending: int  # events not yet under a checkpoint
    verified_ok: bool | None  # None: never verified (no finished compliance run)
    verified_at: datetime | None


# Who sees which dashboard section: the roles the matching API lets read the same data. Kept here,
# not imported, because the vault apps never import ``compliance`` and the console does not import
# the API views; tests/console/test_console_dashboard_roles.py holds them equal.
COMPLIANCE_READERS = frozenset(
    {Role.OWNER, Role.CUSTODIAN, Role.AUDITOR}
)  # compliance/api/views.py
AUDIT_READERS = frozenset({Role.OWNER, Role.AUDITOR})  # vault/api/permissions.py READERS
OBJECT_READERS = frozenset({Role.OWNER, Role.MEMBER, Role.AUDITOR})  # vault/objects/api/views.py
KEY_READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})  # vault/lifecycle/api/views.py


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard shows one role; a section the role may not read is not computed.

    ``show_*`` says whether the section is on the page; its data is None (empty) when it is not.
    """

    show_keys: bool
    show_objects: bool
    show_compliance: bool
    show_audit: bool
    backends: list[BackendStatus]
    objects: ObjectTotals | None
    compliance: ComplianceSummary | None
    audit: AuditStatus | None
    pending_approvals: int | None
    compliance_installed: bool

    @property
    def empty(self) -> bool:
        return not (self.show_keys or self.show_objects or self.show_compliance or self.show_audit)


def _health(alias: str) -> Health:
    try:
        return key_backend(alias).health()
    except Exception as exc:  # an alias no longer configured, a malformed configuration
        return Health(ok=False, detail=f"backend not available ({type(exc).__name__})")


def backend_statuses(*, tenant: Tenant) -> list[BackendStatus]:
    """The tenant's keys, each with its backend's health (asked once per backend)."""
    checked: dict[str, Health] = {}
    statuses = []
    for binding in KeyBinding.objects.filter(tenant=tenant).order_by("role"):
        alias = binding.backend_alias
        if alias not in checked:
            checked[alias] = _health(alias)
        health = checked[alias]
        statuses.append(
            BackendStatus(
                key_role=binding.get_role_display(),
                alias=alias,
                kind=binding.backend_kind,
                ok=health.ok,
                detail=health.detail,
                suspended=binding.suspended_at is not None,
            )
        )
    return statuses


def object_totals(*, tenant: Tenant) -> ObjectTotals:
    live = StoredObject.objects.filter(
        tenant=tenant, deleted_at__isnull=True, shredded_at__isnull=True
    )
    versions = ObjectVersion.objects.filter(object__in=live).aggregate(
        count=Count("pk"), size=Sum("size")
    )
    return ObjectTotals(
        objects=live.count(), versions=versions["count"] or 0, bytes=versions["size"] or 0
    )


def compliance_summary(*, tenant: Tenant) -> ComplianceSummary | None:
    """The last finished compliance run of ``tenant``, if the compliance app is installed.

    Read through Django's app registry, not an import: the vault apps never import
    ``compliance`` (docs/architecture.md, "Layout and dependency direction").
    """
    if not apps.is_installed("compliance"):
        return None
    run_model: Any = apps.get_model("compliance", "ComplianceRun")
    requirement_model: Any = apps.get_model("compliance", "RequirementResult")
    run = run_model.objects.filter(tenant=tenant, state="finished").order_by("-started_at").first()
    if run is None:
        return None
    counts = dict(
        requirement_model.objects.filter(run=run)
        .order_by()
        .values("finding")
        .annotate(n=Count("pk"))
        .values_list("finding", "n")
    )
    choices = requirement_model._meta.get_field("finding").choices
    findings = [(str(label), counts.get(value, 0)) for value, label in choices]
    integrity = run.integrity or {}
    return ComplianceSummary(
        run_id=str(run.pk),
        finished_at=run.finished_at,
        findings=findings,
        integrity_ok=bool(integrity["ok"]) if "ok" in integrity else None,
        integrity_problems=len(integrity.get("problems", [])),
    )


def audit_status(*, tenant: Tenant, compliance: ComplianceSummary | None) -> AuditStatus:
    log = log_of(tenant)
    checkpoint = latest_checkpoint(log)
    verified_ok = compliance.integrity_ok if compliance is not None else None
    return AuditStatus(
        checkpoint_size=checkpoint.size if checkpoint else None,
        checkpoint_at=checkpoint.created_at if checkpoint else None,
        pending=AuditEvent.objects.filter(log=log, leaf_entry__isnull=True).count(),
        verified_ok=verified_ok,
        verified_at=compliance.finished_at if compliance and verified_ok is not None else None,
    )


def pending_approvals_count(*, tenant: Tenant) -> int:
    return ApprovalRequest.objects.filter(
        tenant=tenant, state=RequestState.PENDING, expires_at__gt=timezone.now()
    ).count()


def dashboard_for_tenant(*, tenant: Tenant, role: str) -> Dashboard:
    """What the tenant dashboard shows a person of ``role``: only what its APIs let it read."""
    show_keys = role in KEY_READERS
    show_objects = role in OBJECT_READERS
    show_compliance = role in COMPLIANCE_READERS
    show_audit = role in AUDIT_READERS
    # The audit section's verdict comes from the last compliance run, read for it alone if need be.
    compliance = compliance_summary(tenant=tenant) if show_compliance or show_audit else None
    return Dashboard(
        show_keys=show_keys,
        show_objects=show_objects,
        show_compliance=show_compliance,
        show_audit=show_audit,
        backends=backend_statuses(tenant=tenant) if show_keys else [],
        objects=object_totals(tenant=tenant) if show_objects else None,
        compliance=compliance if show_compliance else None,
        audit=audit_status(tenant=tenant, compliance=compliance) if show_audit else None,
        pending_approvals=pending_approvals_count(tenant=tenant) if show_keys else None,
        compliance_installed=apps.is_installed("compliance"),
    )
