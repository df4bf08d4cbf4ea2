"""The real URLconf plus one tenant page that takes POSTs, for the tests of ``tenant_page``.

Until the console has pages that change something, this page keeps the generic tests honest:
the owner's POST to it succeeds with the same CSRF handling with which the auditor's is refused.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import include, path

from vault.console.tenancy import ALL_ROLES, TenantRequest, require_role, tenant_page
from vault.tenants.models import Role


@tenant_page({"GET": ALL_ROLES, "POST": {Role.OWNER, Role.CUSTODIAN}})
def sample(request: TenantRequest, slug: str) -> HttpResponse:
    if request.method == "POST" and request.POST.get("action") == "approve":
        require_role(request, {Role.CUSTODIAN}, action="approve")
    return HttpResponse(f"{request.method} {request.tenant.slug} {request.role}")


urlpatterns = [
    path("console/t/<slug:slug>/sample/", sample, name="tenancy-sample"),
    path("", include("vault.urls")),
]
