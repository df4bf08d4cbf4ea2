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
        from vault.console.views_keys import KEY_READERS

        # The console's own sections. Later pages register themselves here (keys, objects,
        # audit, members) or in their own app's ready() (compliance), with orders in between:
        # 0 dashboard, 20 keys, 30 approvals, 40 objects, 50 audit, 60 compliance, 80 members.
        register_nav("Dashboard", "console:dashboard", roles=ALL_ROLES, order=0)
        register_nav("Keys", "console:keys", roles=KEY_READERS, order=20)
        register_nav("Approvals", "console:approvals", roles=KEY_READERS, order=30)
        register_nav("Objects", "console:objects", roles={"owner", "member", "auditor"}, order=40)
        register_nav("Audit log", "console:audit", roles={"owner", "auditor"}, order=50)
        register_nav("Members", "console:members", roles={"owner", "auditor"}, order=80)
        register_nav("API tokens", "console:tokens", roles=ALL_ROLES, order=85)
