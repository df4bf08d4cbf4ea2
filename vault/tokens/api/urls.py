from __future__ import annotations

from rest_framework.routers import SimpleRouter

from vault.tokens.api.views import ApiTokenViewSet

router = SimpleRouter(use_regex_path=False)
router.register("tokens", ApiTokenViewSet, basename="token")

urlpatterns = router.urls
