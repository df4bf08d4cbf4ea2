"""Password change and one-time password set-up (PCI-DSS 8.3.6, 8.3.7)."""

from __future__ import annotations

import itertools

import pytest
from django.urls import reverse

from tests.console.conftest import EMAIL, PASSWORD, password_step, signed_in_user_id
from vault.accounts.models import User
from vault.accounts.services import password_setup_url

CHANGE = reverse("console:password_change")


def change(client, old, new):
    return client.post(CHANGE, {"old_password": old, "new_password1": new, "new_password2": new})


@pytest.mark.django_db
def test_it_shows_the_password_change_form(verified_client):
    response = verified_client.get(CHANGE)
    assert response.status_code == 200
    content = response.content.decode()
    assert 'autocomplete="current-password"' in content
    assert 'autocomplete="new-password"' in content
    assert 'for="id_new_password1"' in content


@pytest.mark.django_db
def test_it_rejects_a_password_shorter_than_12_characters(verified_client, user):
    # PCI-DSS 8.3.6: at least 12 characters.
    response = change(verified_client, PASSWORD, "abcdefgh123")
    assert response.status_code == 200
    assert b"This password is too short" in response.content
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_it_rejects_a_password_without_digits(verified_client, user):
    # PCI-DSS 8.3.6: letters and digits.
    response = change(verified_client, PASSWORD, "correct horse battery staple")
    assert response.status_code == 200
    assert b"both letters and digits" in response.content
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_it_rejects_each_of_the_last_four_passwords(verified_client, user):
    # PCI-DSS 8.3.7: none of the last four passwords reused.
    history = [PASSWORD, "second horse 43 battery", "third horse 44 battery", "fourth horse 45"]
    for old, new in itertools.pairwise(history):
        assert change(verified_client, old, new).status_code == 302
    current = history[-1]
    for reused in history:
        response = change(verified_client, current, reused)
        assert response.status_code == 200, reused
        assert b"must differ from your last 4 passwords" in response.content

    fresh = "fifth horse 46 battery"
    response = change(verified_client, current, fresh)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:home")
    user.refresh_from_db()
    assert user.check_password(fresh)
    # The session survives its own password change and stays verified.
    response = verified_client.get(reverse("console:home"))
    assert response.status_code == 200
    assert b"Your password has been changed." in response.content
    # Five passwords back is allowed again.
    assert change(verified_client, fresh, PASSWORD).status_code == 302


@pytest.mark.django_db
def test_it_counts_a_wrong_current_password_as_a_failure(verified_client, user):
    response = change(verified_client, "not my password 1", "brand new horse 47")
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.failed_login_count == 1
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_it_refuses_password_change_to_anonymous_visitors(client):
    response = client.get(CHANGE)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:login')}?next={CHANGE}"


@pytest.mark.django_db
def test_it_sets_a_password_through_the_one_time_link(client):
    user = User.objects.create_user(email="bob@example.com")
    assert not user.has_usable_password()
    link = password_setup_url(None, user)

    response = client.get(link)
    assert response.status_code == 302
    form_url = response["Location"]
    assert form_url.endswith("/set-password/")
    response = client.get(form_url)
    assert response.status_code == 200
    assert 'autocomplete="new-password"' in response.content.decode()

    short = client.post(form_url, {"new_password1": "abcdefgh123", "new_password2": "abcdefgh123"})
    assert short.status_code == 200
    assert b"This password is too short" in short.content

    response = client.post(form_url, {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("console:login")
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert signed_in_user_id(client) is None

    # The link works once.
    again = client.get(link)
    assert again.status_code == 200
    assert b"This link does not work" in again.content
    assert b"<form" not in again.content.split(b"</header>")[1]

    assert password_step(client, "bob@example.com", PASSWORD)["Location"] == reverse(
        "console:enrol"
    )


@pytest.mark.django_db
def test_it_refuses_a_tampered_setup_link(client, user):
    link = password_setup_url(None, user)
    response = client.get(link[:-3] + "abc/")
    assert response.status_code == 200
    assert b"This link does not work" in response.content
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert user.email == EMAIL
