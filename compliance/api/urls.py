from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from compliance.api import views

router = SimpleRouter(use_regex_path=False)
router.register("compliance/runs", views.RunViewSet, basename="compliance-run")
router.register("compliance/waivers", views.WaiverViewSet, basename="compliance-waiver")
router.register(
    "compliance/attestations", views.AttestationViewSet, basename="compliance-attestation"
)

urlpatterns = [
    path("compliance/ca/", views.ReportCaView.as_view(), name="compliance-ca"),
    *router.urls,
]
