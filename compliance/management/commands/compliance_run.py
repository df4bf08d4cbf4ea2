"""manage.py compliance_run --tenant SLUG: run every compliance check for a tenant now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance.engine import compliance_run
from compliance.models import Trigger
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Run every PCI-DSS check for a tenant and print the findings."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's slug")
        parser.add_argument("--quiet", action="store_true", help="print only the summary")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.get(slug=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(f"no tenant {options['tenant']!r}") from None
        quiet = options["quiet"]

        def progress(line: str) -> None:
            if not quiet:
                self.stderr.write(line)

        run = compliance_run(
            tenant, trigger=Trigger.MANUAL, requested_by="manage.py", progress=progress
        )
        if not quiet:
            for result in run.results.exclude(status="PASS").order_by("check_id"):
                self.stdout.write(
                    f"{result.status:<15} {result.check_id:<9} {result.resource_type}:"
                    f"{result.resource_id}  {result.detail}"
                )
        summary = run.summary
        results = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("results", {}).items()))
        findings = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("requirements", {}).items()))
        self.stdout.write(f"Run {run.pk} of {tenant.slug}: results {results}.")
        self.stdout.write(f"Requirements: {findings}.")
        if run.integrity and not run.integrity.get("ok", False):
            self.stdout.write(self.style.ERROR("The audit log did not verify; see LOG-004."))
