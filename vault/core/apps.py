from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "vault.core"
    label = "core"
    verbose_name = "Ciphervault core"

    def ready(self) -> None:
        import vault.celery  # noqa: F401  (binds shared tasks to the app)
        from vault.core import checks  # noqa: F401  (registers the system checks)
