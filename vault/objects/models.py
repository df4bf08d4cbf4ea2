"""Objects and their immutable versions. The database holds metadata and envelope headers; the
ciphertext bodies live in Django's default storage, one stored file per version."""

from __future__ import annotations

import uuid

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
    # Crypto-shredded: the keys that wrapped its data keys are destroyed; reads answer 410.
    shredded_at = models.DateTimeField(null=True, blank=True)

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


class Blob(models.Model):
    """Deduplicated content of one tenant, stored once and shared by the versions that hold it.

    Its data key derives from the tenant's deduplication key and the content; its encryption
    context is ``{"tenant": slug, "blob": digest}``. ``digest`` is an HMAC under that key, not
    the content's hash, so it confirms nothing to someone without the key.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="blobs")
    digest = models.CharField(max_length=64)
    size = models.BigIntegerField()
    body_size = models.BigIntegerField()
    header = models.BinaryField()
    storage_name = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("tenant", "pk")
        constraints = [
            models.UniqueConstraint(fields=("tenant", "digest"), name="one_blob_per_content"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}:blob:{self.digest[:12]}"


class DedupKey(models.Model):
    """A tenant's deduplication key, as an envelope header with no body: the key wrapped by the
    tenant's keys (context ``{"tenant": slug, "purpose": "dedup"}``) and its commitment."""

    tenant = models.OneToOneField(Tenant, on_delete=models.PROTECT, related_name="dedup_key")
    header = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"dedup key of {self.tenant.slug}"


class ObjectVersion(models.Model):
    """One immutable version: its envelope header (with the wrapped DEKs) and where its body is.

    ``size`` is the plaintext length; ``body_size`` the stored ciphertext's. Each version has its
    own data key, except a deduplicated one: it points at a ``Blob`` (which holds the header and
    the body) and has no header or stored file of its own.
    """

    object = models.ForeignKey(StoredObject, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    size = models.BigIntegerField()
    body_size = models.BigIntegerField()
    header = models.BinaryField()
    storage_name = models.CharField(max_length=300)
    blob = models.ForeignKey(
        Blob, null=True, blank=True, on_delete=models.PROTECT, related_name="versions"
    )
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


class UploadSession(models.Model):
    """A resumable upload: the client sends parts at increasing offsets, in as many requests
    (and connections, and days) as it needs; the version appears when the last part arrives.

    Gateway parts are encrypted as they arrive, each under its own data key wrapped by the
    tenant's keys, and re-encrypted into the version's envelope at completion. Client-side
    parts are pieces of the client's envelope, made for version ``number``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    object = models.ForeignKey(
        StoredObject, on_delete=models.CASCADE, related_name="upload_sessions"
    )
    length = models.BigIntegerField()
    received = models.BigIntegerField(default=0)
    number = models.PositiveIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set, in the same transaction that records it, when the last part made the version.
    version = models.ForeignKey(
        ObjectVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("created_at", "pk")

    def __str__(self) -> str:
        return f"upload {self.pk} to {self.object}"


class UploadPart(models.Model):
    """One received part of an upload session: the bytes at ``offset`` to ``offset + size``."""

    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="parts")
    offset = models.BigIntegerField()
    size = models.BigIntegerField()
    header = models.BinaryField(default=b"")  # gateway: the part's own envelope header
    storage_name = models.CharField(max_length=300)

    class Meta:
        ordering = ("session", "offset")
        constraints = [
            models.UniqueConstraint(fields=("session", "offset"), name="one_part_per_offset"),
        ]

    def __str__(self) -> str:
        return f"{self.session} @{self.offset}"
