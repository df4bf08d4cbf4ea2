"""Which backend holds which key of a tenant."""

from __future__ import annotations

from django.db import models

from vault.tenants.models import Tenant


class KeyRole(models.TextChoices):
    """What a bound key does for its tenant."""

    PRIMARY = "primary", "Primary key-encryption key"
    RECOVERY = "recovery", "Recovery key-encryption key"
    SIGNING = "signing", "Signing key (audit checkpoints, attestations)"
    REPORT_CA = "report-ca", "Report CA key (issues the report signer's certificate)"
    REPORT_SIGNING = "report-signing", "Report signing key (compliance reports, evidence packs)"


class KeyBinding(models.Model):
    """A key of a tenant, held by a configured backend. The vault never holds the key itself.

    ``tenant`` is empty for the platform's signing key (in ``VAULT_SIGNING_BACKEND``), used for
    tenants whose backend cannot sign. The fingerprint is pinned at creation (PCI-DSS 3.7.7:
    protection against key substitution).
    """

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="key_bindings"
    )
    role = models.CharField(max_length=20, choices=KeyRole.choices)
    backend_alias = models.CharField(max_length=100)
    backend_kind = models.CharField(max_length=20)
    key_id = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the backend no longer reports the pinned fingerprint for the key's first version
    # (a substituted key): the key is used for nothing until an operator looks into it.
    suspended_at = models.DateTimeField(null=True, blank=True)
    # The version that wraps now, as of the last rotation the vault made (headers made before a
    # rotation but stored after it are rewrapped to it on the way in).
    current_version = models.PositiveIntegerField(default=1)
    # The fingerprints of the versions the vault's rotations made ({"2": "...", ...}); version
    # 1's is ``fingerprint``. A version the backend lists that is not pinned was not made here.
    pins = models.JSONField(default=dict, blank=True)
    suspended_reason = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        ordering = ("tenant_id", "role")
        constraints = [
            models.UniqueConstraint(fields=("tenant", "role"), name="one_key_per_tenant_role"),
            models.UniqueConstraint(
                fields=("role",),
                condition=models.Q(tenant__isnull=True),
                name="one_platform_key_per_role",
            ),
        ]

    def __str__(self) -> str:
        owner = self.tenant.slug if self.tenant else "platform"
        return f"{owner} {self.role} key in {self.backend_alias}"
