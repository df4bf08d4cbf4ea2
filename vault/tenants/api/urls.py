from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from vault.tenants.api.views import MembershipViewSet, TenantView

router = SimpleRouter(use_regex_path=False)
router.register("members", MembershipViewSet, basename="member")

urlpatterns = [path("tenant/", TenantView.as_view(), name="tenant"), *router.urls]
