"""The tenant dashboard in a real browser: an owner signs in with a password and a TOTP code and
sees the tenant's numbers; a person of another tenant who types its address sees nothing."""

from __future__ import annotations

import io
import re

from compliance.engine import compliance_run
from compliance.models import Finding, RequirementResult
from vault.audit.services import latest_checkpoint, log_of
from vault.keys.services import tenant_bind_backend
from vault.lifecycle.approvals import approval_request
from vault.lifecycle.models import ApprovalAction
from vault.objects.services import object_create, object_delete, version_store_gateway
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create


def _store(tenant: Tenant, name: str, *sizes: int) -> None:
    obj = object_create(
        tenant=tenant, name=name, mode="gateway", content_type="text/plain", token=None
    )
    for size in sizes:
        version_store_gateway(
            obj=obj,
            stream=io.BytesIO(b"x" * size),
            length=size,
            content_type="text/plain",
            token=None,
        )


def _row(page, section: str, heading: str) -> str:
    """The text of the row headed ``heading`` in the dashboard section ``section``."""
    row = page.locator(f"#{section} tr").filter(
        has=page.get_by_role("rowheader", name=heading, exact=True)
    )
    return " ".join(row.inner_text().split())


def test_console_dashboard_shows_the_owner_the_tenant_at_a_glance(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    _store(tenant, "invoices.csv", 1000, 500)
    _store(tenant, "ledger.json", 24)
    _store(tenant, "old.txt", 4096)
    object_delete(obj=tenant.stored_objects.get(name="old.txt"))
    approval_request(
        tenant=tenant,
        user=owner.user,
        action=ApprovalAction.POLICY_LOOSEN,
        reason="Deduplicate the nightly exports",
        params={"deduplicate": True},
    )
    run = compliance_run(tenant)
    checkpoint = latest_checkpoint(log_of(tenant))
    assert checkpoint is not None

    sign_in(page, owner)
    # The only tenant: straight from the console's home to its dashboard.
    assert page.url.endswith("/console/t/acme/")
    screenshot(page, "dashboard")

    assert page.get_by_role("heading", level=1).inner_text() == "Dashboard"
    assert page.get_by_role("navigation", name="Acme Payments").is_visible()
    assert page.get_by_role("link", name="Dashboard").get_attribute("aria-current") == "page"
    for key in ("Primary key-encryption key", "Signing key (audit checkpoints, attestations)"):
        assert "Available" in _row(page, "keys", key)

    assert _row(page, "objects", "Live objects").endswith(" 2")
    assert _row(page, "objects", "Versions").endswith(" 3")
    assert "(1524 bytes)" in _row(page, "objects", "Size of every version, before encryption")
    assert _row(page, "approvals", "Requests waiting for approvals").endswith(" 1")

    findings = {
        label: RequirementResult.objects.filter(run=run, finding=value).count()
        for value, label in Finding.choices
    }
    assert sum(findings.values()) > 0
    for label, count in findings.items():
        assert _row(page, "compliance", label) == f"{label} {count}"

    checkpoint_text = _row(page, "audit", "Last signed checkpoint")
    assert re.search(rf"\b{checkpoint.size} events, signed \d{{4}}-\d\d-\d\d", checkpoint_text)
    verdict = "Intact" if run.integrity["ok"] else "Problems found"
    assert _row(page, "audit", "Last full verification").startswith(
        f"Last full verification {verdict}"
    )
    # Nothing was blocked by the Content-Security-Policy, and no script ran into an error.
    assert page_errors == []


def test_console_hides_a_tenant_from_a_person_of_another_tenant(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = tenant_create(slug="acme", name="Acme Payments")
    make_person("owner@acme.example", tenant=acme, role=Role.OWNER)
    tenant_bind_backend(tenant=acme, backend_alias="local")
    _store(acme, "secret-plans.txt", 10)
    beta = tenant_create(slug="beta", name="Beta Bank")
    outsider = make_person("owner@beta.example", tenant=beta, role=Role.OWNER)

    sign_in(page, outsider)
    assert page.url.endswith("/console/t/beta/")
    assert "Acme" not in page.content()

    response = page.goto("/console/t/acme/")
    assert response is not None
    assert response.status == 404
    screenshot(page, "other-tenant")
    seen = page.content()
    for secret in ("Acme", "acme", "secret-plans", "owner@acme.example"):
        assert secret not in seen
    # The same answer as for a tenant that does not exist: nothing tells the two apart.
    missing = page.goto("/console/t/no-such-tenant/")
    assert missing is not None
    assert missing.status == 404
    assert page.content() == seen.replace("/console/t/acme/", "/console/t/no-such-tenant/")
