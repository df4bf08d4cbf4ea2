"""Scheduled jobs of the audit log."""

from __future__ import annotations

from celery import shared_task

from vault.audit.context import acting_as
from vault.audit.services import audit_integrate_all, audit_prune_all


@shared_task(name="vault.audit.integrate")
def integrate() -> int:
    """Give new events their leaf indices and sign checkpoints (the single writer per log)."""
    with acting_as("vault.audit.integrate"):
        return audit_integrate_all()


@shared_task(name="vault.audit.prune")
def prune() -> int:
    """Remove archived events older than the retention period (PCI-DSS 10.5.1)."""
    with acting_as("vault.audit.prune"):
        return audit_prune_all()
