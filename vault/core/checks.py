"""System checks with stable ids: misconfiguration fails at start-up, not at the first request."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=False)
def check_session_and_lockout(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    problems: list[Error | Warning] = []
    # PCI-DSS 8.2.8: idle sessions end after at most 15 minutes.
    if settings.SESSION_COOKIE_AGE > 15 * 60 or not settings.SESSION_SAVE_EVERY_REQUEST:
        problems.append(
            Error(
                "Console sessions must end after at most 15 idle minutes.",
                hint="Keep SESSION_COOKIE_AGE <= 900 and SESSION_SAVE_EVERY_REQUEST on.",
                id="core.E001",
            )
        )
    # PCI-DSS 8.3.4
    if settings.VAULT_LOCKOUT_THRESHOLD > 10 or settings.VAULT_LOCKOUT_MINUTES < 30:
        problems.append(
            Error(
                "Lockout must trigger after at most 10 failures and last at least 30 minutes.",
                id="core.E002",
            )
        )
    if settings.PRODUCTION and not settings.REDIS_URL:
        problems.append(
            Warning(
                "VAULT_ENV=production without REDIS_URL: tasks run in-process and failed-login "
                "throttling is per process.",
                hint="Set REDIS_URL to a Redis server for Celery and the shared cache.",
                id="core.W001",
            )
        )
    return problems
