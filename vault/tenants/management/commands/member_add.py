from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.accounts.services import password_setup_url
from vault.tenants.models import Role, Tenant
from vault.tenants.services import AlreadyMember, member_add


class Command(BaseCommand):
    help = "Add a person to a tenant with a role; a new user gets a one-time password set-up link."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--email", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="the console's address, for the set-up link (default: %(default)s)",
        )

    def handle(
        self, *args: Any, tenant: str, email: str, role: str, base_url: str, **options: Any
    ) -> None:
        try:
            target = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise CommandError(f"no tenant {tenant!r}") from None
        try:
            membership, created = member_add(tenant=target, email=email, role=role)
        except AlreadyMember as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Added {membership.user.email} to {target.slug} as {role}.")
        if created:
            hours = settings.PASSWORD_RESET_TIMEOUT // 3600
            self.stdout.write(f"Password set-up link (one use, {hours} hours):")
            self.stdout.write(password_setup_url(None, membership.user, base_url=base_url))
