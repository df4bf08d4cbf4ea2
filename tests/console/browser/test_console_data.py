"""Objects and the audit log in a real browser: an owner browses, downloads and deletes objects;
an auditor browses and filters the log, opens an event with its proof and the `cvault` command,
downloads the export, and finds nothing to change anywhere; an outsider finds nothing at all."""

from __future__ import annotations

import io
import json
from pathlib import Path

from vault.audit.models import AuditEvent
from vault.audit.services import audit_integrate, latest_checkpoint, log_of
from vault.keys.services import tenant_bind_backend
from vault.objects.models import StoredObject
from vault.objects.services import object_create, version_store_gateway
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create

CONTENT = "".join(f"4111-xxxx-xxxx-{n:04d},{n * 7} EUR\n" for n in range(500)).encode()


def _acme() -> Tenant:
    tenant = tenant_create(slug="acme", name="Acme Payments")
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return tenant


def _gateway(tenant: Tenant, name: str, *contents: bytes) -> StoredObject:
    obj = object_create(
        tenant=tenant, name=name, mode="gateway", content_type="text/csv", token=None
    )
    for data in contents:
        version_store_gateway(
            obj=obj, stream=io.BytesIO(data), length=len(data), content_type="text/csv", token=None
        )
    return obj


def _unexpected(errors: list[str]) -> list[str]:
    """The page errors but the refusals the test asked for (the 403 or 404 and its favicon)."""
    return [e for e in errors if not e.startswith("Failed to load resource: the server responded")]


def _no_change_forms(page) -> int:
    """POST forms in the page's main content (the sign-out form sits in the top bar)."""
    return page.locator("main form[method='post'], nav.tenant-nav form[method='post']").count()


def test_console_objects_owner_browses_downloads_and_deletes(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = _acme()
    owner = make_person("owner@acme.example", tenant=acme, role=Role.OWNER)
    batch = _gateway(acme, "settlements/batch-07.csv", b"first draft\n", CONTENT)
    _gateway(acme, "settlements/batch-08.csv", b"later\n")
    _gateway(acme, "scratch.txt", b"delete me\n")
    object_create(
        tenant=acme,
        name="cardholder-export.cv1",
        mode="client",
        content_type="application/octet-stream",
        token=None,
    )

    sign_in(page, owner)
    page.get_by_role("navigation", name="Acme Payments").get_by_role("link", name="Objects").click()
    page.wait_for_url("**/console/t/acme/objects/")
    screenshot(page, "objects")
    assert page.get_by_role("heading", level=1).inner_text() == "Objects"
    assert "4 objects" in page.locator("caption").inner_text()
    client_row = page.get_by_role("row").filter(has_text="cardholder-export.cv1")
    assert "opaque to the server" in client_row.inner_text()

    page.get_by_label("Search by name").fill("batch")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/objects/?q=batch")
    screenshot(page, "objects-search")
    assert "2 objects" in page.locator("caption").inner_text()
    assert page.get_by_role("link", name="scratch.txt").count() == 0

    page.get_by_role("link", name="settlements/batch-07.csv").click()
    page.wait_for_url(f"**/objects/{batch.pk}/")
    screenshot(page, "object")
    assert page.get_by_role("heading", level=1).inner_text() == "settlements/batch-07.csv"
    assert (
        f"({len(CONTENT)} bytes)"
        in page.get_by_role("row").filter(has_text="Download version 2").inner_text()
    )

    with page.expect_download() as info:
        page.get_by_role("link", name="Download version 2").click()
    download = info.value
    assert download.suggested_filename == "v2-batch-07.csv"
    assert Path(download.path()).read_bytes() == CONTENT
    read = AuditEvent.objects.get(tenant=acme, type="object.read")
    assert (read.actor_id, read.resource_id) == (owner.email, str(batch.pk))

    page.goto("/console/t/acme/objects/")
    page.get_by_role("link", name="cardholder-export.cv1").click()
    page.wait_for_load_state()
    screenshot(page, "object-client-side")
    assert (
        "Encrypted on the client; the server cannot read it."
        in page.locator("#opaque").inner_text()
    )
    assert page.get_by_role("link", name="Download").count() == 0

    page.goto("/console/t/acme/objects/?q=scratch")
    page.get_by_role("link", name="scratch.txt").click()
    page.get_by_role("link", name="Delete this object…").click()
    page.wait_for_url("**/delete/")
    screenshot(page, "object-delete")
    page.get_by_role("button", name="Delete object").click()
    page.wait_for_url("**/console/t/acme/objects/")
    screenshot(page, "objects-after-delete")
    assert "Deleted scratch.txt." in page.get_by_role("status").inner_text()
    assert page.get_by_role("link", name="scratch.txt").count() == 0
    assert StoredObject.objects.get(name="scratch.txt").deleted_at is not None
    assert AuditEvent.objects.filter(tenant=acme, type="object.delete").count() == 1
    assert page_errors == []


def test_console_audit_auditor_filters_opens_a_proof_and_exports(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = _acme()
    auditor = make_person("auditor@acme.example", tenant=acme, role=Role.AUDITOR)
    _gateway(acme, "settlements/batch-07.csv", CONTENT)
    log = log_of(acme)
    audit_integrate(log)
    checkpoint = latest_checkpoint(log)
    assert checkpoint is not None
    created = AuditEvent.objects.get(tenant=acme, type="object.create")

    sign_in(page, auditor)
    page.get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/console/t/acme/audit/")
    screenshot(page, "audit")
    assert page.get_by_role("heading", level=1).inner_text() == "Audit log"
    assert f"{checkpoint.size} events" in page.locator(".lead").inner_text()

    page.get_by_label("Event type").select_option("object.create")
    page.get_by_label("Outcome").select_option("success")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit/?type=object.create**")
    screenshot(page, "audit-filtered")
    assert "1 event," in page.locator("caption").inner_text()
    rows = page.locator("table tbody tr")
    assert rows.count() == 1
    assert "object.create" in rows.first.inner_text()

    rows.first.get_by_role("link").click()
    page.wait_for_url(f"**/audit/{created.uuid}/")
    screenshot(page, "audit-event")
    proof = page.locator("#proof").inner_text()
    assert f"Leaf {created.leaf_entry.index} in the tree of size {checkpoint.size}" in proof
    assert checkpoint.note.splitlines()[0] in proof
    assert page.locator("#verify-command").inner_text() == "cvault audit verify audit-export.json"
    assert "/api/v1/audit/export/?from=" in page.locator("#export-command").inner_text()

    with page.expect_download() as info:
        page.get_by_role("link", name="download it from the console").click()
    bundle = json.loads(Path(info.value.path()).read_bytes())
    assert info.value.suggested_filename == "audit-export.json"
    assert bundle["origin"].endswith("/audit/acme")
    assert AuditEvent.objects.filter(tenant=acme, type="audit.export").count() == 1

    page.goto("/console/t/acme/audit/")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download export").click()
    whole = json.loads(Path(info.value.path()).read_bytes())
    assert whole["origin"] == bundle["origin"]
    assert AuditEvent.objects.filter(tenant=acme, type="audit.export").count() == 2
    # Every page read was recorded, by the auditor.
    reads = AuditEvent.objects.filter(tenant=acme, type="audit.read")
    assert reads.count() >= 4
    assert set(reads.values_list("actor_id", flat=True)) == {auditor.email}
    assert page_errors == []


def test_console_data_auditor_opens_every_page_and_finds_nothing_to_change(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = _acme()
    auditor = make_person("auditor@acme.example", tenant=acme, role=Role.AUDITOR)
    obj = _gateway(acme, "batch.csv", CONTENT)
    audit_integrate(log_of(acme))
    event = AuditEvent.objects.get(tenant=acme, type="object.create")

    sign_in(page, auditor)
    pages = {
        "objects": "/console/t/acme/objects/",
        "object": f"/console/t/acme/objects/{obj.pk}/",
        "object-delete": f"/console/t/acme/objects/{obj.pk}/delete/",
        "audit": "/console/t/acme/audit/",
        "audit-event": f"/console/t/acme/audit/{event.uuid}/",
    }
    for name, url in pages.items():
        response = page.goto(url)
        assert response is not None
        assert response.status == 200, url
        screenshot(page, name)
        assert _no_change_forms(page) == 0, url
    page.goto(pages["object"])
    assert page.get_by_role("link", name="Download version 1").count() == 0
    assert page_errors == []
    # The content stays out of reach even by its address: metadata only, as over the API.
    refused = page.goto(f"/console/t/acme/objects/{obj.pk}/download/")
    assert refused is not None
    assert refused.status == 403
    screenshot(page, "object-download-refused")
    assert not AuditEvent.objects.filter(tenant=acme, type="object.read").exists()
    obj.refresh_from_db()
    assert obj.deleted_at is None
    assert _unexpected(page_errors) == []


def test_console_data_pages_answer_404_to_an_outsider(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = _acme()
    obj = _gateway(acme, "acme-secret.csv", CONTENT)
    audit_integrate(log_of(acme))
    event = AuditEvent.objects.get(tenant=acme, type="object.create")
    beta = tenant_create(slug="beta", name="Beta Bank")
    outsider = make_person("owner@beta.example", tenant=beta, role=Role.OWNER)

    sign_in(page, outsider)
    urls = [
        "/console/t/acme/objects/",
        f"/console/t/acme/objects/{obj.pk}/",
        f"/console/t/acme/objects/{obj.pk}/download/",
        "/console/t/acme/audit/",
        f"/console/t/acme/audit/{event.uuid}/",
        "/console/t/acme/audit/export/",
        # Acme's ids through the outsider's own tenant.
        f"/console/t/beta/objects/{obj.pk}/",
        f"/console/t/beta/audit/{event.uuid}/",
    ]
    for n, url in enumerate(urls):
        response = page.goto(url)
        assert response is not None
        assert response.status == 404, url
        screenshot(page, f"not-found-{n}")
        assert "acme-secret" not in page.content()
    assert not AuditEvent.objects.filter(
        tenant=acme, type__in=["object.read", "audit.read"]
    ).exists()
    assert _unexpected(page_errors) == []
