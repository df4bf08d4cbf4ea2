"""Password validators for PCI-DSS 8.3.6 (composition) and 8.3.7 (history)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.hashers import check_password
from django.core.exceptions import ValidationError


class LettersAndDigitsValidator:
    """PCI-DSS 8.3.6: a password contains both letters and digits."""

    def validate(self, password: str, user: Any = None) -> None:
        if not (any(c.isalpha() for c in password) and any(c.isdigit() for c in password)):
            raise ValidationError(
                "The password must contain both letters and digits.",
                code="password_letters_and_digits",
            )

    def get_help_text(self) -> str:
        return "Your password must contain both letters and digits."


class PasswordHistoryValidator:
    """PCI-DSS 8.3.7: a new password differs from each of the last ``history`` passwords."""

    def __init__(self, history: int = 4) -> None:
        self.history = history

    def validate(self, password: str, user: Any = None) -> None:
        if user is None or user.pk is None:
            return
        recent = list(user.password_history.values_list("password", flat=True)[: self.history])
        if user.has_usable_password() and user.password not in recent:
            recent.insert(0, user.password)
        if any(check_password(password, encoded) for encoded in recent[: self.history]):
            raise ValidationError(
                "The password must differ from your last %(history)d passwords.",
                code="password_reused",
                params={"history": self.history},
            )

    def password_changed(self, password: str, user: Any = None) -> None:
        if user is None or user.pk is None:
            return
        from vault.accounts.models import PasswordHistory

        PasswordHistory.objects.create(user=user, password=user.password)
        stale = user.password_history.values_list("pk", flat=True)[self.history :]
        PasswordHistory.objects.filter(pk__in=list(stale)).delete()

    def get_help_text(self) -> str:
        return f"Your password must differ from your last {self.history} passwords."
