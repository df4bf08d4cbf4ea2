from __future__ import annotations

from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "vault.keys"
    label = "keys"
    verbose_name = "Keys"

    def ready(self) -> None:
        from vault.keys import (
            checks,  # noqa: F401  (registers the system checks)
            registry,
        )

        registry.connect_signals()
