"""Console pages for objects and the audit log (``vault.console.views_data``).

Roles are the API's: owners, members and auditors see object metadata, owners and members read
content and delete; owners and auditors read the audit log (PCI-DSS 7.2.1, 7.2.2). Content reads,
deletions and every read of the log are recorded (PCI-DSS 10.2.1.1, 10.2.1.3, 10.2.1.7).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from tests.console.test_console_tenancy import _person, _verified
from vault.audit.models import AuditEvent
from vault.audit.services import audit_integrate, latest_checkpoint, log_of, log_signer
from vault.crypto import merkle
from vault.keys.services import tenant_bind_backend
from vault.objects.models import StoredObject
from vault.objects.services import object_create, version_store_gateway
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create

ROOT = Path(__file__).resolve().parents[2]
CONTENT = b"card batch 2024-06\n" * 50


@pytest.fixture
def acme(db) -> Tenant:
    tenant = tenant_create(slug="acme", name="Acme Payments")
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return tenant


def _gateway(tenant: Tenant, name: str, *contents: bytes) -> StoredObject:
    obj = object_create(
        tenant=tenant, name=name, mode="gateway", content_type="text/plain", token=None
    )
    for data in contents:
        version_store_gateway(
            obj=obj,
            stream=io.BytesIO(data),
            length=len(data),
            content_type="text/plain",
            token=None,
        )
    return obj


def _client_side(tenant: Tenant, name: str) -> StoredObject:
    return object_create(
        tenant=tenant, name=name, mode="client", content_type="application/octet-stream", token=None
    )


def _as(tenant: Tenant, role: str) -> tuple[Client, str]:
    person = _person(tenant, role)
    return _verified(person), person.email


def _url(name: str, tenant: Tenant, **kwargs: object) -> str:
    return reverse(f"console:{name}", kwargs={"slug": tenant.slug, **kwargs})


def _events(tenant: Tenant, event_type: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(tenant=tenant, type=event_type).order_by("pk"))


# --- objects -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_console_objects_lists_searches_and_pages_through_names(acme):
    for n in range(27):
        _gateway(acme, f"reports/2024-{n:02d}.csv")
    _gateway(acme, "ledger.json", b"{}")
    client, _ = _as(acme, Role.MEMBER)

    first = client.get(_url("objects", acme)).content.decode()
    assert "28 objects" in first
    assert "ledger.json" in first
    assert "Page 1 of 2" in first
    second = client.get(_url("objects", acme), {"page": 2}).content.decode()
    assert "reports/2024-26.csv" in second

    found = client.get(_url("objects", acme), {"q": "LEDGER"}).content.decode()
    assert "1 object " in found
    assert "ledger.json" in found
    assert "reports/" not in found
    assert "No object" in client.get(_url("objects", acme), {"q": "nothing"}).content.decode()


@pytest.mark.django_db
def test_console_object_detail_shows_versions_and_client_side_objects_as_opaque(acme):
    gateway = _gateway(acme, "invoices.csv", b"a" * 10, b"b" * 2048)
    opaque = _client_side(acme, "secrets.bin")
    client, _ = _as(acme, Role.OWNER)

    page = client.get(_url("object_detail", acme, pk=gateway.pk)).content.decode()
    assert "Gateway: the vault encrypts and decrypts it." in page
    assert "(10 bytes)" in page
    assert "(2048 bytes)" in page
    assert "Download version 2" in page
    assert "Download version 1" in page
    assert "Delete this object" in page

    page = client.get(_url("object_detail", acme, pk=opaque.pk)).content.decode()
    assert "Encrypted on the client; the server cannot read it." in page
    assert "Download" not in page
    listing = client.get(_url("objects", acme)).content.decode()
    assert "opaque to the server" in listing


@pytest.mark.django_db
def test_console_object_download_streams_the_plaintext_and_records_object_read(acme):
    obj = _gateway(acme, "exports/batch.txt", b"old version", CONTENT)
    client, email = _as(acme, Role.MEMBER)

    response = client.get(_url("object_download", acme, pk=obj.pk))
    assert response.status_code == 200
    assert response.getvalue() == CONTENT
    assert response["Content-Disposition"] == 'attachment; filename="batch.txt"'
    assert (
        response["Cache-Control"].startswith("no-store") or "no-store" in response["Cache-Control"]
    )
    older = client.get(_url("object_download", acme, pk=obj.pk), {"version": 1})
    assert older.getvalue() == b"old version"
    assert older["Content-Disposition"] == 'attachment; filename="v1-batch.txt"'

    reads = _events(acme, "object.read")
    assert [(e.actor_id, e.resource_id) for e in reads] == [(email, str(obj.pk))] * 2
    assert client.get(_url("object_download", acme, pk=obj.pk), {"version": 9}).status_code == 404


@pytest.mark.django_db
def test_console_object_download_refuses_the_auditor_who_sees_metadata_only(acme):
    obj = _gateway(acme, "batch.txt", CONTENT)
    client, email = _as(acme, Role.AUDITOR)

    page = client.get(_url("object_detail", acme, pk=obj.pk)).content.decode()
    assert "Download" not in page
    assert "Delete this object" not in page
    assert 'method="post"' not in page.split("</header>", 1)[1]
    response = client.get(_url("object_download", acme, pk=obj.pk))
    assert response.status_code == 403
    assert _events(acme, "object.read") == []
    [denied] = _events(acme, "access.denied")
    assert denied.actor_id == email


@pytest.mark.django_db
def test_console_object_download_has_no_plaintext_of_client_side_objects(acme):
    obj = _client_side(acme, "secrets.bin")
    client, _ = _as(acme, Role.OWNER)
    assert client.get(_url("object_download", acme, pk=obj.pk)).status_code == 404
    assert _events(acme, "object.read") == []


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER])
def test_console_object_delete_deletes_through_the_service_and_records_it(acme, role):
    obj = _gateway(acme, "old.csv", b"x")
    client, email = _as(acme, role)

    confirm = client.get(_url("object_delete", acme, pk=obj.pk)).content.decode()
    assert "Delete object</button>" in confirm
    response = client.post(_url("object_delete", acme, pk=obj.pk), follow=True)
    assert response.redirect_chain == [(_url("objects", acme), 302)]
    assert "Deleted old.csv." in response.content.decode()
    obj.refresh_from_db()
    assert obj.deleted_at is not None
    [deleted] = _events(acme, "object.delete")
    assert (deleted.actor_id, deleted.resource_id) == (email, str(obj.pk))
    # Gone from the pages at once.
    assert client.get(_url("object_detail", acme, pk=obj.pk)).status_code == 404
    assert client.post(_url("object_delete", acme, pk=obj.pk)).status_code == 404


@pytest.mark.django_db
def test_console_object_delete_refuses_the_auditor_and_changes_nothing(acme):
    obj = _gateway(acme, "keep.csv", b"x")
    client, _ = _as(acme, Role.AUDITOR)
    confirm = client.get(_url("object_delete", acme, pk=obj.pk)).content.decode()
    assert "Your role cannot delete objects." in confirm
    assert "Delete object</button>" not in confirm
    assert client.post(_url("object_delete", acme, pk=obj.pk)).status_code == 403
    obj.refresh_from_db()
    assert obj.deleted_at is None
    assert _events(acme, "object.delete") == []


@pytest.mark.django_db
def test_console_objects_answer_404_for_another_tenants_object_and_change_nothing(acme):
    obj = _gateway(acme, "acme-only.csv", CONTENT)
    beta = tenant_create(slug="beta", name="Beta Bank")
    client, _ = _as(beta, Role.OWNER)
    # Through the other tenant's own slug and through acme's: nothing either way.
    for slug in (beta.slug, acme.slug):
        for name in ("object_detail", "object_download", "object_delete"):
            url = reverse(f"console:{name}", kwargs={"slug": slug, "pk": obj.pk})
            assert client.get(url).status_code == 404, url
        url = reverse("console:object_delete", kwargs={"slug": slug, "pk": obj.pk})
        assert client.post(url).status_code == 404
    assert "acme-only" not in client.get(_url("objects", beta)).content.decode()
    obj.refresh_from_db()
    assert obj.deleted_at is None
    assert _events(acme, "object.read") == []
    assert _events(acme, "object.delete") == []


@pytest.mark.django_db
def test_console_objects_are_not_for_custodians(acme):
    obj = _gateway(acme, "batch.txt", b"x")
    client, _ = _as(acme, Role.CUSTODIAN)
    for url in (_url("objects", acme), _url("object_detail", acme, pk=obj.pk)):
        assert client.get(url).status_code == 403
    assert client.post(_url("object_delete", acme, pk=obj.pk)).status_code == 403
    obj.refresh_from_db()
    assert obj.deleted_at is None
    assert "Objects</a>" not in client.get(_url("dashboard", acme)).content.decode()


# --- audit log -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_console_audit_filters_events_and_records_each_read(acme):
    _gateway(acme, "a.txt", b"a")
    client, email = _as(acme, Role.AUDITOR)
    page = client.get(_url("audit", acme)).content.decode()
    assert "object.create" in page
    assert "version.create" in page or "object.write" in page or "key.wrap" in page

    filtered = client.get(_url("audit", acme), {"type": "object.create"}).content.decode()
    rows = re.findall(r"<td><code>([\w.]+)</code></td>", filtered)
    assert rows == ["object.create"]

    failures = client.get(_url("audit", acme), {"outcome": "failure"}).content.decode()
    assert "No event matches these filters." in failures

    mine = client.get(_url("audit", acme), {"actor": email.upper()}).content.decode()
    assert set(re.findall(r"<td><code>([\w.]+)</code></td>", mine)) == {"audit.read"}

    later = client.get(_url("audit", acme), {"start": "2999-01-01T00:00"}).content.decode()
    assert "No event matches these filters." in later
    bad = client.get(_url("audit", acme), {"start": "yesterday"})
    assert bad.status_code == 200
    assert "Enter a valid date/time." in bad.content.decode()

    reads = _events(acme, "audit.read")
    assert len(reads) == 6
    assert {e.actor_id for e in reads} == {email}
    assert all(b'"view":"events"' in bytes(e.leaf) for e in reads)


@pytest.mark.django_db
def test_console_audit_event_shows_its_proof_checkpoint_and_the_cvault_command(acme):
    _gateway(acme, "a.txt", b"a")
    event = _events(acme, "object.create")[0]
    log = log_of(acme)
    audit_integrate(log)
    checkpoint = latest_checkpoint(log)
    assert checkpoint is not None
    client, email = _as(acme, Role.OWNER)

    response = client.get(_url("audit_detail", acme, event_id=event.uuid))
    page = response.content.decode()
    assert str(event.uuid) in page
    assert f"tree of size {checkpoint.size}" in page
    assert checkpoint.note.splitlines()[0] in page
    # The proof shown is the real one: it proves the leaf into the checkpoint's root.
    proof = [
        base64.b64decode(h) for h in re.findall(r"<li><code>([A-Za-z0-9+/=]+)</code></li>", page)
    ]
    merkle.verify_inclusion(
        index=event.leaf_entry.index,
        tree_size=checkpoint.size,
        leaf_hash=merkle.leaf_hash(bytes(event.leaf)),
        proof=proof,
        root=bytes(checkpoint.root),
    )
    assert "cvault trust save" in page
    assert "cvault audit verify audit-export.json" in page
    assert "http://testserver/api/v1/audit/export/?from=" in page
    # The page does not vouch for itself.
    assert "verified" not in page.lower().replace("verified: …", "")

    [read] = [e for e in _events(acme, "audit.read") if e.resource_type == "audit_event"]
    assert (read.actor_id, read.resource_id) == (email, str(event.uuid))


@pytest.mark.django_db
def test_console_audit_event_before_its_checkpoint_says_so(acme):
    _gateway(acme, "a.txt", b"a")
    event = _events(acme, "object.create")[0]
    client, _ = _as(acme, Role.AUDITOR)
    page = client.get(_url("audit_detail", acme, event_id=event.uuid)).content.decode()
    assert "not in a signed checkpoint yet" in page


@pytest.mark.django_db
def test_console_audit_export_of_one_event_verifies_offline_with_cvault(acme, tmp_path):
    _gateway(acme, "a.txt", b"a")
    event = _events(acme, "object.create")[0]
    log = log_of(acme)
    audit_integrate(log)
    client, email = _as(acme, Role.AUDITOR)
    page = client.get(_url("audit_detail", acme, event_id=event.uuid)).content.decode()
    link = re.search(r'<a href="([^"]+/audit/export/\?[^"]+)" download>', page)
    assert link is not None

    response = client.get(link.group(1).replace("&amp;", "&"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="audit-export.json"'
    bundle = tmp_path / "audit-export.json"
    bundle.write_bytes(response.content)
    [export] = _events(acme, "audit.export")
    assert export.actor_id == email
    assert json.loads(bytes(export.leaf))["details"]["from"].startswith(
        event.time.strftime("%Y-%m-%dT%H:%M:%S")
    )

    # The page's command, run on "your own machine" with the log's key trusted out of band.
    vkey = log_signer(log).all_keys[0].vkey
    done = subprocess.run(
        [sys.executable, "-m", "vault.client.cli", "audit", "verify", str(bundle), "--trust", vkey],
        cwd=tmp_path,
        env={"CVAULT_CONFIG_DIR": str(tmp_path / "cvault"), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    index = event.leaf_entry.index
    assert done.stdout.startswith("verified: ")
    assert f"1 event(s) (indices {index}..{index})" in done.stdout


@pytest.mark.django_db
def test_console_audit_export_of_the_whole_log_is_the_api_bundle(acme):
    _gateway(acme, "a.txt", b"a")
    client, _ = _as(acme, Role.OWNER)
    # No checkpoint yet: nothing to export, and the page says so.
    empty = client.get(_url("audit_export", acme), follow=True)
    assert "no signed checkpoint yet" in empty.content.decode()
    audit_integrate(log_of(acme))
    response = client.get(_url("audit_export", acme), {"from": "", "to": ""})
    document = json.loads(response.content)
    assert document["origin"].endswith("/audit/acme")
    assert len(_events(acme, "audit.export")) == 2
    bad = client.get(_url("audit_export", acme), {"from": "soon"}, follow=True)
    assert "Give the times of the export" in bad.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.MEMBER, Role.CUSTODIAN])
def test_console_audit_is_for_owners_and_auditors_only(acme, role):
    _gateway(acme, "a.txt", b"a")
    audit_integrate(log_of(acme))
    event = _events(acme, "object.create")[0]
    client, _ = _as(acme, role)
    for url in (
        _url("audit", acme),
        _url("audit_detail", acme, event_id=event.uuid),
        _url("audit_export", acme),
    ):
        assert client.get(url).status_code == 403, url
    assert _events(acme, "audit.read") == []
    assert _events(acme, "audit.export") == []


@pytest.mark.django_db
def test_console_audit_answers_404_for_another_tenants_event(acme):
    _gateway(acme, "a.txt", b"a")
    event = _events(acme, "object.create")[0]
    beta = tenant_create(slug="beta", name="Beta Bank")
    client, _ = _as(beta, Role.AUDITOR)
    url = reverse("console:audit_detail", kwargs={"slug": beta.slug, "event_id": event.uuid})
    assert client.get(url).status_code == 404
    url = reverse("console:audit_detail", kwargs={"slug": acme.slug, "event_id": event.uuid})
    assert client.get(url).status_code == 404
    assert "<code>object.create</code>" not in client.get(_url("audit", beta)).content.decode()
    assert _events(acme, "audit.read") == []


@pytest.mark.django_db
def test_console_data_pages_show_the_auditor_no_form_that_changes_anything(acme):
    obj = _gateway(acme, "a.txt", b"a")
    audit_integrate(log_of(acme))
    event = _events(acme, "object.create")[0]
    client, _ = _as(acme, Role.AUDITOR)
    for url in (
        _url("objects", acme),
        _url("object_detail", acme, pk=obj.pk),
        _url("object_delete", acme, pk=obj.pk),
        _url("audit", acme),
        _url("audit_detail", acme, event_id=event.uuid),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode().split("</header>", 1)[1]
        assert 'method="post"' not in body, url
