"""The tenant dashboard shows each role only the sections the matching API lets it read."""

from __future__ import annotations

import pytest
from django.urls import reverse

from compliance.api import views as compliance_api
from tests.console.test_console_tenancy import _person, _verified
from tests.console.test_templates import check_page
from tests.factories import make_tenant
from vault.api import permissions as audit_api
from vault.console import selectors
from vault.console.selectors import Dashboard, dashboard_for_tenant
from vault.lifecycle.api import views as lifecycle_api
from vault.objects.api import views as objects_api
from vault.tenants.models import Role, Tenant

SECTIONS = {
    Role.OWNER: {"keys", "objects", "approvals", "compliance", "audit"},
    Role.CUSTODIAN: {"keys", "approvals", "compliance"},
    Role.MEMBER: {"objects"},
    Role.AUDITOR: {"keys", "objects", "approvals", "compliance", "audit"},
}
ALL_SECTIONS = {"keys", "objects", "approvals", "compliance", "audit"}


@pytest.fixture
def acme(db) -> Tenant:
    return make_tenant(slug="acme", name="Acme Payments")


def test_console_dashboard_roles_match_the_apis():
    assert selectors.COMPLIANCE_READERS == compliance_api.READERS
    assert selectors.AUDIT_READERS == audit_api.READERS
    assert selectors.OBJECT_READERS == objects_api.READERS
    assert selectors.KEY_READERS == lifecycle_api.KEY_READERS


@pytest.mark.django_db
@pytest.mark.parametrize("role", list(SECTIONS))
def test_console_dashboard_shows_each_role_only_its_sections(acme, role):
    client = _verified(_person(acme, role))
    response = client.get(reverse("console:dashboard", kwargs={"slug": acme.slug}))
    check_page(response)
    content = response.content.decode()
    for section in SECTIONS[role]:
        assert f'<section id="{section}"' in content, section
    for section in ALL_SECTIONS - SECTIONS[role]:
        assert f'<section id="{section}"' not in content, section
        assert f'id="{section}-heading"' not in content, section
    assert 'id="nothing-here"' not in content


@pytest.mark.django_db
def test_console_dashboard_shows_a_member_no_compliance_or_audit_numbers(acme):
    client = _verified(_person(acme, Role.MEMBER))
    content = client.get(reverse("console:dashboard", kwargs={"slug": acme.slug})).content
    page = content.decode()
    for text in (
        "Compliance",
        "Requirements by finding",
        "compliance run",
        "Audit log",
        "checkpoint",
        "Not verified yet",
        "Intact",
        "Problems found",
        "Key backends",
        "Requests waiting for approvals",
    ):
        assert text not in page, text
    assert "Live objects" in page


@pytest.mark.django_db
def test_console_dashboard_computes_nothing_a_role_may_not_see(acme, monkeypatch):
    def refused(**kwargs):
        raise AssertionError("computed a section the role may not see")

    for name in (
        "compliance_summary",
        "audit_status",
        "backend_statuses",
        "pending_approvals_count",
    ):
        monkeypatch.setattr(selectors, name, refused)
    board = dashboard_for_tenant(tenant=acme, role=Role.MEMBER)
    assert board.objects is not None
    assert (board.compliance, board.audit, board.pending_approvals) == (None, None, None)
    assert board.backends == []

    monkeypatch.undo()
    monkeypatch.setattr(selectors, "object_totals", refused)
    monkeypatch.setattr(selectors, "audit_status", refused)
    board = dashboard_for_tenant(tenant=acme, role=Role.CUSTODIAN)
    assert board.objects is None
    assert board.audit is None
    assert board.pending_approvals == 0


@pytest.mark.django_db
def test_console_dashboard_with_nothing_to_show_says_so_and_links(acme, monkeypatch):
    def nothing(**kwargs) -> Dashboard:
        return Dashboard(
            show_keys=False,
            show_objects=False,
            show_compliance=False,
            show_audit=False,
            backends=[],
            objects=None,
            compliance=None,
            audit=None,
            pending_approvals=None,
            compliance_installed=True,
        )

    monkeypatch.setattr("vault.console.views.dashboard_for_tenant", nothing)
    client = _verified(_person(acme, Role.MEMBER))
    response = client.get(reverse("console:dashboard", kwargs={"slug": acme.slug}))
    check_page(response)
    page = response.content.decode()
    assert "The dashboard has no figures for your role." in page
    assert 'id="dashboard-links"' in page
    assert "<section" not in page
