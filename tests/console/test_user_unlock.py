"""``manage.py user_unlock`` lifts a lockout (PCI-DSS 8.3.4)."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.console.conftest import EMAIL, password_step
from vault.accounts.models import User


@pytest.mark.django_db
def test_it_unlocks_a_locked_user(client, user, device):
    User.objects.filter(pk=user.pk).update(
        locked_until=timezone.now() + timedelta(minutes=30), failed_login_count=4
    )
    out = StringIO()
    call_command("user_unlock", EMAIL.upper(), stdout=out)
    assert f"Unlocked {EMAIL}." in out.getvalue()
    user.refresh_from_db()
    assert not user.is_locked()
    assert user.failed_login_count == 0
    assert password_step(client).status_code == 302


@pytest.mark.django_db
def test_it_says_when_the_user_was_not_locked(user):
    out = StringIO()
    call_command("user_unlock", EMAIL, stdout=out)
    assert "was not locked" in out.getvalue()


@pytest.mark.django_db
def test_it_fails_for_an_unknown_address():
    with pytest.raises(CommandError, match="No user has the e-mail address"):
        call_command("user_unlock", "nobody@example.com")
