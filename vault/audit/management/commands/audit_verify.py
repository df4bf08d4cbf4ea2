"""Check the stored audit logs against their signed checkpoints; non-zero exit on any problem."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.audit.models import PLATFORM_LOG, AuditCheckpoint
from vault.audit.services import audit_verify, log_of
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify audit logs: every leaf, column, index and checkpoint signature."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="only this tenant's log")

    def _progress(self, log: str) -> Callable[[int], None]:
        def report(count: int) -> None:
            self.stderr.write(f"{log}: {count} leaves checked")

        return report

    def handle(self, *args: Any, tenant: str | None, **options: Any) -> None:
        if tenant:
            found = Tenant.objects.filter(slug=tenant).first()
            if found is None:
                raise CommandError(f"no tenant {tenant!r}")
            logs = [log_of(found)]
        else:
            logs = sorted(set(AuditCheckpoint.objects.values_list("log", flat=True)))
            logs = logs or [PLATFORM_LOG]
        failed = 0
        for log in logs:
            report = audit_verify(log, progress=self._progress(log))
            if report.ok:
                self.stdout.write(
                    f"{log}: OK, {report.leaves} leaves, {report.checkpoints} checkpoints, "
                    f"{report.pending} not yet integrated"
                )
                continue
            failed += 1
            for problem in report.problems:
                self.stdout.write(f"{log}: FAILED: {problem}")
        if failed:
            sys.exit(1)
