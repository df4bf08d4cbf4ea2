"""Resumable uploads: parts in order, cut-short parts resent, completion exactly once."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import io
import itertools
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.utils import timezone

from kms_plugins.types import KeyRef, WrappedKey
from tests.objects.test_dedup import _dedup_client
from tests.objects.test_objects import MARKER, _client, _create, _get, _put
from vault.crypto import envelope
from vault.keys.registry import key_backend
from vault.objects.models import Blob, ObjectVersion, UploadPart, UploadSession
from vault.objects.services import UploadTruncated, storage_sweep_orphans
from vault.objects.uploads import upload_part, uploads_purge_expired
from vault.tenants.models import Role

pytestmark = pytest.mark.django_db


def _open(client, object_id: int, length: int) -> dict:
    response = client.post(
        "/api/v1/uploads/", {"object": object_id, "length": length}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def _part(client, upload: str, offset: int, body: bytes, **extra):
    return client.put(
        f"/api/v1/uploads/{upload}/parts/{offset}/",
        body,
        content_type="application/octet-stream",
        **extra,
    )


def _files() -> list[Path]:
    root = Path(storages["default"].location)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_gateway_upload_in_parts_makes_one_version_and_leaves_no_parts() -> None:
    client = _client()
    obj = _create(client)["id"]
    data = MARKER * 9000  # about 315 KiB: parts that do not align with segments
    session = _open(client, obj, len(data))
    assert session["offset"] == 0
    assert session["complete"] is False
    assert session["envelope_context"] is None
    cuts = [0, 100_000, 170_001, len(data)]
    for start, end in itertools.pairwise(cuts):
        answer = _part(client, session["id"], start, data[start:end])
        assert answer.status_code == 200, answer.content
        assert answer.json()["offset"] == end
        if end < len(data):
            assert not ObjectVersion.objects.filter(object_id=obj).exists()
            # What waits between requests is ciphertext.
            for path in _files():
                assert MARKER not in path.read_bytes(), path
    done = answer.json()
    assert done["complete"] is True
    assert done["version"]["number"] == 1
    assert done["version"]["size"] == len(data)
    assert _get(client, obj)[1] == data
    assert not UploadPart.objects.exists()
    assert len(_files()) == 1, "only the version's body is left"
    status = client.get(f"/api/v1/uploads/{session['id']}/").json()
    assert status["complete"] is True
    assert status["version"]["number"] == 1


def test_a_part_cut_short_stores_nothing_and_is_sent_again() -> None:
    client = _client()
    obj = _create(client)["id"]
    data = os.urandom(200_000)
    session = _open(client, obj, len(data))["id"]
    assert _part(client, session, 0, data[:50_000]).status_code == 200
    # A connection that ends early (over HTTP: tests/objects/test_over_http.py).
    with pytest.raises(UploadTruncated):
        upload_part(
            session=UploadSession.objects.get(pk=session),
            offset=50_000,
            stream=io.BytesIO(data[50_000:90_000]),
            length=100_000,
        )
    assert client.get(f"/api/v1/uploads/{session}/").json()["offset"] == 50_000
    assert UploadPart.objects.count() == 1
    assert len(_files()) == 1
    wrong = _part(client, session, 90_000, data[90_000:])
    assert wrong.status_code == 409
    assert wrong.json()["error"]["code"] == "offset_mismatch"
    assert "offset 50000" in wrong.json()["error"]["message"]
    assert _part(client, session, 50_000, data[50_000:]).json()["complete"] is True
    assert _get(client, obj)[1] == data


def test_parts_must_fit_the_declared_length() -> None:
    client = _client()
    obj = _create(client)["id"]
    session = _open(client, obj, 10)["id"]
    beyond = _part(client, session, 0, b"x" * 11)
    assert (beyond.status_code, beyond.json()["error"]["code"]) == (400, "part_beyond_end")
    empty = _part(client, session, 0, b"", CONTENT_LENGTH="0")
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "empty_part")
    zero = client.post("/api/v1/uploads/", {"object": obj, "length": 0}, format="json")
    assert zero.status_code == 400


def test_an_upload_longer_than_the_object_limit_is_refused_at_once(settings) -> None:
    settings.VAULT_MAX_OBJECT_BYTES = 1000
    client = _client()
    obj = _create(client)["id"]
    response = client.post("/api/v1/uploads/", {"object": obj, "length": 1001}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "object_too_large"


def test_a_completed_upload_completes_once() -> None:
    client = _client()
    obj = _create(client)["id"]
    session = _open(client, obj, 5)["id"]
    assert _part(client, session, 0, b"hello").json()["complete"] is True
    again = _part(client, session, 5, b"", CONTENT_LENGTH="0")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "upload_complete")
    assert ObjectVersion.objects.filter(object_id=obj).count() == 1


def test_a_completion_that_failed_for_a_passing_reason_is_retried(tmp_path) -> None:
    client = _client()
    obj = _create(client)["id"]
    session = _open(client, obj, 20)["id"]
    assert _part(client, session, 0, b"first ten.").status_code == 200
    directory = key_backend("local")._path.parent
    directory.rename(tmp_path / "away")
    try:
        # The key backend is needed both to seal the part and to make the version.
        failed = _part(client, session, 10, b"second ten")
        assert failed.status_code == 503
    finally:
        (tmp_path / "away").rename(directory)
    assert client.get(f"/api/v1/uploads/{session}/").json()["offset"] == 10
    assert _part(client, session, 10, b"second ten").json()["complete"] is True
    assert _get(client, obj)[1] == b"first ten.second ten"


def _client_envelope(context: dict[str, str], data: bytes) -> bytes:
    stanza = WrappedKey("local", KeyRef("mine", 1), "A256GCM", b"w" * 60)
    return envelope.encrypt(data, dek=os.urandom(32), context=context, stanzas=[stanza])


def test_a_client_side_upload_in_parts_stores_the_clients_envelope() -> None:
    client = _client()
    obj = _create(client, mode="client")["id"]
    data = os.urandom(300_000)
    context = {"tenant": client.tenant.slug, "object": str(obj), "version": "1"}
    made = _client_envelope(context, data)
    length = len(made)
    session = _open(client, obj, length)
    assert session["envelope_context"] == context
    for start in range(0, length, 70_000):
        answer = _part(client, session["id"], start, made[start : start + 70_000])
        assert answer.status_code == 200, answer.content
    assert answer.json()["complete"] is True
    assert _get(client, obj)[1] == made


def test_a_client_side_upload_is_checked_at_completion() -> None:
    client = _client()
    obj = _create(client, mode="client")["id"]
    wrong = _client_envelope(
        {"tenant": client.tenant.slug, "object": str(obj), "version": "9"}, b"data"
    )
    session = _open(client, obj, len(wrong))["id"]
    response = _part(client, session, 0, wrong)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_mismatch"
    assert not ObjectVersion.objects.filter(object_id=obj).exists()
    assert client.delete(f"/api/v1/uploads/{session}/").status_code == 204
    assert not UploadPart.objects.exists()
    assert _files() == []


def test_a_version_stored_meanwhile_makes_a_client_side_upload_conflict() -> None:
    client = _client()
    obj = _create(client, mode="client")["id"]
    context = {"tenant": client.tenant.slug, "object": str(obj), "version": "1"}
    made = _client_envelope(context, b"late")
    session = _open(client, obj, len(made))["id"]
    assert _put(client, obj, _client_envelope(context, b"first")).status_code == 201
    response = _part(client, session, 0, made)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "version_conflict")


def test_a_session_is_seen_by_the_person_who_opened_it_only() -> None:
    alice = _client()
    obj = _create(alice)["id"]
    session = _open(alice, obj, 10)["id"]
    for other in (_client(tenant=alice.tenant), _client(role=Role.OWNER, tenant=alice.tenant)):
        assert other.get(f"/api/v1/uploads/{session}/").status_code == 404
        assert _part(other, session, 0, b"0123456789").status_code == 404
    outsider = _client()
    response = outsider.post("/api/v1/uploads/", {"object": obj, "length": 10}, format="json")
    assert response.status_code == 404
    assert UploadSession.objects.get(pk=session).received == 0


def test_expired_sessions_are_refused_and_purged_with_their_parts() -> None:
    client = _client()
    obj = _create(client)["id"]
    session = _open(client, obj, 20)["id"]
    assert _part(client, session, 0, b"first ten.").status_code == 200
    # The sweep of orphaned bodies leaves parts of live sessions alone.
    assert storage_sweep_orphans(now=timezone.now() + timedelta(days=2)) == 0
    UploadSession.objects.filter(pk=session).update(expires_at=timezone.now())
    late = _part(client, session, 10, b"second ten")
    assert (late.status_code, late.json()["error"]["code"]) == (410, "upload_expired")
    assert uploads_purge_expired() == 1
    assert not UploadSession.objects.exists()
    assert _files() == []


def test_a_deleted_objects_sessions_go_with_it(settings) -> None:
    from vault.objects.services import objects_purge_deleted

    settings.VAULT_OBJECT_RETENTION_DAYS = 0
    client = _client()
    obj = _create(client)["id"]
    session = _open(client, obj, 20)["id"]
    _part(client, session, 0, b"first ten.")
    client.delete(f"/api/v1/objects/{obj}/")
    assert client.get(f"/api/v1/uploads/{session}/").status_code == 404
    assert objects_purge_deleted(now=timezone.now() + timedelta(seconds=1)) == 1
    assert not UploadSession.objects.exists()
    assert _files() == []


def test_uploads_in_parts_are_deduplicated_too() -> None:
    client = _dedup_client()
    data = MARKER * 5000
    for name in ("one", "two"):
        obj = _create(client, name)["id"]
        session = _open(client, obj, len(data))["id"]
        _part(client, session, 0, data[:60_000])
        assert _part(client, session, 60_000, data[60_000:]).json()["complete"] is True
        assert _get(client, obj)[1] == data
    assert Blob.objects.count() == 1
    assert len(_files()) == 1


def test_a_client_side_part_cut_short_leaves_no_file() -> None:
    client = _client()
    obj = _create(client, mode="client")["id"]
    session = _open(client, obj, 100_000)["id"]
    with pytest.raises(UploadTruncated):
        upload_part(
            session=UploadSession.objects.get(pk=session),
            offset=0,
            stream=io.BytesIO(b"x" * 40_000),
            length=100_000,
        )
    assert _files() == []
    assert UploadSession.objects.get(pk=session).received == 0
