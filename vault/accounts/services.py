"""Writes for accounts: sign-in bookkeeping (PCI-DSS 8.3.4) and password set-up links."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from vault.accounts.models import User
from vault.audit.services import audit_record


def login_failure_record(*, user: User) -> bool:
    """Count a failed sign-in step (password or second factor); return whether it locked.

    PCI-DSS 8.3.4: after ``VAULT_LOCKOUT_THRESHOLD`` (at most 10) consecutive failures the account
    is locked for ``VAULT_LOCKOUT_MINUTES`` (at least 30).
    """
    User.objects.filter(pk=user.pk).update(failed_login_count=F("failed_login_count") + 1)
    user.refresh_from_db(fields=["failed_login_count", "locked_until"])
    if user.failed_login_count >= settings.VAULT_LOCKOUT_THRESHOLD:
        user.locked_until = timezone.now() + timedelta(minutes=settings.VAULT_LOCKOUT_MINUTES)
        user.failed_login_count = 0
        user.save(update_fields=["locked_until", "failed_login_count"])
        audit_record(
            "user.lock",
            resource_type="user",
            resource_id=user.email,
            details={"minutes": settings.VAULT_LOCKOUT_MINUTES},
        )
        return True
    return False


def login_success_record(*, user: User) -> None:
    """A complete sign-in (password and second factor) clears the failure count."""
    User.objects.filter(pk=user.pk).update(failed_login_count=0, locked_until=None)


def user_unlock(*, user: User) -> None:
    """An operator lifts a lockout after confirming the person's identity (PCI-DSS 8.3.4)."""
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(failed_login_count=0, locked_until=None)
        audit_record("user.unlock", resource_type="user", resource_id=user.email)


def password_setup_url(request: HttpRequest | None, user: User, *, base_url: str = "") -> str:
    """A one-time link for ``user`` to choose a password (valid PASSWORD_RESET_TIMEOUT seconds)."""
    path = reverse(
        "console:password_setup",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    if request is not None:
        return request.build_absolute_uri(path)
    return f"{base_url.rstrip('/')}{path}"
