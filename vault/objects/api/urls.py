from __future__ import annotations

from rest_framework.routers import SimpleRouter

from vault.objects.api.views import ObjectViewSet

router = SimpleRouter(use_regex_path=False)
router.register("objects", ObjectViewSet, basename="object")

urlpatterns = router.urls
