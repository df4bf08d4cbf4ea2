"""Sign-in: a password and a second factor for every console user (PCI-DSS 8.3.4, 8.4.2)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.console.conftest import (
    EMAIL,
    GENERIC_FAILURE,
    password_step,
    signed_in_user_id,
    totp_code,
    wrong_code,
)
from vault.accounts.models import User
from vault.tenants.models import Membership, Role, Tenant

LOGIN = reverse("console:login")
VERIFY = reverse("console:verify")
HOME = reverse("console:home")


@pytest.mark.django_db
def test_it_sends_anonymous_visitors_from_root_to_sign_in(client):
    response = client.get("/", follow=True)
    assert response.redirect_chain == [(HOME, 302), (f"{LOGIN}?next={HOME}", 302)]
    assert response.status_code == 200
    assert b"Sign in" in response.content


@pytest.mark.django_db
def test_it_signs_in_with_password_and_totp(client, user, device):
    response = password_step(client)
    assert response.status_code == 302
    assert response["Location"] == VERIFY
    assert signed_in_user_id(client) == str(user.pk)

    response = client.post(VERIFY, {"code": totp_code(device)})
    assert response.status_code == 302
    assert response["Location"] == HOME
    response = client.get(HOME)
    assert response.status_code == 200
    assert EMAIL.encode() in response.content


@pytest.mark.django_db
def test_it_accepts_the_address_in_any_case(client, user, device):
    response = password_step(client, email=EMAIL.upper())
    assert response["Location"] == VERIFY


@pytest.mark.django_db
def test_it_follows_next_through_both_steps(client, user, device):
    response = password_step(client, next_url="/console/password/")
    assert response["Location"] == f"{VERIFY}?next=%2Fconsole%2Fpassword%2F"
    response = client.post(VERIFY, {"code": totp_code(device), "next": "/console/password/"})
    assert response["Location"] == "/console/password/"


@pytest.mark.django_db
def test_it_ignores_next_pointing_off_site(client, user, device):
    response = password_step(client, next_url="https://evil.example/")
    assert response["Location"] == VERIFY
    response = client.post(VERIFY, {"code": totp_code(device), "next": "https://evil.example/"})
    assert response["Location"] == HOME


@pytest.mark.django_db
def test_it_locks_after_threshold_wrong_passwords(client, user, device):
    # PCI-DSS 8.3.4: at most 10 attempts, then locked for at least 30 minutes.
    assert settings.VAULT_LOCKOUT_THRESHOLD <= 10
    assert settings.VAULT_LOCKOUT_MINUTES >= 30
    for _ in range(settings.VAULT_LOCKOUT_THRESHOLD):
        response = password_step(client, password="wrong horse 42 battery")
        assert response.status_code == 200
        assert GENERIC_FAILURE in response.content.decode()
    user.refresh_from_db()
    assert user.is_locked()
    assert user.locked_until >= timezone.now() + timedelta(minutes=29)

    response = password_step(client)
    assert response.status_code == 200
    assert GENERIC_FAILURE in response.content.decode()
    assert signed_in_user_id(client) is None

    User.objects.filter(pk=user.pk).update(locked_until=timezone.now() - timedelta(seconds=1))
    response = password_step(client)
    assert response.status_code == 302
    assert response["Location"] == VERIFY


@pytest.mark.django_db
def test_it_does_not_lock_below_the_threshold(client, user, device):
    for _ in range(settings.VAULT_LOCKOUT_THRESHOLD - 1):
        password_step(client, password="wrong horse 42 battery")
    user.refresh_from_db()
    assert not user.is_locked()
    assert user.failed_login_count == settings.VAULT_LOCKOUT_THRESHOLD - 1
    assert password_step(client)["Location"] == VERIFY


@pytest.mark.django_db
def test_it_gives_an_unknown_address_the_same_answer(client, user, monkeypatch):
    hashed = []
    original = User.set_password

    def spy(self, raw_password):
        hashed.append(raw_password)
        return original(self, raw_password)

    monkeypatch.setattr(User, "set_password", spy)
    unknown = password_step(client, email="nobody@example.com", password="some password 1")
    wrong = password_step(client, password="wrong horse 42 battery")

    assert unknown.status_code == wrong.status_code == 200
    assert GENERIC_FAILURE in unknown.content.decode()
    assert GENERIC_FAILURE in wrong.content.decode()
    # A password hash runs for the unknown address too, so timing does not tell them apart.
    assert hashed == ["some password 1"]


@pytest.mark.django_db
def test_it_refuses_an_inactive_user_with_the_same_answer(client, user, device):
    User.objects.filter(pk=user.pk).update(is_active=False)
    response = password_step(client)
    assert response.status_code == 200
    assert GENERIC_FAILURE in response.content.decode()
    assert signed_in_user_id(client) is None


@pytest.mark.django_db
def test_it_counts_wrong_totp_codes_toward_lockout(client, user, device):
    # PCI-DSS 8.3.4: a wrong second factor is a failed attempt like a wrong password.
    password_step(client)
    threshold = settings.VAULT_LOCKOUT_THRESHOLD
    for attempt in range(threshold - 1):
        response = client.post(VERIFY, {"code": wrong_code(device)})
        assert response.status_code == 200
        # After the first, django-otp throttles the device; the attempts still count.
        expected = b"That code is not valid" if attempt == 0 else b"Too many wrong codes"
        assert expected in response.content
    user.refresh_from_db()
    assert user.failed_login_count == threshold - 1

    response = client.post(VERIFY, {"code": wrong_code(device)}, follow=True)
    assert response.redirect_chain == [(LOGIN, 302)]
    assert GENERIC_FAILURE in response.content.decode()
    assert signed_in_user_id(client) is None
    user.refresh_from_db()
    assert user.is_locked()

    device.refresh_from_db()
    device.throttle_reset()
    response = password_step(client)
    assert response.status_code == 200
    assert GENERIC_FAILURE in response.content.decode()


@pytest.mark.django_db
def test_it_counts_password_and_code_failures_together(client, user, device):
    threshold = settings.VAULT_LOCKOUT_THRESHOLD
    for _ in range(threshold - 1):
        password_step(client, password="wrong horse 42 battery")
    password_step(client)
    response = client.post(VERIFY, {"code": wrong_code(device)})
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    user.refresh_from_db()
    assert user.is_locked()


@pytest.mark.django_db
def test_it_signs_out_a_locked_user_in_the_middle_of_the_second_step(client, user, device):
    password_step(client)
    User.objects.filter(pk=user.pk).update(locked_until=timezone.now() + timedelta(minutes=30))
    response = client.post(VERIFY, {"code": totp_code(device)})
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert signed_in_user_id(client) is None


@pytest.mark.django_db
def test_it_resets_the_failure_count_after_a_full_sign_in(client, user, device):
    for _ in range(3):
        password_step(client, password="wrong horse 42 battery")
    password_step(client)
    user.refresh_from_db()
    assert user.failed_login_count == 3  # the password alone is not a complete sign-in
    response = client.post(VERIFY, {"code": totp_code(device)})
    assert response["Location"] == HOME
    user.refresh_from_db()
    assert user.failed_login_count == 0


@pytest.mark.django_db
def test_it_signs_in_with_a_recovery_code_once(client, user, device, recovery_codes):
    password_step(client)
    response = client.post(VERIFY, {"code": recovery_codes[0].upper()})
    assert response.status_code == 302
    assert response["Location"] == HOME
    assert client.get(HOME).status_code == 200
    assert not StaticToken.objects.filter(token=recovery_codes[0]).exists()

    client.post(reverse("console:logout"))
    password_step(client)
    response = client.post(VERIFY, {"code": recovery_codes[0]})
    assert response.status_code == 200
    assert b"That code is not valid" in response.content
    user.refresh_from_db()
    assert user.failed_login_count == 1
    assert client.get(HOME)["Location"].startswith(VERIFY)


@pytest.mark.django_db
def test_it_refuses_a_totp_code_used_already(client, user, device):
    code = totp_code(device)
    password_step(client)
    assert client.post(VERIFY, {"code": code})["Location"] == HOME
    client.post(reverse("console:logout"))
    password_step(client)
    response = client.post(VERIFY, {"code": code})
    assert response.status_code == 200
    assert b"That code is not valid" in response.content


@pytest.mark.django_db
def test_it_keeps_a_password_only_session_out_of_the_console(client, user, device):
    password_step(client)
    response = client.get(HOME)
    assert response.status_code == 302
    assert response["Location"] == f"{VERIFY}?next=%2Fconsole%2F"
    for name in ("console:password_change", "console:recovery_codes"):
        assert client.get(reverse(name))["Location"].startswith(VERIFY)


@pytest.mark.django_db
def test_it_keeps_a_password_only_session_out_of_the_admin(client, device):
    User.objects.filter(email=EMAIL).update(is_staff=True, is_superuser=True)
    password_step(client)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_it_sends_a_user_without_an_app_to_enrolment(client, user):
    response = password_step(client)
    assert response["Location"] == reverse("console:enrol")
    assert client.get(HOME)["Location"] == f"{reverse('console:enrol')}?next=%2Fconsole%2F"
    assert client.get(VERIFY)["Location"] == reverse("console:enrol")


@pytest.mark.django_db
def test_it_ignores_unconfirmed_devices_when_verifying(client, user):
    pending = TOTPDevice.objects.create(user=user, name="pending", confirmed=False)
    password_step(client)
    response = client.post(VERIFY, {"code": totp_code(pending)})
    assert response["Location"] == reverse("console:enrol")
    assert client.get(HOME).status_code == 302


@pytest.mark.django_db
def test_it_signs_out_on_post_only(verified_client):
    assert verified_client.get(reverse("console:logout")).status_code == 405
    response = verified_client.post(reverse("console:logout"), follow=True)
    assert response.redirect_chain == [(LOGIN, 302)]
    assert b"You have signed out." in response.content
    assert verified_client.get(HOME)["Location"] == f"{LOGIN}?next={HOME}"


@pytest.mark.django_db
def test_it_sends_a_verified_user_from_the_sign_in_page_to_the_console(verified_client):
    assert verified_client.get(LOGIN)["Location"] == HOME
    assert verified_client.get(VERIFY)["Location"] == HOME


@pytest.mark.django_db
def test_it_shows_memberships_on_the_home_page(verified_client, user):
    tenant = Tenant.objects.create(slug="acme", name="Acme Payments")
    Membership.objects.create(tenant=tenant, user=user, role=Role.CUSTODIAN)
    second = Tenant.objects.create(slug="beta", name="Beta Bank")
    Membership.objects.create(tenant=second, user=user, role=Role.AUDITOR)
    Tenant.objects.create(slug="other", name="Someone Else")
    response = verified_client.get(HOME)
    content = response.content.decode()
    assert EMAIL in content
    assert "Acme Payments" in content
    assert "Custodian" in content
    assert "Beta Bank" in content
    assert reverse("console:dashboard", kwargs={"slug": "acme"}) in content
    assert "Someone Else" not in content
    assert reverse("console:password_change") in content
    assert reverse("console:recovery_codes") in content
    assert reverse("console:logout") in content


@pytest.mark.django_db
def test_it_goes_from_home_straight_to_the_only_tenant(verified_client, user):
    tenant = Tenant.objects.create(slug="acme", name="Acme Payments")
    Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
    inactive = Tenant.objects.create(slug="gone", name="Gone Ltd", is_active=False)
    Membership.objects.create(tenant=inactive, user=user, role=Role.OWNER)
    response = verified_client.get(HOME)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:dashboard", kwargs={"slug": "acme"})


@pytest.mark.django_db
def test_it_regenerates_recovery_codes(verified_client, user, recovery_codes):
    response = verified_client.get(reverse("console:recovery_codes"))
    assert response.status_code == 200
    assert b"3 unused recovery codes" in response.content

    response = verified_client.post(reverse("console:recovery_codes"))
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    tokens = set(StaticToken.objects.filter(device__user=user).values_list("token", flat=True))
    assert len(tokens) == 10
    assert not tokens & set(recovery_codes)
    for token in tokens:
        assert token in response.content.decode()
    # The session stays verified.
    assert verified_client.get(reverse("console:home")).status_code == 200


@pytest.mark.django_db
def test_it_refuses_recovery_code_regeneration_to_anonymous_visitors(client):
    response = client.post(reverse("console:recovery_codes"))
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


@pytest.mark.django_db
def test_it_does_not_echo_the_password(client, user):
    response = password_step(client, password="wrong horse 42 battery")
    assert "wrong horse 42 battery" not in response.content.decode()
    assert EMAIL in response.content.decode()


@pytest.mark.django_db
def test_it_asks_to_wait_after_wrong_codes_and_counts_the_attempt(client, user, device):
    password_step(client)
    client.post(VERIFY, {"code": wrong_code(device)})
    # django-otp throttles the device for a moment after a wrong code; a code sent meanwhile
    # is not checked, and still counts as a failed attempt.
    response = client.post(VERIFY, {"code": totp_code(device)})
    assert response.status_code == 200
    assert b"Too many wrong codes in a row" in response.content
    user.refresh_from_db()
    assert user.failed_login_count == 2

    device.refresh_from_db()
    device.throttle_reset()
    response = client.post(VERIFY, {"code": totp_code(device)})
    assert response["Location"] == HOME


@pytest.mark.django_db
def test_it_rejects_a_recovery_code_of_a_user_who_has_none(client, user, device):
    password_step(client)
    response = client.post(VERIFY, {"code": "abcdefgh"})
    assert b"That code is not valid" in response.content
