"""The audit log: events, their place in each log's Merkle tree, and signed checkpoints.

Each tenant has its own log; events without a tenant go to the platform log. ``log`` names the
log (``t<tenant id>`` or ``platform``). Events, leaves and checkpoints are insert-only: database
triggers reject UPDATE and TRUNCATE, and DELETE outside the retention job's guarded path
(``docs/audit.md``). The cryptography is the real control: a changed row no longer matches the
signed checkpoints.
"""

from __future__ import annotations

from django.db import models

from vault.tenants.models import Tenant

PLATFORM_LOG = "platform"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"


class AuditEvent(models.Model):
    """One security-relevant event (PCI-DSS 10.2.2 fields), with its canonical JSON ``leaf``.

    The columns are for queries; ``leaf`` is what the log commits to, and verification checks
    that the two agree.
    """

    uuid = models.UUIDField(unique=True)
    log = models.CharField(max_length=40)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    time = models.DateTimeField()
    type = models.CharField(max_length=64)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    actor_kind = models.CharField(max_length=20)
    actor_id = models.CharField(max_length=200)
    auth = models.CharField(max_length=40)
    ip = models.CharField(max_length=64)
    user_agent = models.CharField(max_length=512)
    request_id = models.CharField(max_length=64)
    resource_type = models.CharField(max_length=64)
    resource_id = models.CharField(max_length=300)
    leaf = models.BinaryField()

    class Meta:
        ordering = ("log", "pk")
        indexes = [
            models.Index(fields=("log", "time"), name="audit_event_log_time"),
            models.Index(fields=("log", "type"), name="audit_event_log_type"),
        ]

    def __str__(self) -> str:
        return f"{self.log} {self.type} {self.time:%Y-%m-%dT%H:%M:%SZ}"


class AuditLeaf(models.Model):
    """An event's place in its log: leaf ``index`` of the log's Merkle tree.

    Assigned by the single integrator, in event order, with no gaps.
    """

    log = models.CharField(max_length=40)
    index = models.BigIntegerField()
    # No database constraint: retention deletes old events and keeps their leaves (the hashes
    # the tree needs), and the triggers forbid the UPDATE a SET NULL would be.
    event = models.OneToOneField(
        AuditEvent,
        null=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="leaf_entry",
    )
    hash = models.BinaryField()

    class Meta:
        ordering = ("log", "index")
        constraints = [
            models.UniqueConstraint(fields=("log", "index"), name="one_leaf_per_index"),
        ]

    def __str__(self) -> str:
        return f"{self.log} leaf {self.index}"


class AuditCheckpoint(models.Model):
    """A signed checkpoint (C2SP tlog-checkpoint in a signed note) of a log at ``size``."""

    log = models.CharField(max_length=40)
    size = models.BigIntegerField()
    root = models.BinaryField()
    note = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("log", "size")
        constraints = [
            models.UniqueConstraint(fields=("log", "size"), name="one_checkpoint_per_size"),
        ]

    def __str__(self) -> str:
        return f"{self.log} checkpoint at {self.size}"


class AuditLogHead(models.Model):
    """The integrator's working state of one log: its size and the right edge of its tree.

    Only a cache (everything in it follows from the leaves); its row lock makes the integrator
    the single writer of leaf indices.
    """

    log = models.CharField(max_length=40, unique=True)
    size = models.BigIntegerField(default=0)
    frontier = models.JSONField(default=list)  # [[level, hex hash], ...] left to right

    def __str__(self) -> str:
        return f"{self.log} at {self.size}"


class AuditArchive(models.Model):
    """An export that an operator keeps as the archive of a log up to ``size`` leaves
    (``manage.py audit_export --archive``). Retention removes only archived events."""

    log = models.CharField(max_length=40)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("log", "size")

    def __str__(self) -> str:
        return f"{self.log} archived up to {self.size}"


class AuditPrune(models.Model):
    """A retention run: the events of leaves below ``below_index`` were deleted (their leaves,
    checkpoints and this row stay)."""

    log = models.CharField(max_length=40)
    below_index = models.BigIntegerField()
    cutoff = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("log", "below_index")

    def __str__(self) -> str:
        return f"{self.log} pruned below {self.below_index}"


class AuditPruneGuard(models.Model):
    """Present only inside the retention job's transaction: the triggers let DELETE through."""

    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"prune guard {self.pk}"
