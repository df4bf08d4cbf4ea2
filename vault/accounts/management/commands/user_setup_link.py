from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.accounts.models import User
from vault.accounts.services import password_setup_url


class Command(BaseCommand):
    help = (
        "Print a one-time link for a person to choose a password (a first password, or a reset "
        "after you have confirmed who is asking). Hand it to the person only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="the console's address (default: %(default)s)",
        )

    def handle(self, *args: Any, email: str, base_url: str, **options: Any) -> None:
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"no user {email!r}")
        hours = settings.PASSWORD_RESET_TIMEOUT // 3600
        self.stderr.write(f"Password set-up link for {user.email} (one use, {hours} hours):")
        self.stdout.write(password_setup_url(None, user, base_url=base_url))
