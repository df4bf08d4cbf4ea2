"""Scheduled jobs of the keys app."""

from __future__ import annotations

from celery import shared_task

from vault.audit.context import acting_as
from vault.keys.services import keys_health_check


@shared_task(name="vault.keys.health_check")
def health_check() -> int:
    """Check every bound key's pinned fingerprint against its backend; returns the problems."""
    with acting_as("vault.keys.health_check"):
        return len(keys_health_check())
