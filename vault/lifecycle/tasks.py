"""Scheduled jobs of the key lifecycle."""

from __future__ import annotations

from celery import shared_task

from vault.audit.context import acting_as
from vault.lifecycle.approvals import approvals_due
from vault.lifecycle.services import campaigns_run, keys_rotate_due


# The campaigns' rows are the result (nothing waits on the task's): a rotation that prompts
# a worker then needs only the broker, not a result-backend subscription.
@shared_task(name="vault.lifecycle.run_campaigns", ignore_result=True)
def run_campaigns() -> int:
    """Work on running rewrap campaigns for up to about 50 seconds (a lease per campaign)."""
    with acting_as("vault.lifecycle.run_campaigns"):
        return campaigns_run()


@shared_task(name="vault.lifecycle.rotate_due")
def rotate_due() -> int:
    """Rotate the keys whose cryptoperiod has ended."""
    with acting_as("vault.lifecycle.rotate_due"):
        return keys_rotate_due()


@shared_task(name="vault.lifecycle.approvals_due")
def run_approvals_due() -> int:
    """Expire late approval requests; run approved ones whose waiting period is over."""
    with acting_as("vault.lifecycle.approvals_due"):
        return approvals_due()
