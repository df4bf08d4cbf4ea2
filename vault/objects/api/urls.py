from __future__ import annotations

from rest_framework.routers import SimpleRouter

from vault.objects.api.views import ObjectViewSet, UploadViewSet

router = SimpleRouter(use_regex_path=False)
router.register("objects", ObjectViewSet, basename="object")
router.register("uploads", UploadViewSet, basename="upload")

urlpatterns = router.urls
