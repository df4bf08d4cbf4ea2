"""``manage.py objects_verify``: the read-back check run after a restore (docs/backup.md)."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import os
from io import StringIO

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.objects.test_objects import _client, _client_envelope, _create, _put
from vault.audit.models import AuditEvent
from vault.objects.models import ObjectVersion, StoredObject

pytestmark = pytest.mark.django_db


def _verify(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("objects_verify", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def _stored_path(object_id: int) -> str:
    version = ObjectVersion.objects.get(object_id=object_id)
    return str(storages["default"].path(version.storage_name))


def test_it_reads_back_every_version_of_every_tenant_and_says_how_many() -> None:
    first, second = _client(), _client()
    for index in range(2):
        obj = _create(first, f"a{index}")["id"]
        assert _put(first, obj, os.urandom(70_000)).status_code == 201
        assert _put(first, obj, b"second version").status_code == 201
    opaque = _create(second, "c", mode="client")
    assert (
        _put(second, opaque["id"], _client_envelope(second, opaque, b"x" * 10)).status_code == 201
    )
    before = AuditEvent.objects.filter(type="object.read").count()

    out, error = _verify()

    assert error is None, out
    assert (
        "5 version(s) of 3 object(s) in 2 tenant(s): 4 gateway read back, "
        "1 client-side complete, 0 shredded, 0 failed"
    ) in out
    # Each check is a read like any other, in the audit log.
    assert AuditEvent.objects.filter(type="object.read").count() == before + 5


def test_it_fails_naming_a_version_whose_body_is_missing() -> None:
    client = _client()
    kept = _create(client, "kept")["id"]
    lost = _create(client, "lost")["id"]
    for obj in (kept, lost):
        assert _put(client, obj, b"content").status_code == 201
    os.remove(_stored_path(lost))

    out, error = _verify()

    assert error is not None
    assert f"FAILED {client.tenant.slug} object {lost} version 1 (gateway)" in out
    assert f"object {kept} " not in out
    assert "1 gateway read back" in out
    assert "1 failed" in out


def test_it_fails_a_body_that_does_not_authenticate_and_a_truncated_envelope() -> None:
    client = _client()
    gateway = _create(client, "g")["id"]
    assert _put(client, gateway, os.urandom(1000)).status_code == 201
    opaque = _create(client, "c", mode="client")
    made = _client_envelope(client, opaque, b"y" * 5000)
    assert _put(client, opaque["id"], made).status_code == 201
    path = _stored_path(gateway)
    with open(path, "r+b") as handle:
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 1]))
    path = _stored_path(opaque["id"])
    os.truncate(path, os.path.getsize(path) - 1)

    out, error = _verify()

    assert error is not None
    assert f"object {gateway} version 1 (gateway): envelope_authentication_failed" in out
    assert f"object {opaque['id']} version 1 (client)" in out
    assert "2 failed" in out


def test_it_counts_shredded_objects_apart_and_limits_itself_to_the_tenants_named() -> None:
    gone, kept = _client(), _client()
    for client in (gone, kept):
        assert _put(client, _create(client, "o")["id"], b"data").status_code == 201
    StoredObject.objects.filter(tenant=gone.tenant).update(shredded_at=timezone.now())

    out, error = _verify()
    assert error is None, out
    assert "1 gateway read back, 0 client-side complete, 1 shredded, 0 failed" in out

    out, error = _verify("--tenant", kept.tenant.slug)
    assert error is None, out
    assert "1 version(s) of 1 object(s) in 1 tenant(s)" in out

    _, error = _verify("--tenant", "no-such-tenant")
    assert error is not None
    assert "no-such-tenant" in str(error)
