from __future__ import annotations

from rest_framework.routers import SimpleRouter

from vault.lifecycle.api.views import CampaignViewSet

router = SimpleRouter(use_regex_path=False)
router.register("keys/campaigns", CampaignViewSet, basename="key-campaign")

urlpatterns = router.urls
