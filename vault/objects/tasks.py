"""Scheduled jobs of the objects app."""

from __future__ import annotations

from celery import shared_task

from vault.objects.services import objects_purge_deleted, storage_sweep_orphans
from vault.objects.uploads import uploads_purge_expired


@shared_task(name="vault.objects.purge_deleted")
def purge_deleted() -> int:
    """Remove objects whose retention window after deletion has passed (idempotent)."""
    return objects_purge_deleted()


@shared_task(name="vault.objects.sweep_orphans")
def sweep_orphans() -> int:
    """Remove stored bodies that no version names, left by a crash mid-upload (idempotent)."""
    return storage_sweep_orphans()


@shared_task(name="vault.objects.purge_expired_uploads")
def purge_expired_uploads() -> int:
    """Remove upload sessions past their expiry, with their parts (idempotent)."""
    return uploads_purge_expired()
