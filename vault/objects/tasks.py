"""Scheduled jobs of the objects app."""

from __future__ import annotations

from celery import shared_task

from vault.objects.services import objects_purge_deleted


@shared_task(name="vault.objects.purge_deleted")
def purge_deleted() -> int:
    """Remove objects whose retention window after deletion has passed (idempotent)."""
    return objects_purge_deleted()
