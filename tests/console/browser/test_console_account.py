"""A new person's first sign-in in a real browser: enrolling an authenticator app from the page's
own key, receiving recovery codes, then reaching the tenant's pages with the keyboard alone."""

from __future__ import annotations

import re
from base64 import b32decode

from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import PASSWORD, make_membership, make_user
from vault.tenants.models import Role
from vault.tenants.services import tenant_create


def _code_for(secret_text: str) -> str:
    """The code an authenticator app fed the page's key shows now."""
    key = b32decode(secret_text.replace(" ", ""))
    return f"{TOTP(key, step=30, t0=0, digits=6, drift=0).token():06d}"


def test_console_account_enrols_an_app_and_shows_recovery_codes_once(page, page_errors, screenshot):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    user = make_user(email="new@acme.example")
    make_membership(tenant=tenant, user=user, role=Role.MEMBER)
    page.goto("/console/t/acme/")
    # Not signed in: sign-in first, with the page asked for kept as ``next``.
    page.wait_for_url("**/console/login/**")
    page.get_by_label("E-mail address").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    # A password alone reaches nothing: no app yet, so enrolment.
    page.wait_for_url("**/console/login/enrol/**")
    screenshot(page, "enrol")
    assert page.locator("figure.qr svg").count() == 1
    secret = page.locator("code.secret").inner_text()
    page.get_by_label(re.compile("code", re.I)).fill("000000")
    page.get_by_role("button", name="Confirm").click()
    assert "/console/login/enrol/" in page.url, "a wrong code does not enrol"
    assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    # A failure throttles the device for a second (django-otp): wait as a person would.
    page.wait_for_timeout(2100)
    page.get_by_label(re.compile("code", re.I)).fill(_code_for(secret))
    page.get_by_role("button", name="Confirm").click()
    # The codes come in the answer to the confirmation itself, once.
    page.get_by_role("heading", name="Your recovery codes").wait_for()
    screenshot(page, "recovery-codes")
    codes = page.locator("ol.codes code").all_inner_texts()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert TOTPDevice.objects.filter(user=user, confirmed=True).count() == 1
    # Shown once: the recovery-codes page offers new ones and never shows these again.
    page.goto("/console/recovery-codes/")
    screenshot(page, "recovery-codes-later")
    later = page.locator("main").inner_text()
    assert not any(code in later for code in codes)
    assert page_errors == []


def test_console_account_pages_are_reachable_with_the_keyboard(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = tenant_create(slug="acme", name="Acme Payments")
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    sign_in(page, owner)
    page.goto("/console/t/acme/")
    screenshot(page, "dashboard")
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return e ? [e.tagName, e.getAttribute('href') || '', e.textContent.trim()] : null }"
        )
        if focused and focused[0] == "A" and focused[1].startswith("/console/t/acme/"):
            reached.append(focused[1])
    for section in ("keys/", "approvals/", "objects/", "audit/", "compliance/", "members/"):
        assert f"/console/t/acme/{section}" in reached, (section, reached)
    # Enter on a focused link follows it.
    page.get_by_role("link", name="Keys").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/t/acme/keys/")
    screenshot(page, "keys-by-keyboard")
    assert page_errors == []
