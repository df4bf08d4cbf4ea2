"""Key substitution (PCI-DSS 3.7.7): the pinned fingerprint is checked against the backend."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import pytest

from tests.objects.test_objects import _client, _create, _get, _put
from vault.audit.models import AuditEvent
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.services import keys_health_check

pytestmark = pytest.mark.django_db


def test_a_key_whose_backend_reports_another_fingerprint_is_suspended_and_used_no_more() -> None:
    client = _client()
    obj = _create(client)["id"]
    assert _put(client, obj, b"before").status_code == 201
    assert keys_health_check() == []
    binding = KeyBinding.objects.get(tenant=client.tenant, role=KeyRole.PRIMARY)
    # What the vault pinned no longer matches what the backend holds under that id.
    KeyBinding.objects.filter(pk=binding.pk).update(fingerprint="kcv:000000")
    problems = keys_health_check()
    assert [b.pk for b, _ in problems] == [binding.pk]
    binding.refresh_from_db()
    assert binding.suspended_at is not None
    event = AuditEvent.objects.get(type="key.substitution", tenant=client.tenant)
    assert event.outcome == "failure"
    upload = _put(client, obj, b"after")
    assert (upload.status_code, upload.json()["error"]["code"]) == (503, "key_suspended")
    response, body = _get(client, obj)
    assert response.status_code == 503
    assert body != b"before"
    keys_health_check()
    assert AuditEvent.objects.filter(type="key.substitution").count() == 1, (
        "one alert, not one per run"
    )


def test_versions_made_by_rotations_are_pinned_and_one_made_elsewhere_is_not() -> None:
    from kms_plugins.types import KeyRef
    from vault.keys.registry import key_backend
    from vault.lifecycle.services import campaigns_run, key_rotate

    client = _client()
    obj = _create(client)["id"]
    _put(client, obj, b"x")
    binding = KeyBinding.objects.get(tenant=client.tenant, role=KeyRole.PRIMARY)
    key_rotate(tenant=client.tenant)
    campaigns_run(worker="w")
    key_backend("local").destroy(KeyRef(binding.key_id, 1))  # retired after its campaign
    assert keys_health_check() == [], "rotations the vault made, and a retired version, are fine"
    # Someone with the backend's admin rights adds a version the vault never made.
    key_backend("local").rotate(binding.key_id)
    problems = keys_health_check()
    assert [(b.pk, "did not make" in why) for b, why in problems] == [(binding.pk, True)]
    assert _put(client, obj, b"y").status_code == 503
