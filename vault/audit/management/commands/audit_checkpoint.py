"""Integrate pending audit events and sign checkpoints now (the scheduled job, on demand)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.audit.context import acting_as
from vault.audit.models import PLATFORM_LOG
from vault.audit.services import audit_integrate, log_of, logs_with_pending_events
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Give new audit events their leaf indices and sign a checkpoint of each changed log."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="only this tenant's log")
        parser.add_argument("--platform", action="store_true", help="only the platform log")

    def handle(self, *args: Any, tenant: str | None, platform: bool, **options: Any) -> None:
        if tenant:
            found = Tenant.objects.filter(slug=tenant).first()
            if found is None:
                raise CommandError(f"no tenant {tenant!r}")
            logs = [log_of(found)]
        elif platform:
            logs = [PLATFORM_LOG]
        else:
            logs = logs_with_pending_events()
        with acting_as("manage.py audit_checkpoint"):
            for log in logs:
                try:
                    made = audit_integrate(log)
                except Exception as exc:
                    raise CommandError(
                        f"{log}: no checkpoint ({type(exc).__name__}: {exc})"
                    ) from exc
                if made is None:
                    self.stdout.write(f"{log}: nothing new")
                else:
                    self.stdout.write(f"{log}: checkpoint at size {made.size}")
