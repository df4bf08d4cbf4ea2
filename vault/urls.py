"""The root URL configuration (composition root): every app's URLs are wired here."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from vault.core import views as core_views

# The Django admin, for platform operators, demands a verified second factor too.
admin.site.__class__ = OTPAdminSite

api_v1 = [
    path("", include("vault.tenants.api.urls")),
    path("", include("vault.tokens.api.urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
    path("", include("vault.console.urls")),
]

handler400 = "vault.api.errors.handler400"
handler403 = "vault.api.errors.handler403"
handler404 = "vault.api.errors.handler404"
handler500 = "vault.api.errors.handler500"
