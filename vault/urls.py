"""The root URL configuration (composition root): every app's URLs are wired here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import include, path, reverse
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from vault.core import views as core_views


class VaultAdminSite(OTPAdminSite):
    """The Django admin, for platform operators: a verified second factor, and no login of its own.

    Its own login form would sidestep the console's lockout (PCI-DSS 8.3.4), so sign-in always
    goes through the console's two steps.
    """

    def login(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        target = request.GET.get("next") or reverse("admin:index")
        return redirect_to_login(target, login_url=reverse("console:login"))


admin.site.__class__ = VaultAdminSite

api_v1 = [
    path("", include("vault.tenants.api.urls")),
    path("", include("vault.tokens.api.urls")),
    path("", include("vault.objects.api.urls")),
    path("", include("vault.audit.api.urls")),
    path("", include("vault.lifecycle.api.urls")),
    path("", include("compliance.api.urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
    # The compliance app contributes its console pages (console/t/<slug>/compliance/...).
    path("", include("compliance.console_urls")),
    path("", include("vault.console.urls")),
]

handler400 = "vault.api.errors.handler400"
handler403 = "vault.api.errors.handler403"
handler404 = "vault.api.errors.handler404"
handler500 = "vault.api.errors.handler500"
