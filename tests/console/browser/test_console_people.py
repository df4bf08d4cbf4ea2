"""Members, roles and API tokens in a real browser: an owner adds a member, changes a role, asks
for a new owner (dual control), creates a token that is shown once and revokes it; an auditor sees
the same pages without a form; a person of another tenant gets 404."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page

from vault.lifecycle.models import ApprovalRequest
from vault.tenants.models import Membership, Role
from vault.tenants.services import tenant_create
from vault.tokens.models import ApiToken
from vault.tokens.services import token_create


def _section(page: Page, heading: str) -> Locator:
    return page.locator("section").filter(has=page.get_by_role("heading", name=heading))


def _row(page: Page, header: str) -> str:
    row = page.locator("main tr").filter(has=page.get_by_role("rowheader", name=header))
    return " ".join(row.inner_text().split())


def _unexpected(page_errors: list[str]) -> list[str]:
    """Page errors but the browser's notes on the 403 and 404 answers the test asked for (and
    the favicon the bare error pages do not link)."""
    return [e for e in page_errors if not e.startswith("Failed to load resource")]


def _messages(page: Page) -> str:
    return " ".join(page.locator(".messages").inner_text().split())


def test_console_people_owner_manages_members_and_tokens(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    sign_in(page, owner)

    page.get_by_role("link", name="Members").click()
    assert page.url.endswith("/console/t/acme/members/")
    screenshot(page, "members")
    assert page.get_by_role("heading", level=1).inner_text() == "Members"
    assert "Owner" in _row(page, "owner@acme.example (you)")
    assert "Enrolled" in _row(page, "owner@acme.example (you)")
    assert "set-up link" in page.content()  # the page says who hands those out

    # Add a member: no set-up link is shown, only who was added.
    add = _section(page, "Add a member")
    add.get_by_label("E-mail address").fill("carol@acme.example")
    add.get_by_label("Role").select_option(label="Member")
    add.get_by_role("button", name="Add member").click()
    page.wait_for_url("**/console/t/acme/members/")
    screenshot(page, "member-added")
    assert _messages(page) == "carol@acme.example is now a member, as Member."
    assert "Not enrolled" in _row(page, "carol@acme.example")
    assert "/console/set-password/" not in page.content()

    # Change the role.
    change = _section(page, "Change a member's role")
    change.get_by_label("Member", exact=True).select_option(label="carol@acme.example (Member)")
    change.get_by_label("New role").select_option(label="Auditor")
    change.get_by_role("button", name="Change role").click()
    page.wait_for_url("**/console/t/acme/members/")
    screenshot(page, "role-changed")
    assert _messages(page) == "carol@acme.example now has the role Auditor."
    assert "Auditor" in _row(page, "carol@acme.example")

    # Making someone an owner files a request for approvals instead.
    add = _section(page, "Add a member")
    add.get_by_label("E-mail address").fill("dan@acme.example")
    add.get_by_label("Role").select_option(label="Owner")
    add.get_by_label("Reason").fill("A second owner for the holidays")
    add.get_by_role("button", name="Add member").click()
    page.wait_for_url("**/console/t/acme/members/")
    screenshot(page, "owner-requested")
    request = ApprovalRequest.objects.get(tenant=tenant)
    assert f"Request #{request.pk} is waiting" in _messages(page)
    assert not Membership.objects.filter(user__email="dan@acme.example").exists()

    # The last owner cannot step down: the refusal is a message.
    change = _section(page, "Change a member's role")
    change.get_by_label("Member", exact=True).select_option(label="owner@acme.example (Owner)")
    change.get_by_label("New role").select_option(label="Member")
    change.get_by_role("button", name="Change role").click()
    page.wait_for_url("**/console/t/acme/members/")
    screenshot(page, "last-owner")
    assert "last owner" in _messages(page)
    assert "Owner" in _row(page, "owner@acme.example (you)")

    # Remove the member.
    page.get_by_role("button", name="Remove carol@acme.example").click()
    page.wait_for_url("**/console/t/acme/members/")
    screenshot(page, "member-removed")
    assert "carol@acme.example is no longer a member" in _messages(page)
    assert page.locator("main tr").filter(has_text="carol@acme.example").count() == 0

    # Tokens: created, shown once, then revoked.
    page.get_by_role("link", name="API tokens").click()
    assert page.url.endswith("/console/t/acme/tokens/")
    screenshot(page, "tokens")
    assert "This tenant has no API tokens." in page.content()
    create = _section(page, "Create a token")
    create.get_by_label("Name").fill("CI pipeline")
    create.get_by_label("Role").select_option(label="Member")
    create.get_by_label("Lifetime in days").fill("30")
    create.get_by_role("button", name="Create token").click()
    page.wait_for_url("**/console/t/acme/tokens/")
    screenshot(page, "token-created")
    token = ApiToken.objects.get(tenant=tenant)
    clear = page.locator("#new-token").inner_text()
    assert re.fullmatch(rf"{token.prefix}_[A-Za-z0-9_-]{{43}}", clear)
    assert "This is the only time it is shown." in page.content()
    assert "Live" in _row(page, "CI pipeline")

    page.reload()
    screenshot(page, "token-reloaded")
    assert page.locator("#new-token").count() == 0
    assert clear not in page.content()
    assert token.prefix in _row(page, "CI pipeline")

    page.get_by_role("button", name="Revoke CI pipeline").click()
    page.wait_for_url("**/console/t/acme/tokens/")
    screenshot(page, "token-revoked")
    assert _messages(page) == f"The token CI pipeline ({token.prefix}) is revoked."
    assert "Revoked" in _row(page, "CI pipeline")
    assert page.get_by_role("button", name="Revoke CI pipeline").count() == 0
    token.refresh_from_db()
    assert token.revoked_at is not None

    # The person's own account pages are one link away.
    page.get_by_role("link", name="Recovery codes").last.click()
    assert page.url.endswith("/console/recovery-codes/")
    screenshot(page, "recovery-codes")
    assert page_errors == []


def test_console_people_auditor_sees_members_and_tokens_but_no_forms(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    token_create(tenant=tenant, name="Nightly export", role=Role.MEMBER, user=owner.user)
    auditor = make_person("auditor@acme.example", tenant=tenant, role=Role.AUDITOR)
    sign_in(page, auditor)

    page.get_by_role("link", name="Members").click()
    screenshot(page, "members")
    assert "Owner" in _row(page, "owner@acme.example")
    assert "Auditor" in _row(page, "auditor@acme.example (you)")
    assert page.locator("main form").count() == 0
    assert page.locator("main button, main select, main input").count() == 0

    page.get_by_role("link", name="API tokens").click()
    screenshot(page, "tokens")
    assert "owner@acme.example" in _row(page, "Nightly export")
    assert page.locator("main form").count() == 0
    assert page.locator("main button, main select, main input").count() == 0
    assert page_errors == []


def test_console_people_member_sees_only_their_tokens_and_no_members_page(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    token_create(tenant=tenant, name="Owner's token", role=Role.OWNER, user=owner.user)
    member = make_person("member@acme.example", tenant=tenant, role=Role.MEMBER)
    sign_in(page, member)

    assert page.get_by_role("link", name="Members").count() == 0
    page.get_by_role("link", name="API tokens").click()
    screenshot(page, "tokens")
    assert "You have no API tokens here." in page.content()
    assert "Owner's token" not in page.content()
    roles = page.get_by_label("Role").locator("option").all_inner_texts()
    assert roles == ["Member"]

    response = page.goto("/console/t/acme/members/")
    assert response is not None
    assert response.status == 403
    screenshot(page, "members-refused")
    assert _unexpected(page_errors) == []


def test_console_people_pages_are_404_to_an_outsider(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=acme, role=Role.OWNER)
    token_create(tenant=acme, name="Acme secret token", role=Role.OWNER, user=owner.user)
    beta = tenant_create(slug="beta", name="Beta Bank")
    outsider = make_person("owner@beta.example", tenant=beta, role=Role.OWNER)
    sign_in(page, outsider)

    for name in ("members", "tokens"):
        response = page.goto(f"/console/t/acme/{name}/")
        assert response is not None
        assert response.status == 404
        screenshot(page, f"{name}-other-tenant")
        seen = page.content()
        for secret in ("Acme", "owner@acme.example", "Acme secret token"):
            assert secret not in seen

    # Their own tenant's pages work, and show nothing of Acme.
    page.goto("/console/t/beta/members/")
    screenshot(page, "own-members")
    assert "owner@acme.example" not in page.content()
    page.goto("/console/t/beta/tokens/")
    screenshot(page, "own-tokens")
    assert "Acme secret token" not in page.content()
    assert _unexpected(page_errors) == []
