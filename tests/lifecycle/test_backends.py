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
from vault.lifecycle.services import campaign_status, campaigns_run, key_rotate
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
    assert campaign_status(campaign)["rewrapped"] == 3
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    for version in ObjectVersion.objects.filter(object__tenant=tenant):
        header = envelope.parse_header(bytes(version.header))
        versions = [s.key.version for s in header.stanzas if s.key.key_id == binding.key_id]
        assert versions == [campaign.target_version]
        assert HeaderHistory.objects.filter(version=version).count() == 1
    for obj, data in contents.items():
        response = client.get(f"/api/v1/objects/{obj}/content/")
        assert b"".join(response.streaming_content) == data


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=getattr(pytest.mark, marker), id=kind)
        for kind, (_, marker) in COMPONENTS.items()
    ],
)
def test_a_shred_destroys_the_keys_in_the_backend(kind, harnesses, settings) -> None:
    from kms_plugins.errors import KeyDestroyed
    from kms_plugins.types import KeyState
    from tests.lifecycle.test_shredding import _decide, _request
    from tests.objects.test_objects import _client

    settings.VAULT_SHRED_WAIT_DAYS = 0
    harness = harnesses(kind)
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "customer": {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }
    member = _client(role=Role.MEMBER, bind=False)
    tenant = member.tenant
    call_command(
        "tenant_bind_backend", "--tenant", tenant.slug, "--backend", "customer", stdout=StringIO()
    )
    obj = member.post("/api/v1/objects/", {"name": "doomed"}, format="json").json()["id"]
    member.put(f"/api/v1/objects/{obj}/content/", b"doomed", content_type="text/plain")
    version = ObjectVersion.objects.get(object_id=obj)
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    header = envelope.parse_header(bytes(version.header))
    saved = next(s for s in header.stanzas if s.key.key_id == binding.key_id)
    context = {"tenant": tenant.slug, "object": str(obj), "version": "1"}
    key_rotate(tenant=tenant)  # two versions, both to be destroyed
    refs = [v.ref for v in harness.backend.describe(binding.key_id).versions]
    assert len(refs) == 2
    uids = []
    if kind == "kmip":
        from tests.kms_plugins.test_kmip import _uid

        uids = [_uid(harness.backend, ref) for ref in refs]  # the server's ids, while they exist

    c1, c2, c3 = (_client(role=Role.CUSTODIAN, tenant=tenant) for _ in range(3))
    request = _request(c1)
    _decide(c2, request["id"])
    assert _decide(c3, request["id"]).json()["state"] == "executed"

    backend = harness.new_backend()
    try:
        with pytest.raises(KeyDestroyed):
            backend.unwrap(saved, context)
        assert {v.state for v in backend.describe(binding.key_id).versions} == {KeyState.DESTROYED}
    finally:
        backend.close()
    if kind == "pkcs11":
        from tests.kms_plugins.test_pkcs11 import listed_objects, object_label

        labels = {o.get("label") for o in listed_objects(harness)}
        assert not {object_label(ref) for ref in refs} & labels, "pkcs11-tool lists none"
    if kind == "kmip":
        from kmip.core import enums as kmip_enums
        from kmip.pie import exceptions as pie_exceptions

        from tests.kms_plugins.test_kmip import _stock_client

        for uid in uids:
            with (
                _stock_client(harness) as client,
                pytest.raises(pie_exceptions.KmipOperationFailure) as gone,
            ):
                client.get_attributes(uid, ["State"])
            assert gone.value.reason == kmip_enums.ResultReason.ITEM_NOT_FOUND
    certificate = member.get("/api/v1/objects/").json()  # the member still lists metadata
    assert certificate["results"][0]["id"] == obj
    response = member.get(f"/api/v1/objects/{obj}/content/")
    assert response.status_code == 410
