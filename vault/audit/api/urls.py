from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from vault.audit.api import views

router = SimpleRouter(use_regex_path=False)
router.register("audit/events", views.AuditEventViewSet, basename="audit-event")

urlpatterns = [
    path("audit/checkpoint/", views.AuditCheckpointView.as_view(), name="audit-checkpoint"),
    path("audit/keys/", views.AuditKeysView.as_view(), name="audit-keys"),
    path(
        "audit/proofs/consistency/",
        views.ConsistencyProofView.as_view(),
        name="audit-consistency-proof",
    ),
    path("audit/export/", views.AuditExportView.as_view(), name="audit-export"),
    *router.urls,
]
