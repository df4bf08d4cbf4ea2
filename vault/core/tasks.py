"""Housekeeping tasks. Task names are explicit and stable; tasks are idempotent."""

from __future__ import annotations

from importlib import import_module

from celery import shared_task
from django.conf import settings


@shared_task(name="vault.core.ping")
def ping(value: str) -> dict[str, str]:
    """Echo a value back; used by health checks and the worker integration test."""
    return {"pong": value}


@shared_task(name="vault.core.clear_expired_sessions")
def clear_expired_sessions() -> None:
    """Delete expired console sessions (they are already refused; this frees the rows)."""
    engine = import_module(settings.SESSION_ENGINE)
    engine.SessionStore.clear_expired()
