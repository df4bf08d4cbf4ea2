"""Tenants, roles and memberships."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Role(models.TextChoices):
    """A member's role in one tenant.

    owner: everything in the tenant. custodian: keys and approvals. member: objects (people and
    integrations). auditor: reads everything, changes nothing.
    """

    OWNER = "owner", "Owner"
    CUSTODIAN = "custodian", "Custodian"
    MEMBER = "member", "Member"
    AUDITOR = "auditor", "Auditor"


def role_covers(holder: str, wanted: str) -> bool:
    """Whether a holder of role ``holder`` may hand out role ``wanted`` (to a token, say).

    An owner can do everything in the tenant, so it covers every role; any other role covers
    only itself.
    """
    return holder == Role.OWNER or holder == wanted


slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "A slug is 1 to 50 lowercase letters, digits and inner hyphens.",
    code="invalid_slug",
)


class Tenant(models.Model):
    """An isolated customer of the vault. Deactivated, never hard-deleted once it has history."""

    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Store identical gateway content once (docs/objects.md, "Deduplication"): off by default,
    # because it tells members of the tenant whether content they hold is already stored.
    deduplicate = models.BooleanField(default=False)
    # Set when the tenant's keys were destroyed (crypto-shredding): gateway content is gone.
    shredded_at = models.DateTimeField(null=True, blank=True)
    # The tenant's own cryptoperiod for its wrapping keys, at most the platform's
    # (VAULT_KEK_CRYPTOPERIOD_DAYS); empty: the platform's.
    kek_cryptoperiod_days = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A user's one membership, and one role, in one tenant."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("tenant", "user__email")
        constraints = [
            models.UniqueConstraint(fields=("tenant", "user"), name="one_membership_per_tenant"),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.tenant}"
