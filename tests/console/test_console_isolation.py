"""Console pages of another tenant, for every role of the caller's: the same 404 as no tenant.

Extends tests/console/test_console_tenancy.py (one outsider, an owner) to each role a member of
alpha can hold, and compares each answer with the answer for a slug that names no tenant: same
status, same body, nothing of bravo's in it, and nothing of bravo's changed or recorded.
"""

from __future__ import annotations

import pytest

from tests.console.test_console_tenancy import _csrf_client, _person, _row_counts, tenant_urls
from tests.factories import make_tenant
from vault.audit.models import AuditEvent
from vault.tenants.models import Role

MARKER = "zqxb"


@pytest.mark.urls("tests.console.tenancy_urls")
@pytest.mark.django_db
@pytest.mark.parametrize("role", list(Role.values))
def test_console_answers_another_tenants_pages_as_if_it_did_not_exist(role: str) -> None:
    alpha = make_tenant(slug="alpha", name="Alpha")
    bravo = make_tenant(slug=f"bravo-{MARKER}", name=f"Bravo {MARKER}")
    _person(bravo, Role.OWNER)
    client, token = _csrf_client(_person(alpha, role), alpha.slug)
    before = _row_counts()
    events = AuditEvent.objects.filter(tenant=bravo).count()
    foreign = tenant_urls(slug=bravo.slug)
    nowhere = tenant_urls(slug="no-such-tenant")
    assert len(foreign) == len(nowhere) > 1
    checked = 0
    for (url, _), (other, _) in zip(foreign, nowhere, strict=True):
        for method in ("get", "post"):
            data = {"csrfmiddlewaretoken": token} if method == "post" else None
            answer = getattr(client, method)(url, data)
            reference = getattr(client, method)(other, data)
            assert answer.status_code == 404, (method, url, answer.status_code)
            assert answer.content == reference.content, (method, url)
            assert MARKER.encode() not in answer.content.lower()
            checked += 1
    assert _row_counts() == before
    assert AuditEvent.objects.filter(tenant=bravo).count() == events
    assert checked == 2 * len(foreign)
