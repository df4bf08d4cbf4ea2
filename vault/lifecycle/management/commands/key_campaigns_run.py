"""Work on running rewrap campaigns now (what the scheduled job does every minute)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from vault.audit.context import acting_as
from vault.lifecycle.models import Campaign, CampaignState
from vault.lifecycle.services import campaigns_run


class Command(BaseCommand):
    help = "Run rewrap campaigns until they are done (or --max-seconds pass)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--max-seconds", type=float, default=3600.0)

    def handle(self, *args: Any, max_seconds: float, **options: Any) -> None:
        deadline = time.monotonic() + max_seconds
        running = Campaign.objects.filter(state=CampaignState.RUNNING)
        with acting_as("manage.py key_campaigns_run"):
            while running.exists() and time.monotonic() < deadline:
                worked = campaigns_run(max_seconds=deadline - time.monotonic())
                if not worked:
                    time.sleep(1)  # another worker's lease: wait for it to end or expire
        left = running.count()
        self.stdout.write(f"{left} campaign(s) still running")
