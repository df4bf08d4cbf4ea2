"""Deduplication: identical content stored once within a tenant that asks for it, never across."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.utils import timezone
from rest_framework.test import APIClient

from tests.objects.test_objects import MARKER, _client, _create, _get, _put
from vault.crypto import envelope
from vault.objects.models import Blob, ObjectVersion, StoredObject
from vault.objects.services import objects_purge_deleted
from vault.tenants.models import Role
from vault.tenants.services import tenant_update

pytestmark = pytest.mark.django_db


def _dedup_client(**kwargs) -> APIClient:
    """A member of a tenant with deduplication on (turned on here directly; over the API it
    needs two approvals: tests/lifecycle/test_shredding.py)."""
    client = _client(**kwargs)
    tenant_update(tenant=client.tenant, deduplicate=True)
    client.tenant.refresh_from_db()
    return client


def _stored_files(tenant_id: int) -> list[Path]:
    root = Path(storages["default"].location) / str(tenant_id)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_deduplication_is_off_by_default() -> None:
    client = _client()
    assert client.get("/api/v1/tenant/").json()["deduplicate"] is False
    data = MARKER * 3000
    for name in ("a", "b"):
        assert _put(client, _create(client, name)["id"], data).status_code == 201
    assert not Blob.objects.exists()
    assert len(_stored_files(client.tenant.pk)) == 2


def test_identical_content_is_stored_once_within_a_tenant_and_twice_across_tenants() -> None:
    alpha, beta = _dedup_client(), _dedup_client()
    data = MARKER * 3000
    ids = {}
    for client, names in ((alpha, ("a1", "a2", "a3")), (beta, ("b1",))):
        for name in names:
            ids[name] = _create(client, name)["id"]
            stored = _put(client, ids[name], data)
            assert stored.status_code == 201, stored.content
            assert stored.json()["size"] == len(data)
    # Alpha: one blob, one stored file, three versions pointing at it.
    alpha_blob = Blob.objects.get(tenant=alpha.tenant)
    assert ObjectVersion.objects.filter(blob=alpha_blob).count() == 3
    assert len(_stored_files(alpha.tenant.pk)) == 1
    # Beta: its own copy, under an unrelated id and key.
    beta_blob = Blob.objects.get(tenant=beta.tenant)
    assert len(_stored_files(beta.tenant.pk)) == 1
    assert beta_blob.digest != alpha_blob.digest
    alpha_body = (_stored_files(alpha.tenant.pk)[0]).read_bytes()
    beta_body = (_stored_files(beta.tenant.pk)[0]).read_bytes()
    assert alpha_body != beta_body
    assert MARKER not in alpha_body + beta_body
    # The blob's id is keyed: it is not the content's hash.
    assert alpha_blob.digest != hashlib.sha256(data).hexdigest()
    # The blob is bound to its tenant and id.
    header = envelope.parse_header(bytes(alpha_blob.header))
    assert header.context == {"tenant": alpha.tenant.slug, "blob": alpha_blob.digest}
    for client, name in ((alpha, "a1"), (alpha, "a3"), (beta, "b1")):
        assert _get(client, ids[name])[1] == data
    # Different content is another blob.
    assert _put(alpha, ids["a2"], b"something else").status_code == 201
    assert Blob.objects.filter(tenant=alpha.tenant).count() == 2
    assert _get(alpha, ids["a2"])[1] == b"something else"
    assert _get(alpha, ids["a2"], QUERY_STRING="version=1")[1] == data


def test_a_deduplicated_version_serves_ranges() -> None:
    client = _dedup_client()
    data = bytes(range(256)) * 1000
    first, second = _create(client, "one")["id"], _create(client, "two")["id"]
    _put(client, first, data)
    _put(client, second, data)
    response, body = _get(client, second, HTTP_RANGE="bytes=70000-70099")
    assert response.status_code == 206
    assert body == data[70000:70100]


def test_a_blob_is_purged_only_when_no_version_holds_it(settings) -> None:
    settings.VAULT_OBJECT_RETENTION_DAYS = 0
    client = _dedup_client()
    data = MARKER * 100
    first, second = _create(client, "one")["id"], _create(client, "two")["id"]
    _put(client, first, data)
    _put(client, second, data)
    blob = Blob.objects.get()
    assert client.delete(f"/api/v1/objects/{first}/").status_code == 204
    assert objects_purge_deleted(now=timezone.now() + timedelta(seconds=1)) == 1
    assert Blob.objects.filter(pk=blob.pk).exists()
    assert _get(client, second)[1] == data
    assert client.delete(f"/api/v1/objects/{second}/").status_code == 204
    assert objects_purge_deleted(now=timezone.now() + timedelta(seconds=1)) == 1
    assert not Blob.objects.exists()
    assert _stored_files(client.tenant.pk) == []


def test_a_version_pointed_at_another_tenants_blob_releases_nothing() -> None:
    alpha, beta = _dedup_client(), _dedup_client()
    mine = _create(alpha, "mine")["id"]
    _put(alpha, mine, b"alpha's content")
    theirs = _create(beta, "theirs")["id"]
    _put(beta, theirs, MARKER)
    ObjectVersion.objects.filter(object_id=mine).update(blob=Blob.objects.get(tenant=beta.tenant))
    response, body = _get(alpha, mine)
    assert response.status_code >= 400
    assert MARKER not in body


def test_the_spool_is_gone_after_the_upload_and_turning_deduplication_off_works() -> None:
    client = _dedup_client()
    obj = _create(client, "x")["id"]
    _put(client, obj, MARKER * 10)
    assert [p.parent.name for p in _stored_files(client.tenant.pk)] == ["blobs"]
    owner = _client(role=Role.OWNER, tenant=client.tenant)
    tightened = owner.patch("/api/v1/tenant/", {"deduplicate": False}, format="json")
    assert tightened.status_code == 200, "tightening needs no approvals"
    _put(client, obj, MARKER * 10)
    latest = StoredObject.objects.get(pk=obj).versions.order_by("-number").first()
    assert latest is not None
    assert latest.blob is None
    assert _get(client, obj)[1] == MARKER * 10
    assert _get(client, obj, QUERY_STRING="version=1")[1] == MARKER * 10


def test_only_owners_change_the_tenant_settings_and_loosening_needs_approvals() -> None:
    member = _client()
    response = member.patch("/api/v1/tenant/", {"deduplicate": True}, format="json")
    assert response.status_code == 403
    owner = _client(role=Role.OWNER, tenant=member.tenant)
    alone = owner.patch("/api/v1/tenant/", {"deduplicate": True}, format="json")
    assert (alone.status_code, alone.json()["error"]["code"]) == (409, "dual_control_required")
    member.tenant.refresh_from_db()
    assert member.tenant.deduplicate is False
