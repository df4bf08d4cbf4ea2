"""Fixtures for the console tests: a user, an authenticator app and sign-in helpers."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from vault.accounts.models import User

PASSWORD = "correct horse 42 battery"
EMAIL = "alice@example.com"
GENERIC_FAILURE = "Sign-in failed, or the account is locked. Try again later or ask an owner."


@pytest.fixture
def user(db) -> User:
    return User.objects.create_user(email=EMAIL, password=PASSWORD)


@pytest.fixture
def device(user) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)


@pytest.fixture
def recovery_codes(user) -> list[str]:
    static = StaticDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
    codes = [f"code{n:04d}" for n in range(3)]
    for code in codes:
        StaticToken.objects.create(device=static, token=code)
    return codes


def totp_code(device: TOTPDevice) -> str:
    """The code the user's authenticator app shows right now."""
    totp = TOTP(
        device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift
    )
    return f"{totp.token():0{device.digits}d}"


def wrong_code(device: TOTPDevice) -> str:
    right = int(totp_code(device))
    return f"{(right + 500_000) % 1_000_000:06d}"


def password_step(client: Client, email: str = EMAIL, password: str = PASSWORD, next_url=""):
    data = {"email": email, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post(reverse("console:login"), data)


def sign_in(client: Client, device: TOTPDevice, email: str = EMAIL, password: str = PASSWORD):
    """Both steps; returns the answer to the second."""
    response = password_step(client, email, password)
    assert response.status_code == 302, response.content
    device.refresh_from_db()
    return client.post(reverse("console:verify"), {"code": totp_code(device)})


def signed_in_user_id(client: Client) -> str | None:
    return client.session.get("_auth_user_id")


@pytest.fixture
def verified_client(client, user, device) -> Client:
    response = sign_in(client, device)
    assert response.status_code == 302
    assert response["Location"] == reverse("console:home")
    return client
