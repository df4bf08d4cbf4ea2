from __future__ import annotations

from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    label = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        # The compliance pages of the console: the console renders the link without importing
        # this app (compliance reads vault, never the reverse).
        from compliance.console import READERS
        from vault.console.registry import register_nav

        register_nav("Compliance", "compliance:runs", roles=READERS, order=60)
