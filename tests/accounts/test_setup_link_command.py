"""`manage.py user_setup_link`: operators hand a person a one-time password set-up link."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_it_prints_a_working_link_once_used(client) -> None:
    user = make_user(email="ann@example.com")
    out = StringIO()
    call_command(
        "user_setup_link",
        "ANN@example.com",
        "--base-url",
        "http://testserver",
        stdout=out,
        stderr=StringIO(),
    )
    link = out.getvalue().strip()
    assert link.startswith("http://testserver/console/set-password/")
    page = client.get(link.removeprefix("http://testserver"), follow=True)
    form_url = page.redirect_chain[-1][0]
    new = "a brand new passphrase 77"
    done = client.post(form_url, {"new_password1": new, "new_password2": new})
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)
    again = client.get(link.removeprefix("http://testserver"), follow=True)
    assert b"new_password1" not in again.content


def test_it_refuses_unknown_people() -> None:
    with pytest.raises(CommandError, match="no user"):
        call_command("user_setup_link", "nobody@example.com")
