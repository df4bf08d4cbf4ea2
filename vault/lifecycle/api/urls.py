from __future__ import annotations

from rest_framework.routers import SimpleRouter

from vault.lifecycle.api.views import ApprovalRequestViewSet, CampaignViewSet, CertificateViewSet

router = SimpleRouter(use_regex_path=False)
router.register("keys/campaigns", CampaignViewSet, basename="key-campaign")
router.register("keys/certificates", CertificateViewSet, basename="key-certificate")
router.register("approvals", ApprovalRequestViewSet, basename="approval")

urlpatterns = router.urls
