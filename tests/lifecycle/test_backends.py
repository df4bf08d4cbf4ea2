"""Rotation and a rewrap campaign with each server-side backend against its real component."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import os
from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.factories import make_membership
from tests.objects.test_gateway_backends import COMPONENTS, harnesses
from vault.crypto import envelope
from vault.keys.models import KeyBinding, KeyRole
from vault.lifecycle.models import CampaignState
from vault.lifecycle.services import campaigns_run, key_rotate
from vault.objects.models import HeaderHistory, ObjectVersion
from vault.tenants.models import Role
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db
__all__ = ["harnesses"]  # the fixture, shared with the gateway tests


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=getattr(pytest.mark, marker), id=kind)
        for kind, (_, marker) in COMPONENTS.items()
    ],
)
def test_a_rotation_campaign_rewraps_with_the_backend(kind, harnesses, settings) -> None:
    harness = harnesses(kind)
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "customer": {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }
    membership = make_membership(role=Role.MEMBER)
    tenant = membership.tenant
    call_command(
        "tenant_bind_backend", "--tenant", tenant.slug, "--backend", "customer", stdout=StringIO()
    )
    issued = token_create(tenant=tenant, name="t", role=Role.MEMBER, user=membership.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    contents = {}
    for index in range(3):
        obj = client.post("/api/v1/objects/", {"name": f"o{index}"}, format="json").json()["id"]
        contents[obj] = os.urandom(100_000 + index)
        stored = client.put(
            f"/api/v1/objects/{obj}/content/", contents[obj], content_type="text/plain"
        )
        assert stored.status_code == 201, stored.content
    campaign = key_rotate(tenant=tenant)
    campaigns_run(worker="w")
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETE
    assert campaign.rewrapped == 3
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    for version in ObjectVersion.objects.filter(object__tenant=tenant):
        header = envelope.parse_header(bytes(version.header))
        versions = [s.key.version for s in header.stanzas if s.key.key_id == binding.key_id]
        assert versions == [campaign.target_version]
        assert HeaderHistory.objects.filter(version=version).count() == 1
    for obj, data in contents.items():
        response = client.get(f"/api/v1/objects/{obj}/content/")
        assert b"".join(response.streaming_content) == data
