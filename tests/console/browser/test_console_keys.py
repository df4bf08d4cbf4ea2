"""Keys, rotation campaigns and dual control in a real browser: a custodian asks for the tenant's
keys to be destroyed and two other custodians approve it in their own inboxes, each in a browser
of their own; an owner rotates the key and follows its campaign; the auditor opens every page of
the area and is offered nothing that changes anything; a person of another tenant sees nothing."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vault.keys.models import KeyBinding, KeyRole
from vault.keys.services import tenant_bind_backend
from vault.lifecycle.approvals import approval_request
from vault.lifecycle.models import ApprovalAction, ApprovalRequest, Campaign, RequestState
from vault.lifecycle.services import campaigns_run, key_rotate
from vault.objects.services import object_create, version_store_gateway
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create

KEYS = "/console/t/acme/keys/"
APPROVALS = "/console/t/acme/approvals/"


def _acme() -> Tenant:
    tenant = tenant_create(slug="acme", name="Acme Payments")
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return tenant


def _store(tenant: Tenant, name: str) -> None:
    obj = object_create(
        tenant=tenant, name=name, mode="gateway", content_type="text/plain", token=None
    )
    version_store_gateway(
        obj=obj, stream=io.BytesIO(b"x" * 100), length=100, content_type="text/plain", token=None
    )


@pytest.fixture
def new_page(browser: Any, live_server: Any, page_errors: list[str]) -> Iterator[Callable[[], Any]]:
    """Pages in browser contexts of their own (one per person: separate cookies), whose errors
    go to ``page_errors`` like the ``page`` fixture's."""
    contexts = []

    def make() -> Any:
        context = browser.new_context(base_url=live_server.url, locale="en-GB")
        context.set_default_timeout(15_000)
        contexts.append(context)
        made = context.new_page()
        made.on(
            "console",
            lambda message: page_errors.append(message.text) if message.type == "error" else None,
        )
        made.on("pageerror", lambda error: page_errors.append(str(error)))
        return made

    yield make
    for context in contexts:
        context.close()


def _request_text(page: Any, pk: int) -> str:
    return " ".join(page.locator(f"#request-{pk}").inner_text().split())


def _state(page: Any, pk: int) -> str:
    return page.locator(f"#request-{pk} .state").inner_text()


def _messages(page: Any) -> str:
    return " ".join(page.locator(".messages").inner_text().split())


def test_console_keys_two_custodians_approve_a_destroy_a_third_requested(
    page, new_page, page_errors, make_person, sign_in, screenshot
):
    tenant = _acme()
    alice = make_person("alice@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    bob = make_person("bob@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    carol = make_person("carol@acme.example", tenant=tenant, role=Role.CUSTODIAN)

    # Alice asks, on the keys page.
    sign_in(page, alice)
    page.get_by_role("navigation", name="Acme Payments").get_by_role("link", name="Keys").click()
    page.wait_for_url(f"**{KEYS}")
    screenshot(page, "alice-keys")
    assert page.get_by_role("heading", name="Primary key-encryption key").is_visible()
    page.get_by_label("Reason for destroying the keys").fill("Customer offboarding, ticket 4711")
    page.get_by_role("button", name="Request destruction").click()
    page.wait_for_url(f"**{APPROVALS}")
    screenshot(page, "alice-approvals-requested")
    made = ApprovalRequest.objects.get(tenant=tenant)
    pk = made.pk
    assert made.requested_by == alice.user
    assert f"Request #{pk} to destroy the tenant's keys is waiting for 2 approvals" in _messages(
        page
    )
    assert _state(page, pk) == "Waiting for approvals"
    assert "Approvals 0 of 2" in _request_text(page, pk)
    # She may cancel her request but not approve it.
    assert page.get_by_role("button", name=f"Approve request #{pk}").count() == 0
    assert page.get_by_role("button", name=f"Cancel request #{pk}").is_visible()

    # Bob approves in his inbox.
    bob_page = new_page()
    sign_in(bob_page, bob)
    bob_page.goto(APPROVALS)
    screenshot(bob_page, "bob-inbox")
    assert "Customer offboarding, ticket 4711" in _request_text(bob_page, pk)
    bob_page.get_by_label(f"Reason for your decision on request #{pk}").fill("Checked the ticket")
    bob_page.get_by_role("button", name=f"Approve request #{pk}").click()
    bob_page.wait_for_load_state()
    screenshot(bob_page, "bob-approved")
    assert f"You approved request #{pk}. It is now: Waiting for approvals." in _messages(bob_page)
    assert "Approvals 1 of 2" in _request_text(bob_page, pk)
    assert "You voted: Approve." in _request_text(bob_page, pk)
    assert bob_page.get_by_role("button", name=f"Approve request #{pk}").count() == 0

    # Carol approves in hers: the request has its approvals, and waits out its waiting period.
    carol_page = new_page()
    sign_in(carol_page, carol)
    carol_page.goto(APPROVALS)
    screenshot(carol_page, "carol-inbox")
    carol_page.get_by_label(f"Reason for your decision on request #{pk}").fill("Confirmed too")
    carol_page.get_by_role("button", name=f"Approve request #{pk}").click()
    carol_page.wait_for_load_state()
    screenshot(carol_page, "carol-approved")
    waiting = "Approved; waiting for the end of the waiting period"
    assert _state(carol_page, pk) == waiting
    text = _request_text(carol_page, pk)
    assert "Approvals 2 of 2" in text
    assert "Runs no earlier than" in text
    votes = carol_page.get_by_role("table", name=f"Votes on request #{pk}")
    assert "bob@acme.example Approve Checked the ticket" in " ".join(votes.inner_text().split())
    assert "carol@acme.example Approve Confirmed too" in " ".join(votes.inner_text().split())

    made.refresh_from_db()
    assert made.state == RequestState.APPROVED
    assert made.not_before is not None
    assert made.approved_at is not None
    assert made.not_before > made.approved_at

    # Alice sees the same; the keys page points to the open request instead of a new form.
    page.reload()
    screenshot(page, "alice-approvals-approved")
    assert _state(page, pk) == waiting
    page.goto(KEYS)
    screenshot(page, "alice-keys-after")
    assert page.get_by_role("link", name=f"Request #{pk}").is_visible()
    assert page.get_by_role("button", name="Request destruction").count() == 0
    assert page_errors == []


def test_console_keys_owner_rotates_the_key_and_sees_the_campaign(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _acme()
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    _store(tenant, "invoices.csv")
    _store(tenant, "ledger.json")

    sign_in(page, owner)
    page.goto(KEYS)
    screenshot(page, "keys-before")
    assert "No rotation yet." in page.locator("#campaigns").inner_text()
    versions = page.get_by_role("table", name="Versions of the primary key-encryption key")
    assert versions.get_by_role("rowheader").all_inner_texts() == ["1"]

    page.get_by_role("button", name="Rotate the primary key-encryption key").click()
    page.wait_for_load_state()
    screenshot(page, "keys-rotated")
    assert "Primary key-encryption key rotated to version 2" in _messages(page)
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    assert binding.current_version == 2
    campaign = Campaign.objects.get(tenant=tenant)
    versions = page.get_by_role("table", name="Versions of the primary key-encryption key")
    assert versions.get_by_role("rowheader").all_inner_texts() == ["2", "1"]
    row = " ".join(page.locator("#campaigns tbody tr").first.inner_text().split())
    assert row.startswith(f"#{campaign.pk} primary 2 Requested Running 0%")
    assert f"0 rewrapped, 0 already current, 0 failed of {campaign.total}" in row

    # The campaign runs (here: in the test's own worker) and the page follows it.
    campaigns_run(worker="test", max_seconds=30)
    page.reload()
    screenshot(page, "keys-campaign-complete")
    row = " ".join(page.locator("#campaigns tbody tr").first.inner_text().split())
    assert row.startswith(f"#{campaign.pk} primary 2 Requested Complete 100%")
    assert f"{campaign.total} rewrapped" in row
    assert page_errors == []


def test_console_keys_custodian_marks_a_version_compromised(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _acme()
    custodian = make_person("custodian@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    _store(tenant, "invoices.csv")
    sign_in(page, custodian)
    page.goto(KEYS)
    screenshot(page, "keys")
    # Without the confirmation box ticked nothing happens.
    page.get_by_role("button", name="Mark compromised and rotate").first.click()
    page.wait_for_load_state()
    assert KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY).current_version == 1
    page.get_by_label(
        "The current version of the primary key-encryption key is compromised"
    ).check()
    page.get_by_role("button", name="Mark compromised and rotate").first.click()
    page.wait_for_load_state()
    screenshot(page, "keys-compromised")
    assert KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY).current_version == 2
    campaign = Campaign.objects.get(tenant=tenant)
    assert campaign.reason == "compromised"
    versions = page.get_by_role("table", name="Versions of the primary key-encryption key")
    assert "compromised" in versions.inner_text().lower()
    assert page_errors == []


def test_console_keys_owner_creates_the_keys_of_an_unbound_tenant(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)

    sign_in(page, owner)
    page.goto(KEYS)
    screenshot(page, "keys-unbound")
    assert "This tenant has no keys yet." in page.locator("#key-list").inner_text()
    page.get_by_label("Key backend", exact=True).select_option("local")
    assert page.get_by_label("Recovery key backend (optional)").input_value() == ""
    page.get_by_role("button", name="Create the keys").click()
    page.wait_for_load_state()
    screenshot(page, "keys-created")
    assert "The tenant's keys are created: primary key-encryption key in local" in _messages(page)
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    assert page.get_by_role("heading", name="Primary key-encryption key").is_visible()
    assert binding.key_id in page.locator("#key-primary").inner_text()
    versions = page.get_by_role("table", name="Versions of the primary key-encryption key")
    assert versions.get_by_role("rowheader").all_inner_texts() == ["1"]
    assert page.get_by_role("button", name="Create the keys").count() == 0
    assert page_errors == []


def test_console_keys_auditor_opens_every_page_and_is_offered_no_change(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _acme()
    custodian = make_person("custodian@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    auditor = make_person("auditor@acme.example", tenant=tenant, role=Role.AUDITOR)
    key_rotate(tenant=tenant)
    approval_request(
        tenant=tenant,
        user=custodian.user,
        action=ApprovalAction.KEY_DESTROY,
        reason="Customer offboarding",
        params={},
    )

    sign_in(page, auditor)
    for name, url in (("keys", KEYS), ("approvals", APPROVALS)):
        page.goto(url)
        screenshot(page, name)
        assert page.get_by_role("heading", level=1).inner_text() == name.capitalize()
        # The sign-out form in the top bar is the only form.
        forms = page.locator("form")
        assert forms.count() == 1
        assert forms.first.get_attribute("action") == "/console/logout/"
        assert page.locator("main button, main input, main textarea").count() == 0
    assert "Customer offboarding" in page.locator("#open").inner_text()
    page.goto(KEYS)
    assert "Running" in page.locator("#campaigns").inner_text()
    assert page_errors == []


def test_console_keys_hides_the_keys_and_approvals_from_another_tenant(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _acme()
    custodian = make_person("custodian@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    approval_request(
        tenant=tenant,
        user=custodian.user,
        action=ApprovalAction.KEY_DESTROY,
        reason="Secret offboarding",
        params={},
    )
    key_id = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY).key_id
    beta = tenant_create(slug="beta", name="Beta Bank")
    outsider = make_person("owner@beta.example", tenant=beta, role=Role.OWNER)

    sign_in(page, outsider)
    for name, url in (("keys", KEYS), ("approvals", APPROVALS)):
        response = page.goto(url)
        assert response is not None
        assert response.status == 404
        screenshot(page, f"other-tenant-{name}")
        seen = page.content()
        for secret in ("Acme", "Secret offboarding", key_id, "custodian@acme.example"):
            assert secret not in seen
    # Their own approvals inbox does not show Acme's request either.
    page.goto("/console/t/beta/approvals/")
    screenshot(page, "own-approvals")
    assert "No request is waiting." in page.locator("#open").inner_text()
    assert "Secret offboarding" not in page.content()
    # Chromium logs each 404 answer as an error; nothing else went wrong.
    not_found = "Failed to load resource: the server responded with a status of 404 (Not Found)"
    assert set(page_errors) <= {not_found}
