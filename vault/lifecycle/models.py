"""Key lifecycle: rotations and the rewrap campaigns that follow them."""

from __future__ import annotations

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
    COMPROMISED = "compromised", "Key compromised"


# Stored headers are rewrapped in this order; ``phase`` and ``cursor`` say where a campaign is.
PHASES = ("versions", "blobs", "dedup_keys")


class Campaign(models.Model):
    """Rewrapping every data key of a tenant still under an older version of one of its keys.

    Only the recipient stanza of that key changes, atomically per stored header (compare and
    swap), so a crash never loses or corrupts an object and a header is never rewrapped twice.
    The campaign's own row says how far it got (``phase``, ``cursor``) and who works on it
    (``lease_owner`` until ``lease_until``): a worker that dies leaves a lease that expires, and
    the next scheduled run continues from the cursor.
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
    rewrapped = models.BigIntegerField(default=0)
    already_current = models.BigIntegerField(default=0)
    phase = models.CharField(max_length=20, default=PHASES[0])
    cursor = models.BigIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("priority", "created_at", "pk")

    def __str__(self) -> str:
        return f"rewrap of {self.binding} to v{self.target_version} ({self.state})"

    @property
    def progress(self) -> float:
        """Share of the stored headers looked at so far (1.0 when complete)."""
        if self.state != CampaignState.RUNNING:
            return 1.0
        seen = self.rewrapped + self.already_current
        return min(seen / self.total, 1.0) if self.total else 0.0
