from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.tenants.models import Role, Tenant
from vault.tokens.services import TokenError, token_create


class Command(BaseCommand):
    help = "Create an API token for a tenant (an integration token); it is printed once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--name", default="integration", help="a label for the token")
        parser.add_argument(
            "--days",
            type=int,
            default=settings.VAULT_TOKEN_DEFAULT_DAYS,
            help="lifetime in days (default: %(default)s)",
        )

    def handle(
        self, *args: Any, tenant: str, role: str, name: str, days: int, **options: Any
    ) -> None:
        try:
            target = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise CommandError(f"no tenant {tenant!r}") from None
        try:
            issued = token_create(tenant=target, name=name, role=role, lifetime_days=days)
        except TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(
            f"Token {issued.token.prefix}... for {target.slug} as {role}, "
            f"expires {issued.token.expires_at:%Y-%m-%d}. It is shown once:"
        )
        self.stdout.write(issued.clear)
