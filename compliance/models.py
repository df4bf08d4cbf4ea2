"""Compliance runs, their immutable results, evidence, waivers, attestations and the report
signing certificates (docs/compliance.md)."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models

from vault.keys.models import KeyBinding
from vault.tenants.models import Tenant


class Status(models.TextChoices):
    """What a check found about one resource."""

    PASS = "PASS", "Pass"
    FAIL = "FAIL", "Fail"
    MANUAL = "MANUAL", "Manual (needs people)"
    ERROR = "ERROR", "Error (could not read its data)"
    NOT_APPLICABLE = "NOT_APPLICABLE", "Not applicable"
    WAIVED = "WAIVED", "Waived"


class Finding(models.TextChoices):
    """What the assessor writes for a requirement (PCI-DSS ROC v4.x)."""

    IN_PLACE = "IN_PLACE", "In Place"
    NOT_IN_PLACE = "NOT_IN_PLACE", "Not in Place"
    NOT_TESTED = "NOT_TESTED", "Not Tested"
    NOT_APPLICABLE = "NOT_APPLICABLE", "Not Applicable"


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", "Scheduled"
    MANUAL = "manual", "Command line"
    API = "api", "API or console"


class RunState(models.TextChoices):
    RUNNING = "running", "Running"
    FINISHED = "finished", "Finished"
    FAILED = "failed", "Failed"


class Immutable(models.Model):
    """A row that is written once: saving it again, or deleting it, raises."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableRecord(f"{type(self).__name__} {self.pk} is immutable")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableRecord(f"{type(self).__name__} {self.pk} is immutable")


class ImmutableRecord(Exception):
    code = "immutable_record"


class ComplianceRun(models.Model):
    """One evaluation of every check for one tenant."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    requested_by = models.CharField(max_length=200, blank=True, default="")
    state = models.CharField(max_length=10, choices=RunState.choices, default=RunState.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    engine_version = models.CharField(max_length=40)
    catalog_sha256 = models.CharField(max_length=64)
    # {"origin", "size", "root" (base64), "note"}: the tenant log's checkpoint then.
    checkpoint_start = models.JSONField(default=dict)
    # Events of the tenant's and the platform's logs still waiting for a checkpoint when the run
    # started, before it integrated the tenant's log (LOG-008 judges the pipeline's lag on it).
    pending_at_start = models.JSONField(default=dict)
    checkpoint_end = models.JSONField(default=dict)
    summary = models.JSONField(default=dict)
    # The audit log's own verification at the run's end: {"ok": bool, "problems": [...]}.
    integrity = models.JSONField(default=dict)
    anchor_event = models.UUIDField(null=True, blank=True)  # the compliance.evidence event
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-started_at",)
        indexes = [models.Index(fields=("tenant", "-started_at"), name="run_tenant_started")]

    def __str__(self) -> str:
        return f"compliance run {self.pk} of {self.tenant_id}"


class Evidence(models.Model):
    """What a check looked at, as canonical JSON, stored once per tenant under its SHA-256."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    sha256 = models.CharField(max_length=64)
    kind = models.CharField(max_length=40)
    body = models.BinaryField()
    size = models.BigIntegerField()
    collected_at = models.DateTimeField()

    class Meta:
        ordering = ("tenant", "pk")
        constraints = [
            models.UniqueConstraint(fields=("tenant", "sha256"), name="one_evidence_per_digest")
        ]

    def __str__(self) -> str:
        return f"evidence {self.sha256[:12]}"


class CheckResult(Immutable):
    """One check's verdict on one resource in one run."""

    run = models.ForeignKey(ComplianceRun, on_delete=models.PROTECT, related_name="results")
    check_id = models.CharField(max_length=20)
    check_version = models.CharField(max_length=20)
    finding_id = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices)
    severity = models.CharField(max_length=20)
    resource_type = models.CharField(max_length=40)
    resource_id = models.CharField(max_length=300)
    detail = models.TextField()
    observed = models.JSONField(default=dict)
    evidence = models.JSONField(default=list)  # SHA-256 digests of Evidence rows
    waiver = models.ForeignKey(
        "Waiver", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ("run", "check_id", "resource_type", "resource_id")
        indexes = [models.Index(fields=("run", "check_id"), name="result_run_check")]

    def __str__(self) -> str:
        return f"{self.check_id} {self.status} {self.resource_type}:{self.resource_id}"


class RequirementResult(Immutable):
    """A requirement's finding in one run."""

    run = models.ForeignKey(ComplianceRun, on_delete=models.PROTECT, related_name="requirements")
    ref = models.CharField(max_length=20)
    finding = models.CharField(max_length=20, choices=Finding.choices)
    narrative = models.TextField()
    guardrails = models.JSONField(default=list)
    compensating_control_used = models.BooleanField(default=False)
    attestations = models.JSONField(default=list)  # ids of the attestations it counted

    class Meta:
        ordering = ("run", "ref")

    def __str__(self) -> str:
        return f"{self.ref} {self.finding}"


class WaiverState(models.TextChoices):
    PENDING = "pending", "Waiting for approvals"
    ACTIVE = "active", "Active"
    REJECTED = "rejected", "Rejected"
    REVOKED = "revoked", "Revoked"


class Waiver(models.Model):
    """An accepted risk: one check's findings (all, or one resource's) count as WAIVED until
    ``expires_at``, once two people other than the requester approved it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    check_id = models.CharField(max_length=20)
    finding_id = models.CharField(max_length=64, blank=True, default="")  # empty: every finding
    justification = models.TextField()
    compensating_control = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=10, choices=WaiverState.choices, default="pending")
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-requested_at", "-pk")

    def __str__(self) -> str:
        return f"waiver {self.pk} of {self.check_id}"


class WaiverApproval(models.Model):
    waiver = models.ForeignKey(Waiver, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    approve = models.BooleanField()
    reason = models.TextField(blank=True, default="")
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("waiver", "decided_at")
        constraints = [
            models.UniqueConstraint(fields=("waiver", "approver"), name="one_vote_per_approver")
        ]

    def __str__(self) -> str:
        return f"{'approval' if self.approve else 'rejection'} of waiver {self.waiver_id}"


class Attestation(Immutable):
    """A person's statement for a requirement that needs people, signed by the tenant's signing
    key on their behalf (``body`` is canonical JSON; ``signature`` base64 DER ECDSA)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    requirement = models.CharField(max_length=20)
    kind = models.CharField(max_length=40)
    statement = models.TextField()
    document_sha256 = models.CharField(max_length=64, blank=True, default="")
    signer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signed_at = models.DateTimeField()
    valid_until = models.DateTimeField()
    body = models.BinaryField()
    signature = models.TextField()
    signing_key = models.TextField()  # the verifier key (vkey) that signed

    class Meta:
        ordering = ("tenant", "requirement", "-signed_at")

    def __str__(self) -> str:
        return f"attestation {self.pk} for {self.requirement}"


class CertificateKind(models.TextChoices):
    CA = "ca", "Report CA"
    SIGNER = "signer", "Report signer"


class ReportCertificate(models.Model):
    """A certificate of the report-signing chain; its private key stays in ``binding``'s backend."""

    kind = models.CharField(max_length=10, choices=CertificateKind.choices)
    binding = models.ForeignKey(KeyBinding, on_delete=models.PROTECT, related_name="+")
    key_version = models.PositiveIntegerField()
    pem = models.TextField()
    fingerprint = models.CharField(max_length=64)  # SHA-256 of the DER certificate
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("kind", "-created_at")

    def __str__(self) -> str:
        return f"{self.kind} certificate {self.fingerprint[:12]}"
