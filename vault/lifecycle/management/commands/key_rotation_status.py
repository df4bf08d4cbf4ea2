"""Show a tenant's rewrap campaigns and how far each has come."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.lifecycle.models import Campaign
from vault.lifecycle.services import campaign_status
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Progress of a tenant's key rotation campaigns."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, metavar="SLUG")

    def handle(self, *args: Any, tenant: str, **options: Any) -> None:
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant {tenant!r}")
        campaigns = Campaign.objects.filter(tenant=found).select_related("binding")
        if not campaigns:
            self.stdout.write(f"{tenant}: no rotation campaigns")
            return
        for campaign in campaigns.order_by("created_at"):
            status = campaign_status(campaign)
            line = (
                f"campaign {status['id']}: {status['role']} key to v{status['target_version']} "
                f"({status['reason']}) {status['state']}, {status['progress']:.1%} "
                f"({status['rewrapped']} rewrapped, {status['already_current']} already current "
                f"of {status['total']})"
            )
            if status["last_error"]:
                line += f"; last error: {status['last_error']}"
            self.stdout.write(line)
