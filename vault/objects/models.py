"""Objects and their immutable versions. The database holds metadata and envelope headers; the
ciphertext bodies live in Django's default storage, one stored file per version."""

from __future__ import annotations

from django.db import models

from vault.tenants.models import Tenant
from vault.tokens.models import ApiToken


class ObjectMode(models.TextChoices):
    """Gateway: the vault encrypts and decrypts. Client: the client does, the vault cannot."""

    GATEWAY = "gateway", "Gateway (the vault encrypts)"
    CLIENT = "client", "Client-side (the vault holds an envelope it cannot open)"


class StoredObject(models.Model):
    """A named object of a tenant. Names are unique among a tenant's live objects."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="stored_objects")
    name = models.CharField(max_length=1024)
    mode = models.CharField(max_length=10, choices=ObjectMode.choices)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Soft delete: hidden from lists and reads at once, purged after the retention window.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("name", "pk")
        constraints = [
            models.UniqueConstraint(
                fields=("tenant", "name"),
                condition=models.Q(deleted_at__isnull=True),
                name="one_live_object_per_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}:{self.pk}"


class ObjectVersion(models.Model):
    """One immutable version: its envelope header (with the wrapped DEKs) and where its body is.

    ``size`` is the plaintext length; ``body_size`` the stored ciphertext's. Each version has its
    own data key.
    """

    object = models.ForeignKey(StoredObject, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    size = models.BigIntegerField()
    body_size = models.BigIntegerField()
    header = models.BinaryField()
    storage_name = models.CharField(max_length=300)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("object", "number")
        constraints = [
            models.UniqueConstraint(fields=("object", "number"), name="one_version_number"),
        ]

    def __str__(self) -> str:
        return f"{self.object} v{self.number}"


class HeaderHistory(models.Model):
    """A client-side version's header as it was before a rewrap replaced its stanzas."""

    version = models.ForeignKey(ObjectVersion, on_delete=models.CASCADE, related_name="+")
    header = models.BinaryField()
    replaced_at = models.DateTimeField(auto_now_add=True)
    replaced_by = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("version", "replaced_at")
        verbose_name_plural = "header history"

    def __str__(self) -> str:
        return f"{self.version} header replaced {self.replaced_at:%Y-%m-%d}"
