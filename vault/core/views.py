"""Liveness and readiness probes (unauthenticated, and revealing no configuration)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from vault.api.errors import error_body

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("readiness: database check failed", exc_info=True)
        return False


def _check_redis() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        logger.warning("readiness: redis check failed", exc_info=True)
        return False


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """The process can serve: the database answers, and Redis too when it is configured."""
    checks = {"database": "ok" if _check_database() else "failed"}
    if settings.REDIS_URL:
        checks["redis"] = "ok" if _check_redis() else "failed"
    if all(value == "ok" for value in checks.values()):
        return JsonResponse({"status": "ready", "checks": checks})
    body = error_body(
        503, "not_ready", "A component the service depends on is unavailable.", checks
    )
    return JsonResponse(body, status=503)
