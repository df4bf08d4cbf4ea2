"""Idle sessions end (PCI-DSS 8.2.8)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone


def test_it_ends_sessions_after_at_most_15_idle_minutes():
    # PCI-DSS 8.2.8: at most 15 minutes, renewed by each request.
    assert settings.SESSION_COOKIE_AGE <= 900
    assert settings.SESSION_SAVE_EVERY_REQUEST


@pytest.mark.django_db
def test_it_sends_an_idle_session_back_to_sign_in(verified_client):
    home = reverse("console:home")
    assert verified_client.get(home).status_code == 200
    session_key = verified_client.session.session_key
    session = Session.objects.get(session_key=session_key)
    assert session.expire_date <= timezone.now() + timedelta(seconds=900)

    Session.objects.filter(session_key=session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    response = verified_client.get(home)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:login')}?next={home}"
