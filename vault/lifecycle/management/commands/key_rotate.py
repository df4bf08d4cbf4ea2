"""Rotate a tenant's wrapping key and start the campaign that rewraps its data keys."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.audit.context import acting_as
from vault.keys.models import KeyRole
from vault.lifecycle.services import LifecycleError, key_mark_compromised, key_rotate
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = "Rotate a tenant's primary (or recovery) key; a campaign then rewraps its data keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, metavar="SLUG")
        parser.add_argument(
            "--role", choices=[KeyRole.PRIMARY, KeyRole.RECOVERY], default=KeyRole.PRIMARY
        )
        parser.add_argument(
            "--compromised",
            action="store_true",
            help="the current version is compromised: stop it wrapping, rewrap before all else",
        )

    def handle(self, *args: Any, tenant: str, role: str, compromised: bool, **kw: Any) -> None:
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant {tenant!r}")
        with acting_as("manage.py key_rotate"):
            try:
                if compromised:
                    campaign = key_mark_compromised(tenant=found, role=role)
                else:
                    campaign = key_rotate(tenant=found, role=role)
            except LifecycleError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{tenant}: {role} key now at version {campaign.target_version}; campaign "
            f"{campaign.pk} will rewrap {campaign.total} stored header(s)"
        )
