"""Key lifecycle: rotations and the rewrap campaigns that follow them."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from vault.keys.models import KeyBinding
from vault.tenants.models import Tenant


class CampaignState(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETE = "complete", "Complete"
    SUPERSEDED = "superseded", "Superseded by a later rotation"


class CampaignReason(models.TextChoices):
    MANUAL = "manual", "Requested"
    CRYPTOPERIOD = "cryptoperiod", "Cryptoperiod ending"
    USAGE = "usage", "Usage bound reached"
    COMPROMISED = "compromised", "Key compromised"


# Stored headers are rewrapped in this order; ``phase`` and ``cursor`` say where a campaign is.
PHASES = ("versions", "blobs", "dedup_keys")


class Campaign(models.Model):
    """Rewrapping every data key of a tenant still under an older version of one of its keys.

    Only the recipient stanza of that key changes, atomically per stored header (compare and
    swap), so a crash never loses or corrupts an object and a header is never rewrapped twice.
    The work is split into ``slices`` (contiguous ranges of the stored headers' primary keys);
    each slice's row says how far it got and who works on it, so several workers share a
    campaign, and a worker that dies leaves a lease that expires.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    binding = models.ForeignKey(KeyBinding, on_delete=models.PROTECT, related_name="campaigns")
    target_version = models.PositiveIntegerField()
    reason = models.CharField(max_length=20, choices=CampaignReason.choices)
    priority = models.SmallIntegerField(default=10)  # lower runs first; compromised keys: 0
    state = models.CharField(
        max_length=20, choices=CampaignState.choices, default=CampaignState.RUNNING
    )
    total = models.BigIntegerField(default=0)
    slices = models.PositiveSmallIntegerField(default=1)
    # Per phase, the lowest and highest primary key of the headers when it started.
    bounds = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("priority", "created_at", "pk")

    def __str__(self) -> str:
        return f"rewrap of {self.binding} to v{self.target_version} ({self.state})"


class CampaignSlice(models.Model):
    """One share of a campaign: in each phase, the ``number``-th of ``slices`` equal ranges of
    primary keys, walked in primary-key order."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="parts")
    number = models.PositiveSmallIntegerField()
    phase = models.CharField(max_length=20, default=PHASES[0])
    cursor = models.BigIntegerField(default=0)
    done = models.BooleanField(default=False)
    rewrapped = models.BigIntegerField(default=0)
    already_current = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)  # headers that could not be rewrapped (logged)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("campaign", "number")
        constraints = [
            models.UniqueConstraint(fields=("campaign", "number"), name="one_slice_per_number"),
        ]

    def __str__(self) -> str:
        return f"slice {self.number} of {self.campaign}"


class ApprovalAction(models.TextChoices):
    KEY_DESTROY = "key.destroy", "Destroy the tenant's keys (crypto-shred its gateway objects)"
    OWNER_ADD = "member.owner.add", "Make a person an owner of the tenant"
    CUSTODIAN_ADD = "member.custodian.add", "Make a person a key custodian of the tenant"
    POLICY_LOOSEN = "tenant.policy.loosen", "Loosen the tenant's policy (turn deduplication on)"


class RequestState(models.TextChoices):
    PENDING = "pending", "Waiting for approvals"
    APPROVED = "approved", "Approved; waiting for the end of the waiting period"
    EXECUTING = "executing", "Running (it can no longer be cancelled)"
    EXECUTED = "executed", "Done"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Expired before enough approvals"
    CANCELLED = "cancelled", "Cancelled"


class ApprovalRequest(models.Model):
    """An action that needs dual control: M approvals from distinct custodians, never the
    requester's own, before it may run; it expires if they do not come in time."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=40, choices=ApprovalAction.choices)
    params = models.JSONField(default=dict, blank=True)
    reason = models.TextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    required = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=20, choices=RequestState.choices, default=RequestState.PENDING
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    finished_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-requested_at", "-pk")

    def __str__(self) -> str:
        return f"{self.action} for {self.tenant.slug} ({self.state})"


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    DENY = "deny", "Deny"


class Approval(models.Model):
    """One custodian's decision on a request; one per person per request."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="votes")
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    reason = models.TextField(blank=True, default="")
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("request", "decided_at")
        constraints = [
            models.UniqueConstraint(fields=("request", "approver"), name="one_vote_per_person"),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision}s {self.request}"


class DestructionCertificate(models.Model):
    """The signed record of a crypto-shred: which keys, which objects, who approved, when."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    request = models.OneToOneField(
        ApprovalRequest, on_delete=models.PROTECT, related_name="certificate"
    )
    body = models.BinaryField()  # canonical JSON (RFC 8785)
    signature = models.TextField()  # base64 of a DER ECDSA P-256 signature over ``body``
    signing_key = models.TextField()  # the verifier key (vkey) of the tenant's signing key
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"destruction certificate of {self.tenant.slug}"
