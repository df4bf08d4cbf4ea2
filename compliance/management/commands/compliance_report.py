"""manage.py compliance_report --tenant SLUG --format pdf|json|csv|pack --output PATH"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance.engine import latest_run
from compliance.exports import FORMATS, ExportError, export_run
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Write the export of a tenant's latest finished compliance run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's slug")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--output", required=True, help="the file to write ('-': stdout)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.get(slug=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(f"no tenant {options['tenant']!r}") from None
        run = latest_run(tenant)
        if run is None:
            raise CommandError(
                f"tenant {tenant.slug} has no finished compliance run; "
                f"run: manage.py compliance_run --tenant {tenant.slug}"
            )
        try:
            data = export_run(run, options["format"])
        except ExportError as exc:
            raise CommandError(f"{exc} ({exc.code})") from exc
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            raise CommandError(f"{exc} ({code})") from exc
        output = options["output"]
        if output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        path = Path(output)
        # Written next to the target and renamed: a failed export never leaves half a file.
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
        self.stderr.write(
            f"Wrote the {options['format']} export of run {run.pk} ({len(data)} bytes) to {path}."
        )
