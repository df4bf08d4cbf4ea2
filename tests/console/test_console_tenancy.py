"""Tenant-scoped console pages: MFA cannot be skipped, and the server refuses what a page hides.

The URL lists are built by walking the URLconf, so every console page added later is covered
without touching these tests (PCI-DSS 8.4.2: MFA for all access into the console; 7.2.1, 7.2.2:
access by role, deny by default; 10.2.1.4: refusals are audited).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.console.conftest import password_step, sign_in
from tests.console.test_templates import check_page
from tests.factories import make_membership, make_tenant, make_user
from vault.accounts.models import User
from vault.audit.models import AuditEvent
from vault.console import registry
from vault.console.tenancy import ALL_ROLES, tenant_page
from vault.keys.models import KeyBinding, KeyRole
from vault.tenants.models import Role, Tenant

TENANT_PREFIX = "console/t/<slug:slug>/"
# The sign-in steps themselves: reachable before the second factor, by design.
SIGN_IN_STEPS = {"login", "verify", "enrol", "logout", "password_setup"}
SAMPLE_VALUES = {
    "int": "1",
    "slug": "sample",
    "str": "sample",
    "path": "sample",
    "uuid": "00000000-0000-0000-0000-000000000000",
}
TEST_URLS = "tests.console.tenancy_urls"


def _routes(patterns: list, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        else:
            yield route, pattern


def console_routes(*, slug: str) -> list[tuple[str, str, URLPattern]]:
    """(route, example URL, pattern) of every console URL, the tenant's slug filled in."""
    found = []
    for route, pattern in _routes(get_resolver().url_patterns):
        if not route.startswith("console/"):
            continue
        assert not route.startswith("^"), f"console URLs use path(), not re_path(): {route}"

        def fill(match: re.Match[str]) -> str:
            converter, name = match.group(1) or "str", match.group(2)
            return slug if name == "slug" else SAMPLE_VALUES[converter]

        url = "/" + re.sub(r"<(?:(\w+):)?(\w+)>", fill, route)
        found.append((route, url, pattern))
    return found


def tenant_urls(*, slug: str) -> list[tuple[str, URLPattern]]:
    return [
        (url, p) for route, url, p in console_routes(slug=slug) if route.startswith(TENANT_PREFIX)
    ]


def _roles(pattern: URLPattern) -> dict[str, frozenset[str]]:
    """The roles map of a ``tenant_page`` view (empty for any other view)."""
    callback: Any = pattern.callback
    return getattr(callback, "console_roles", {})


def _console_check_ids() -> list[str]:
    return [m.id for m in run_checks() if m.id and m.id.startswith("console.")]


def _person(tenant: Tenant | None = None, role: str = "", *, device: bool = True) -> User:
    user = make_user()
    if device:
        TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    if tenant is not None:
        make_membership(tenant=tenant, user=user, role=role)
    return user


def _verified(user: User) -> Client:
    client = Client()
    response = sign_in(client, TOTPDevice.objects.get(user=user), email=user.email)
    assert response.status_code == 302, response.content
    return client


def _csrf_client(user: User, slug: str) -> tuple[Client, str]:
    """A verified session that enforces CSRF, and a valid token taken from a console page."""
    client = _verified(user)
    client.handler.enforce_csrf_checks = True
    page = client.get(reverse("console:dashboard", kwargs={"slug": slug}))
    assert page.status_code == 200
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert token is not None
    return client, token.group(1).decode()


def _row_counts() -> dict[str, int]:
    """Rows per model, but for the audit log (refusals are recorded) and the session store."""
    skip = {"audit", "sessions"}
    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if model._meta.app_label not in skip and not model._meta.proxy
    }


@pytest.fixture
def acme(db) -> Tenant:
    return make_tenant(slug="acme", name="Acme Payments")


# --- the URL lists themselves --------------------------------------------------------------------


@pytest.mark.django_db
def test_console_tenant_urls_are_all_tenant_pages():
    urls = tenant_urls(slug="acme")
    assert urls, "the dashboard at least"
    for url, pattern in urls:
        assert _roles(pattern), f"{url} is not a tenant_page"
        assert resolve(url).func is pattern.callback


# --- MFA cannot be skipped -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("has_device", [True, False], ids=["to-verification", "to-enrolment"])
def test_console_urls_send_a_session_without_second_factor_to_it(acme, has_device):
    user = _person(acme, Role.OWNER, device=has_device)
    client = Client()
    assert password_step(client, email=user.email).status_code == 302
    step = reverse("console:verify" if has_device else "console:enrol")
    checked = 0
    for _route, url, pattern in console_routes(slug=acme.slug):
        if pattern.name in SIGN_IN_STEPS:
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302, (method, url, response.status_code)
            assert response["Location"].startswith(f"{step}?next="), (method, url)
            checked += 1
    assert checked >= 2 * len(tenant_urls(slug=acme.slug))


@pytest.mark.django_db
def test_console_urls_send_anonymous_visitors_to_sign_in(acme):
    client = Client()
    for _route, url, pattern in console_routes(slug=acme.slug):
        if pattern.name in SIGN_IN_STEPS:
            continue
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("console:login") + "?next="), url


# --- the server refuses what the page hides ------------------------------------------------------


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_refuses_every_auditor_post_to_a_tenant_url(acme):
    auditor = _person(acme, Role.AUDITOR)
    client, token = _csrf_client(auditor, acme.slug)
    urls = tenant_urls(slug=acme.slug)
    assert any("POST" in _roles(p) for _, p in urls), "no page takes POST"
    before = _row_counts()
    for url, _pattern in urls:
        response = client.post(url, {"csrfmiddlewaretoken": token})
        assert response.status_code == 403, (url, response.status_code)
        # Refused by the role check (and audited), not by the CSRF middleware.
        assert AuditEvent.objects.filter(
            type="access.denied", tenant=acme, resource_id=url, actor_id=auditor.email
        ).exists(), url
    assert _row_counts() == before
    # The auditor still reads every page (one whose URL names an object besides the tenant may
    # answer 404: the sample ids name nothing).
    slug_only = {url for route, url, _ in console_routes(slug=acme.slug) if route.count("<") == 1}
    for url, _pattern in urls:
        response = client.get(url)
        if response.status_code == 302:
            # An action page with nothing to act on (an export before any checkpoint) sends
            # the reader back to a page of the same tenant.
            assert response["Location"].startswith(f"/console/t/{acme.slug}/"), url
            continue
        assert response.status_code in ({200} if url in slug_only else {200, 404}), url


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_answers_404_to_an_outsider_on_every_tenant_url(acme):
    beta = make_tenant(slug="beta", name="Beta Bank")
    outsider = _person(beta, Role.OWNER)
    client, token = _csrf_client(outsider, beta.slug)
    before = _row_counts()
    for url, _pattern in tenant_urls(slug=acme.slug):
        assert client.get(url).status_code == 404, url
        assert client.post(url, {"csrfmiddlewaretoken": token}).status_code == 404, url
    assert _row_counts() == before
    assert not AuditEvent.objects.filter(type="access.denied", tenant=acme).exists()


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_lets_the_roles_a_page_names_post_with_the_same_token(acme):
    owner = _person(acme, Role.OWNER)
    client, token = _csrf_client(owner, acme.slug)
    url = reverse("tenancy-sample", kwargs={"slug": acme.slug})
    response = client.post(url, {"csrfmiddlewaretoken": token})
    assert response.status_code == 200
    assert response.content == b"POST acme owner"
    # Without the token the CSRF middleware refuses first.
    assert client.post(url).status_code == 403


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_refuses_roles_a_page_does_not_name(acme):
    member = _person(acme, Role.MEMBER)
    client = _verified(member)
    url = reverse("tenancy-sample", kwargs={"slug": acme.slug})
    assert client.get(url).content == b"GET acme member"
    assert client.head(url).status_code == 200
    assert client.post(url).status_code == 403
    assert client.put(url).status_code == 405
    event = AuditEvent.objects.get(type="access.denied", tenant=acme)
    assert (event.actor_id, event.resource_id) == (member.email, url)


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_checks_roles_per_action_within_a_method(acme):
    url = reverse("tenancy-sample", kwargs={"slug": acme.slug})
    owner = _verified(_person(acme, Role.OWNER))
    custodian = _verified(_person(acme, Role.CUSTODIAN))
    assert owner.post(url, {"action": "approve"}).status_code == 403
    assert owner.post(url, {"action": "other"}).status_code == 200
    assert custodian.post(url, {"action": "approve"}).content == b"POST acme custodian"
    event = AuditEvent.objects.get(type="access.denied", tenant=acme)
    assert b'"action":"approve"' in bytes(event.leaf)


@pytest.mark.django_db
def test_console_hides_an_inactive_tenant_from_its_own_members(acme):
    owner = _person(acme, Role.OWNER)
    client = _verified(owner)
    url = reverse("console:dashboard", kwargs={"slug": acme.slug})
    assert client.get(url).status_code == 200
    Tenant.objects.filter(pk=acme.pk).update(is_active=False)
    assert client.get(url).status_code == 404


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        ({"GET": ALL_ROLES, "POST": ALL_ROLES}, "changes nothing"),
        ({"GET": {Role.OWNER}}, "allow it GET"),
        ({"GET": ALL_ROLES, "POST": {"root"}}, "unknown roles"),
        ({"GET": ALL_ROLES, "FETCH": {Role.OWNER}}, "unknown HTTP method"),
        ({"GET": "owner"}, "collection of roles"),
    ],
)
def test_console_refuses_to_build_a_page_that_breaks_the_role_rules(roles, problem):
    with pytest.raises(ImproperlyConfigured, match=problem):
        tenant_page(roles)


# --- navigation and the dashboard ----------------------------------------------------------------


@pytest.fixture
def extra_nav() -> Iterator[list[str]]:
    """URL names registered by the test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister_nav(name)


@pytest.mark.urls(TEST_URLS)
@pytest.mark.django_db
def test_console_navigation_shows_each_role_its_entries(acme, extra_nav):
    registry.register_nav("Owners only", "tenancy-sample", roles={Role.OWNER}, order=5)
    extra_nav.append("tenancy-sample")
    dashboard = reverse("console:dashboard", kwargs={"slug": acme.slug})
    sample = reverse("tenancy-sample", kwargs={"slug": acme.slug})

    owner_page = _verified(_person(acme, Role.OWNER)).get(dashboard).content.decode()
    assert f'<a href="{dashboard}" aria-current="page">Dashboard</a>' in owner_page
    assert f'<a href="{sample}">Owners only</a>' in owner_page
    assert owner_page.index("Dashboard</a>") < owner_page.index("Owners only</a>")

    auditor_page = _verified(_person(acme, Role.AUDITOR)).get(dashboard).content.decode()
    assert f'<a href="{dashboard}" aria-current="page">Dashboard</a>' in auditor_page
    assert "Owners only" not in auditor_page


@pytest.mark.django_db
def test_console_check_stops_start_up_on_a_broken_nav_entry(extra_nav):
    assert not _console_check_ids()
    registry.register_nav("Gone", "console:no-such-page")
    extra_nav.append("console:no-such-page")
    registry.register_nav("Not per tenant", "console:home")
    extra_nav.append("console:home")
    assert _console_check_ids() == ["console.E001"] * 2
    with pytest.raises(ImproperlyConfigured, match="registered already"):
        registry.register_nav("Again", "console:home")
    with pytest.raises(ImproperlyConfigured, match="bad roles"):
        registry.register_nav("Nobody", "console:nobody", roles=())


@pytest.mark.django_db
def test_console_dashboard_of_a_new_tenant_is_valid_and_says_what_is_missing(acme):
    owner = _person(acme, Role.OWNER)
    client = _verified(owner)
    response = client.get(reverse("console:dashboard", kwargs={"slug": acme.slug}))
    check_page(response)
    content = response.content.decode()
    assert "This tenant has no keys yet" in content
    assert "No compliance run has finished for this tenant yet." in content
    assert "Not verified yet" in content


@pytest.mark.django_db
def test_console_dashboard_reports_a_backend_that_is_gone(acme):
    KeyBinding.objects.create(
        tenant=acme,
        role=KeyRole.PRIMARY,
        backend_alias="retired-hsm",
        backend_kind="pkcs11",
        key_id="k1",
        fingerprint="f",
    )
    owner = _person(acme, Role.OWNER)
    response = _verified(owner).get(reverse("console:dashboard", kwargs={"slug": acme.slug}))
    content = response.content.decode()
    assert "retired-hsm" in content
    assert "Unavailable" in content
