"""API tokens."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from vault.tenants.models import Role, Tenant


class ApiToken(models.Model):
    """A bearer token for the REST API, scoped to one tenant with one role.

    The token itself is shown once at creation and never stored: only ``key_id`` (the public,
    indexed part) and an HMAC-SHA256 of the whole token under ``VAULT_TOKEN_HMAC_KEY`` are kept.
    A token never carries more than whoever created it could do, at creation and at every use.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="api_tokens")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=20, choices=Role.choices)
    key_id = models.CharField(max_length=24, unique=True)
    digest = models.CharField(max_length=64)
    # The person the token acts for (None: an integration token made by a platform operator).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_tokens",
    )
    # The token that created this one through the API, if any: revoking it revokes this one.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant.slug}, {self.role})"

    @property
    def prefix(self) -> str:
        """The public start of the token, safe to show in lists and logs."""
        return f"cvt_{self.key_id}"

    def is_live(self, now: object = None) -> bool:
        moment = now or timezone.now()
        return self.revoked_at is None and self.expires_at > moment  # type: ignore[operator]
