"""Objects through the API: gateway and client-side modes, ranges, tampering, isolation."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import dataclasses
import io
import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from kms_plugins.types import KeyState
from tests.factories import make_membership
from vault.crypto import envelope
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.objects.models import ObjectVersion
from vault.tenants.models import Role
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db
MARKER = b"CIPHERVAULT-PLAINTEXT-MARKER-7f3a9c"


def _client(role: str = Role.MEMBER, tenant=None, bind: bool = True) -> APIClient:
    membership = make_membership(role=role, **({"tenant": tenant} if tenant else {}))
    if bind and not KeyBinding.objects.filter(tenant=membership.tenant).exists():
        call_command(
            "tenant_bind_backend",
            "--tenant",
            membership.tenant.slug,
            "--backend",
            "local",
            stdout=StringIO(),
        )
    issued = token_create(tenant=membership.tenant, name="t", role=role, user=membership.user)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    client.tenant = membership.tenant
    client.user_email = membership.user.email
    return client


def _create(client: APIClient, name: str = "report.pdf", mode: str = "gateway") -> dict:
    response = client.post("/api/v1/objects/", {"name": name, "mode": mode}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _put(client: APIClient, object_id: int, body: bytes, **extra):
    return client.put(
        f"/api/v1/objects/{object_id}/content/",
        body,
        content_type="application/octet-stream",
        **extra,
    )


def _get(client: APIClient, object_id: int, **extra):
    response = client.get(f"/api/v1/objects/{object_id}/content/", **extra)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 200_000])
def test_gateway_objects_round_trip(size: int) -> None:
    client = _client()
    obj = _create(client)
    data = os.urandom(size)
    stored = _put(client, obj["id"], data, CONTENT_LENGTH=str(size))
    assert stored.status_code == 201, stored.content
    assert stored.json()["size"] == size
    response, body = _get(client, obj["id"])
    assert response.status_code == 200
    assert body == data
    assert response["Content-Length"] == str(size)


def test_only_ciphertext_reaches_the_database_and_storage(caplog) -> None:
    client = _client()
    obj = _create(client)
    data = MARKER * 5000
    with caplog.at_level("DEBUG"):
        assert _put(client, obj["id"], data).status_code == 201
        assert _get(client, obj["id"])[1] == data
    version = ObjectVersion.objects.get(object_id=obj["id"])
    assert MARKER not in bytes(version.header)
    with storages["default"].open(version.storage_name, "rb") as handle:
        assert MARKER not in handle.read()
    assert MARKER.decode() not in caplog.text
    # Every row of every table, as the database returns it.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608  (names from introspection)
            for row in cursor.fetchall():
                for value in row:
                    raw = (
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
                    assert MARKER not in raw, table
    # Every stored file.
    root = Path(storages["default"].location)
    for path in root.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path


def test_each_version_has_its_own_key_and_context() -> None:
    client = _client()
    obj = _create(client)
    assert _put(client, obj["id"], b"one").status_code == 201
    assert _put(client, obj["id"], b"two").status_code == 201
    first, second = ObjectVersion.objects.filter(object_id=obj["id"]).order_by("number")
    h1, h2 = envelope.parse_header(bytes(first.header)), envelope.parse_header(bytes(second.header))
    assert h1.context == {"tenant": client.tenant.slug, "object": str(obj["id"]), "version": "1"}
    assert h2.context["version"] == "2"
    assert h1.stanzas[0].ciphertext != h2.stanzas[0].ciphertext
    assert _get(client, obj["id"], QUERY_STRING="version=1")[1] == b"one"
    assert _get(client, obj["id"])[1] == b"two"
    versions = client.get(f"/api/v1/objects/{obj['id']}/versions/").json()["results"]
    assert [v["number"] for v in versions] == [1, 2]


def test_ranges_are_served_by_segment() -> None:
    client = _client()
    obj = _create(client)
    data = os.urandom(300_000)
    _put(client, obj["id"], data)
    for header, expected, first in (
        ("bytes=0-9", data[:10], 0),
        ("bytes=65530-65545", data[65530:65546], 65530),
        ("bytes=299990-", data[299990:], 299990),
        ("bytes=-5", data[-5:], 299995),
    ):
        response, body = _get(client, obj["id"], HTTP_RANGE=header)
        assert response.status_code == 206, header
        assert body == expected, header
        assert response["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/300000"
    response, _ = _get(client, obj["id"], HTTP_RANGE="bytes=300000-")
    assert response.status_code == 416


def test_a_tampered_body_aborts_the_download_and_releases_nothing_bad() -> None:
    client = _client()
    obj = _create(client)
    data = os.urandom(200_000)
    _put(client, obj["id"], data)
    version = ObjectVersion.objects.get(object_id=obj["id"])
    path = storages["default"].path(version.storage_name)
    with open(path, "r+b") as handle:
        handle.seek(100_000)
        byte = handle.read(1)
        handle.seek(100_000)
        handle.write(bytes([byte[0] ^ 1]))
    response = client.get(f"/api/v1/objects/{obj['id']}/content/")
    released = bytearray()

    def consume() -> None:
        for chunk in response.streaming_content:
            released.extend(chunk)

    with pytest.raises(envelope.AuthenticationFailed):
        consume()
    assert data.startswith(released), "only authentic segments before the bad one were sent"
    assert len(released) < 100_000


def test_uploads_must_declare_their_length_and_stay_within_the_limit(settings) -> None:
    client = _client()
    obj = _create(client)
    settings.VAULT_MAX_OBJECT_BYTES = 1000
    too_big = _put(client, obj["id"], b"x" * 1001)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "object_too_large"
    assert not ObjectVersion.objects.exists()


def test_an_unbound_tenant_cannot_store_gateway_objects() -> None:
    client = _client(bind=False)
    obj = _create(client)
    response = _put(client, obj["id"], b"data")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "tenant_not_bound"


def test_a_backend_outage_answers_503_and_stores_nothing(tmp_path) -> None:
    client = _client()
    obj = _create(client)
    _put(client, obj["id"], b"before")
    backend = key_backend("local")
    directory = backend._path.parent
    directory.rename(tmp_path / "away")
    try:
        response = _put(client, obj["id"], b"during")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "key_backend_unavailable"
        response, _ = _get(client, obj["id"])
        assert response.status_code == 503
    finally:
        (tmp_path / "away").rename(directory)
    assert ObjectVersion.objects.filter(object_id=obj["id"]).count() == 1
    assert _get(client, obj["id"])[1] == b"before"


def test_a_deactivated_key_still_reads_but_a_destroyed_key_does_not() -> None:
    client = _client()
    obj = _create(client)
    _put(client, obj["id"], b"secret")
    binding = KeyBinding.objects.get(tenant=client.tenant, role=KeyRole.PRIMARY)
    backend = key_backend("local")
    ref = backend.describe(binding.key_id).versions[0].ref
    backend.set_state(ref, KeyState.DEACTIVATED)
    assert _get(client, obj["id"])[1] == b"secret"
    refused = _put(client, obj["id"], b"more")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "key_state_forbids"
    backend.destroy(ref)
    response, _ = _get(client, obj["id"])
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "key_destroyed"


def _client_envelope(client: APIClient, obj: dict, data: bytes, dek: bytes | None = None) -> bytes:
    context = client.get(f"/api/v1/objects/{obj['id']}/").json()["next_context"]
    from kms_plugins.types import KeyRef, WrappedKey

    stanza = WrappedKey(
        backend="local", key=KeyRef("client-key", 1), mechanism="A256GCM", ciphertext=b"w" * 60
    )
    return envelope.encrypt(data, dek=dek or os.urandom(32), context=context, stanzas=[stanza])


def test_client_side_objects_store_the_envelope_the_client_made() -> None:
    client = _client(bind=False)  # the vault needs no key for client-side objects
    obj = _create(client, name="opaque-name-token", mode="client")
    dek = os.urandom(32)
    made = _client_envelope(client, obj, MARKER * 100, dek)
    stored = _put(client, obj["id"], made)
    assert stored.status_code == 201, stored.content
    assert stored.json()["size"] == len(MARKER) * 100
    _, body = _get(client, obj["id"])
    assert body == made
    context = {"tenant": client.tenant.slug, "object": str(obj["id"]), "version": "1"}
    assert envelope.decrypt(body, key=dek, context=context) == MARKER * 100
    _, tail = _get(client, obj["id"], HTTP_RANGE="bytes=10-")
    assert tail == made[10:]


def test_client_side_uploads_must_target_this_object_and_version() -> None:
    client = _client(bind=False)
    obj = _create(client, mode="client")
    other = _create(client, name="other", mode="client")
    for_other = _client_envelope(client, other, b"data")
    response = _put(client, obj["id"], for_other)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_mismatch"
    response = _put(client, obj["id"], b"not an envelope at all" * 10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_envelope"
    good = _client_envelope(client, obj, b"data")
    header_length = len(envelope.read_header(io.BytesIO(good))[1])
    response = _put(client, obj["id"], good[: header_length + 10])  # no body can be 10 bytes
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_envelope"
    assert not ObjectVersion.objects.exists()
    assert _put(client, obj["id"], good).status_code == 201
    assert _put(client, obj["id"], good).json()["error"]["code"] == "context_mismatch", "replayed"


def test_names_are_unique_among_live_objects_and_deletion_hides_them() -> None:
    client = _client()
    obj = _create(client)
    again = client.post("/api/v1/objects/", {"name": "report.pdf"}, format="json")
    assert again.status_code == 409
    assert client.delete(f"/api/v1/objects/{obj['id']}/").status_code == 204
    assert client.get(f"/api/v1/objects/{obj['id']}/").status_code == 404
    assert client.get("/api/v1/objects/").json()["count"] == 0
    assert _create(client)["id"] != obj["id"]


def test_objects_are_listed_with_filters() -> None:
    client = _client()
    for name in ("a/1", "a/2", "b/1"):
        _create(client, name=name)
    names = [o["name"] for o in client.get("/api/v1/objects/?prefix=a/").json()["results"]]
    assert names == ["a/1", "a/2"]


def test_auditors_see_metadata_but_not_content() -> None:
    member = _client()
    obj = _create(member)
    _put(member, obj["id"], b"data")
    auditor = _client(Role.AUDITOR, tenant=member.tenant)
    assert auditor.get(f"/api/v1/objects/{obj['id']}/").status_code == 200
    assert auditor.get(f"/api/v1/objects/{obj['id']}/content/").status_code == 403


def test_another_tenants_object_is_not_found() -> None:
    mine, theirs = _client(), _client()
    obj = _create(theirs)
    _put(theirs, obj["id"], b"theirs")
    assert mine.get(f"/api/v1/objects/{obj['id']}/content/").status_code == 404
    assert _put(mine, obj["id"], b"overwrite").status_code == 404
    assert _get(theirs, obj["id"])[1] == b"theirs"


def test_deleted_objects_are_purged_after_the_retention_window(settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from vault.core.scheduler import EmbeddedScheduler
    from vault.objects.models import StoredObject

    client = _client()
    kept, gone = _create(client, name="kept"), _create(client, name="gone")
    for obj in (kept, gone):
        _put(client, obj["id"], b"payload")
    client.delete(f"/api/v1/objects/{gone['id']}/")
    version = ObjectVersion.objects.get(object_id=gone["id"])
    scheduler = EmbeddedScheduler({"p": {"task": "vault.objects.purge_deleted", "schedule": 60}})
    scheduler.tick()
    assert StoredObject.objects.filter(pk=gone["id"]).exists(), "still within the window"
    StoredObject.objects.filter(pk=gone["id"]).update(
        deleted_at=timezone.now() - timedelta(days=settings.VAULT_OBJECT_RETENTION_DAYS, seconds=1)
    )
    scheduler.entries[0].last_run_at = None
    scheduler.tick()
    assert not StoredObject.objects.filter(pk=gone["id"]).exists()
    assert not storages["default"].exists(version.storage_name)
    assert _get(client, kept["id"])[1] == b"payload"


def test_a_recovery_key_opens_what_the_primary_key_wrapped(settings, tmp_path) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "escrow": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "e.json"), "PASSPHRASE": "escrow pass"},
        },
    }
    membership = make_membership(role=Role.MEMBER)
    call_command(
        "tenant_bind_backend",
        "--tenant",
        membership.tenant.slug,
        "--backend",
        "local",
        "--recovery-backend",
        "escrow",
        stdout=StringIO(),
    )
    client = _client(tenant=membership.tenant)
    obj = _create(client)
    _put(client, obj["id"], b"recoverable")
    version = ObjectVersion.objects.get(object_id=obj["id"])
    header = envelope.parse_header(bytes(version.header))
    recovery = KeyBinding.objects.get(tenant=membership.tenant, role=KeyRole.RECOVERY)
    assert [s.key.key_id for s in header.stanzas][1] == recovery.key_id
    context = {"tenant": membership.tenant.slug, "object": str(obj["id"]), "version": "1"}
    escrow = key_backend("escrow")
    dek = envelope.unwrap_dek(header, lambda w: escrow.unwrap(w, context), key_id=recovery.key_id)
    with storages["default"].open(version.storage_name, "rb") as handle:
        body = handle.read()
    assert (
        envelope.decrypt(bytes(version.header) + body, key=dek, context=context) == b"recoverable"
    )


def test_clients_may_ask_for_the_bytes_as_an_octet_stream() -> None:
    client = _client()
    obj = _create(client)
    _put(client, obj["id"], b"bytes")
    response, body = _get(client, obj["id"], HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 200
    assert body == b"bytes"


def test_a_client_rewraps_a_version_by_replacing_only_its_stanzas() -> None:
    from kms_plugins.types import KeyRef, WrappedKey

    client = _client(bind=False)
    obj = _create(client, mode="client")
    dek = os.urandom(32)
    made = _client_envelope(client, obj, b"kept as is", dek)
    assert _put(client, obj["id"], made).status_code == 201
    header, raw = envelope.read_header(io.BytesIO(made))
    new_stanza = WrappedKey(
        backend="local", key=KeyRef("client-key", 2), mechanism="A256GCM", ciphertext=b"n" * 60
    )
    rewrapped = header.with_stanzas([new_stanza]).to_bytes()
    url = f"/api/v1/objects/{obj['id']}/versions/1/header/"
    response = client.put(url, rewrapped, content_type="application/octet-stream")
    assert response.status_code == 200, response.content
    _, body = _get(client, obj["id"])
    assert body == rewrapped + made[len(raw) :], "same body, new stanzas"
    stored = envelope.parse_header(bytes(ObjectVersion.objects.get(object_id=obj["id"]).header))
    assert stored.stanzas[0].key.version == 2
    context = {"tenant": client.tenant.slug, "object": str(obj["id"]), "version": "1"}
    assert envelope.decrypt(body, key=dek, context=context) == b"kept as is"


def test_a_new_header_may_not_change_anything_but_the_stanzas() -> None:
    client = _client(bind=False)
    obj = _create(client, mode="client")
    made = _client_envelope(client, obj, b"data")
    _put(client, obj["id"], made)
    other = _client_envelope(client, obj, b"data")  # another salt and commitment
    other_header = envelope.read_header(io.BytesIO(other))[1]
    url = f"/api/v1/objects/{obj['id']}/versions/1/header/"
    response = client.put(url, other_header, content_type="application/octet-stream")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "header_mismatch"
    response = client.put(url, other_header + b"x", content_type="application/octet-stream")
    assert response.json()["error"]["code"] == "malformed_envelope"
    assert (
        client.put(
            f"/api/v1/objects/{obj['id']}/versions/9/header/",
            other_header,
            content_type="application/octet-stream",
        ).status_code
        == 404
    )
    assert _get(client, obj["id"])[1] == made
    gateway = _client()
    gobj = _create(gateway, name="g")
    _put(gateway, gobj["id"], b"x")
    response = gateway.put(
        f"/api/v1/objects/{gobj['id']}/versions/1/header/",
        other_header,
        content_type="application/octet-stream",
    )
    assert response.json()["error"]["code"] == "wrong_mode"


@pytest.mark.parametrize(
    ("range_header", "status"),
    [("bytes=5-3", 200), ("bytes=-0", 416), ("bytes=" + "9" * 30 + "-", 200), ("bytes=²-", 200)],
)
@pytest.mark.parametrize("mode", ["gateway", "client"])
def test_odd_ranges_answer_sensibly(mode: str, range_header: str, status: int) -> None:
    client = _client(bind=mode == "gateway")
    obj = _create(client, mode=mode)
    data = b"0123456789" * 10
    body = data if mode == "gateway" else _client_envelope(client, obj, data)
    assert _put(client, obj["id"], body).status_code == 201
    response, received = _get(client, obj["id"], HTTP_RANGE=range_header)
    assert response.status_code == status, (range_header, response.content[:200])
    if status == 200:
        assert received == body


def test_an_empty_object_answers_a_range_with_416() -> None:
    client = _client()
    obj = _create(client)
    _put(client, obj["id"], b"", CONTENT_LENGTH="0")
    response, _ = _get(client, obj["id"], HTTP_RANGE="bytes=-5")
    assert response.status_code == 416


def test_a_gateway_upload_needs_a_plain_media_type() -> None:
    client = _client()
    obj = _create(client)
    bad = client.put(f"/api/v1/objects/{obj['id']}/content/", b"x", content_type="a" * 300 + "/b")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_content_type"
    assert not ObjectVersion.objects.exists()
    good = client.put(f"/api/v1/objects/{obj['id']}/content/", b"x", content_type="text/plain")
    assert good.status_code == 201
    response, _ = _get(client, obj["id"])
    assert response["Content-Disposition"] == "attachment"


@pytest.mark.parametrize("field", ["segment size", "context", "salt", "commitment"])
def test_a_rewrap_cannot_change_any_fixed_field(field: str) -> None:
    client = _client(bind=False)
    obj = _create(client, mode="client")
    made = _client_envelope(client, obj, b"data" * 100)
    _put(client, obj["id"], made)
    header, _ = envelope.read_header(io.BytesIO(made))
    changed = {
        "segment size": lambda h: dataclasses.replace(h, segment_size=h.segment_size * 2),
        "context": lambda h: dataclasses.replace(
            h, context_bytes=h.context_bytes.replace(b'"1"', b'"2"')
        ),
        "salt": lambda h: dataclasses.replace(h, salt=bytes(32)),
        "commitment": lambda h: dataclasses.replace(h, commitment=bytes(32)),
    }[field](header)
    url = f"/api/v1/objects/{obj['id']}/versions/1/header/"
    response = client.put(url, changed.to_bytes(), content_type="application/octet-stream")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "header_mismatch"
    oversized = client.put(
        url, b"x" * (envelope.MAX_HEADER_SIZE + 1), content_type="application/octet-stream"
    )
    assert oversized.status_code == 400
    assert _get(client, obj["id"])[1] == made


def test_only_the_uploader_or_an_owner_may_rewrap_and_the_old_header_is_kept() -> None:
    from vault.objects.models import HeaderHistory

    uploader = _client(bind=False)
    obj = _create(uploader, mode="client")
    made = _client_envelope(uploader, obj, b"data")
    _put(uploader, obj["id"], made)
    _, raw = envelope.read_header(io.BytesIO(made))
    url = f"/api/v1/objects/{obj['id']}/versions/1/header/"
    colleague = _client(tenant=uploader.tenant, bind=False)
    refused = colleague.put(url, raw, content_type="application/octet-stream")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_the_uploader"
    owner = _client(Role.OWNER, tenant=uploader.tenant, bind=False)
    assert owner.put(url, raw, content_type="application/octet-stream").status_code == 200
    (kept,) = HeaderHistory.objects.all()
    assert bytes(kept.header) == raw
    other_tenant = _client(bind=False)
    assert other_tenant.put(url, raw, content_type="application/octet-stream").status_code == 404


def test_prefix_filtering_is_case_sensitive() -> None:
    client = _client()
    for name in ("Reports/q1", "reports/q2"):
        _create(client, name=name)
    names = [o["name"] for o in client.get("/api/v1/objects/?prefix=reports/").json()["results"]]
    assert names == ["reports/q2"]


def test_listing_does_not_query_per_object() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _client()
    for index in range(3):
        obj = _create(client, name=f"n{index}")
        _put(client, obj["id"], b"x")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/v1/objects/").json()["count"] == 3
    for index in range(3, 9):
        obj = _create(client, name=f"n{index}")
        _put(client, obj["id"], b"x")
    with CaptureQueriesContext(connection) as more:
        listed = client.get("/api/v1/objects/").json()
    assert listed["count"] == 9
    assert all(row["latest_version"]["number"] == 1 for row in listed["results"])
    assert len(more.captured_queries) == len(few.captured_queries)


def test_orphaned_bodies_are_swept_after_a_day() -> None:
    from datetime import timedelta

    from django.core.files.base import ContentFile
    from django.utils import timezone

    from vault.objects.services import storage_sweep_orphans

    client = _client()
    obj = _create(client)
    _put(client, obj["id"], b"kept")
    storage = storages["default"]
    stray = storage.save("9/9/1-orphan", ContentFile(b"left by a crash"))
    assert storage_sweep_orphans() == 0, "too young to be sure it is an orphan"
    assert storage_sweep_orphans(now=timezone.now() + timedelta(days=2)) == 1
    assert not storage.exists(stray)
    assert _get(client, obj["id"])[1] == b"kept"


def test_the_orphan_sweep_runs_before_anything_was_stored(settings, tmp_path) -> None:
    from vault.objects.services import storage_sweep_orphans

    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "not-yet-created")},
        },
    }
    assert storage_sweep_orphans() == 0
