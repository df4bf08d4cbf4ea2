"""``manage.py user_unlock EMAIL``: lift a sign-in lockout (PCI-DSS 8.3.4)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.accounts.models import User
from vault.accounts.services import user_unlock


class Command(BaseCommand):
    help = (
        "Lift the sign-in lockout of the user with this e-mail address and clear the failure "
        "count. Confirm the person's identity first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="the user's e-mail address")

    def handle(self, *args: Any, **options: Any) -> None:
        email: str = options["email"].strip()
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"No user has the e-mail address {email!r}.")
        was_locked = user.is_locked()
        user_unlock(user=user)
        if was_locked:
            self.stdout.write(self.style.SUCCESS(f"Unlocked {user.email}."))
        else:
            self.stdout.write(f"{user.email} was not locked; the failure count is now zero.")
