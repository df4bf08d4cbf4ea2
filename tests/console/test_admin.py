"""The Django admin has no sign-in of its own: it goes through the console's two steps."""

from __future__ import annotations

import pytest

from tests.factories import PASSWORD, make_user
from vault.accounts.models import User

pytestmark = pytest.mark.django_db


def test_the_admin_login_sends_people_to_the_console_sign_in(client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    login = client.get(response["Location"])
    assert login.status_code == 302
    assert login["Location"].startswith("/console/login/")
    assert "next=/admin/" in login["Location"]


def test_password_guessing_through_the_admin_login_is_impossible(client, settings) -> None:
    staff = make_user(email="operator@example.com", is_staff=True, is_superuser=True)
    for _ in range(settings.VAULT_LOCKOUT_THRESHOLD + 2):
        guess = {"username": staff.email, "password": "wrong-guess-1"}
        response = client.post("/admin/login/", guess)
        assert response.status_code == 302
        assert response["Location"].startswith("/console/login/")
    response = client.post("/admin/login/", {"username": staff.email, "password": PASSWORD})
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session
    assert User.objects.get(pk=staff.pk).failed_login_count == 0
