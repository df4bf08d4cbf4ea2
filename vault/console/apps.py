from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "vault.console"
    label = "console"
    verbose_name = "Console"

    def ready(self) -> None:
        from vault.console import checks  # noqa: F401  (registers the system checks)
        from vault.console.registry import register_nav
        from vault.console.tenancy import ALL_ROLES

        # The console's own sections. Later pages register themselves here (keys, objects,
        # audit, members) or in their own app's ready() (compliance), with orders in between:
        # 0 dashboard, 20 keys, 30 approvals, 40 objects, 50 audit, 60 compliance, 80 members.
        register_nav("Dashboard", "console:dashboard", roles=ALL_ROLES, order=0)
