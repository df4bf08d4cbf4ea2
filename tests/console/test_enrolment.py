"""Enrolment of the authenticator app that every console user must have (PCI-DSS 8.4.2)."""

from __future__ import annotations

import re
from base64 import b32encode

import pytest
from django.conf import settings
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.console.conftest import (
    GENERIC_FAILURE,
    password_step,
    signed_in_user_id,
    totp_code,
    wrong_code,
)

ENROL = reverse("console:enrol")
HOME = reverse("console:home")


@pytest.mark.django_db
def test_it_enrols_an_authenticator_app_end_to_end(client, user):
    assert password_step(client)["Location"] == ENROL

    response = client.get(ENROL)
    assert response.status_code == 200
    content = response.content.decode()
    device = TOTPDevice.objects.get(user=user)
    assert not device.confirmed
    assert '<svg width="' in content
    assert "QR code for your authenticator app" in content
    secret = b32encode(device.bin_key).decode()
    assert secret[:4] in content
    assert secret in content.replace(" ", "")
    assert 'autocomplete="one-time-code"' in content

    response = client.post(ENROL, {"code": totp_code(device)})
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    content = response.content.decode()
    codes = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", content)
    assert len(codes) == 10
    stored = set(StaticToken.objects.filter(device__user=user).values_list("token", flat=True))
    assert stored == set(codes)
    assert f'href="{HOME}"' in content

    device.refresh_from_db()
    assert device.confirmed
    assert client.get(HOME).status_code == 200
    user.refresh_from_db()
    assert user.failed_login_count == 0


@pytest.mark.django_db
def test_it_shows_the_same_secret_until_enrolment_is_confirmed(client, user):
    password_step(client)
    client.get(ENROL)
    client.get(ENROL)
    assert TOTPDevice.objects.filter(user=user).count() == 1


@pytest.mark.django_db
def test_it_counts_a_wrong_enrolment_code_as_a_failure(client, user):
    password_step(client)
    client.get(ENROL)
    device = TOTPDevice.objects.get(user=user)
    response = client.post(ENROL, {"code": wrong_code(device)})
    assert response.status_code == 200
    assert b"That code is not valid" in response.content
    device.refresh_from_db()
    assert not device.confirmed
    user.refresh_from_db()
    assert user.failed_login_count == 1
    assert client.get(HOME).status_code == 302


@pytest.mark.django_db
def test_it_signs_out_a_user_locked_during_enrolment(client, user):
    password_step(client)
    client.get(ENROL)
    device = TOTPDevice.objects.get(user=user)
    for _ in range(settings.VAULT_LOCKOUT_THRESHOLD):
        response = client.post(ENROL, {"code": wrong_code(device)})
    assert response.status_code == 302
    assert response["Location"] == reverse("console:login")
    assert signed_in_user_id(client) is None
    response = password_step(client)
    assert GENERIC_FAILURE in response.content.decode()


@pytest.mark.django_db
def test_it_does_not_enrol_a_second_app_without_the_first(client, user, device):
    password_step(client)
    response = client.get(ENROL)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:verify")
    assert TOTPDevice.objects.filter(user=user).count() == 1


@pytest.mark.django_db
def test_it_refuses_enrolment_to_anonymous_visitors(client):
    response = client.get(ENROL)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:login")
    assert not TOTPDevice.objects.exists()
