"""Scheduled compliance runs: every active tenant, once a day (PCI-DSS evidence stays fresh)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from compliance.engine import compliance_run, tenants_due
from compliance.models import Trigger

logger = logging.getLogger(__name__)


@shared_task(name="compliance.run_due")
def run_due() -> int:
    """Run the checks for every tenant whose last scheduled run is a day old; returns how many.

    One tenant's failure (its audit log cannot be written, say) does not stop the others.
    """
    done = 0
    for tenant in tenants_due(timezone.now()):
        try:
            compliance_run(tenant, trigger=Trigger.SCHEDULE, requested_by="schedule")
            done += 1
        except Exception:
            logger.exception("scheduled compliance run failed for tenant %s", tenant.slug)
    return done


# The run's row is its result: nothing waits on the task's, and a web process that enqueues
# it then needs only the broker (no result-backend subscription, which retries for 20 s when
# Redis is down before it fails).
@shared_task(name="compliance.evaluate", ignore_result=True)
def evaluate(run_id: str) -> str:
    """Evaluate a run started from the API or the console."""
    from compliance.engine import run_evaluate
    from compliance.models import ComplianceRun, RunState

    run = ComplianceRun.objects.select_related("tenant").get(pk=run_id)
    if run.state != RunState.RUNNING:
        return str(run.state)
    return str(run_evaluate(run).state)
