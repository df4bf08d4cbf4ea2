"""The process's key backends, from ``VAULT_KEY_BACKENDS``: created lazily, once per process.

After a fork (gunicorn workers, Celery prefork) each backend re-opens its own connection on first
use; ``kms_plugins`` takes care of that.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from kms_plugins.base import KeyBackend
from kms_plugins.config import KeyBackends

_lock = threading.Lock()
_backends: KeyBackends | None = None


def key_backends() -> KeyBackends:
    """The configured backends (``ConfigurationError`` if the configuration is malformed)."""
    global _backends
    with _lock:
        if _backends is None:
            _backends = KeyBackends(settings.VAULT_KEY_BACKENDS)
        return _backends


def key_backend(alias: str) -> KeyBackend:
    """The backend configured under ``alias``."""
    return key_backends()[alias]


def reset() -> None:
    """Forget the backends (closing them); the next use builds them from the settings again."""
    global _backends
    with _lock:
        if _backends is not None:
            _backends.close_all()
        _backends = None


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would never be released in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "VAULT_KEY_BACKENDS":
        reset()


def connect_signals() -> None:
    setting_changed.connect(_on_setting_changed, dispatch_uid="vault.keys.registry")
