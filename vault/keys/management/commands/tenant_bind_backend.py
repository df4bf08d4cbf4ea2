from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms_plugins.errors import KeyBackendError
from vault.keys.registry import key_backends
from vault.keys.services import KeyServiceError, tenant_bind_backend
from vault.tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Bind a tenant to a configured key backend: create its key-encryption key there (and a "
        "recovery key in a second backend)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--backend", required=True, help="alias in VAULT_KEY_BACKENDS")
        parser.add_argument("--recovery-backend", default=None, help="alias for a recovery key")

    def handle(
        self, *args: Any, tenant: str, backend: str, recovery_backend: str | None, **options: Any
    ) -> None:
        target = Tenant.objects.filter(slug=tenant).first()
        if target is None:
            raise CommandError(f"no tenant {tenant!r}")
        configured = key_backends()
        for alias in filter(None, (backend, recovery_backend)):
            if alias not in configured:
                raise CommandError(f"no key backend {alias!r}; configured: {sorted(configured)}")
        try:
            bindings = tenant_bind_backend(
                tenant=target, backend_alias=backend, recovery_alias=recovery_backend
            )
        except (KeyServiceError, KeyBackendError) as exc:
            raise CommandError(str(exc)) from None
        for binding in bindings:
            self.stdout.write(
                f"{target.slug}: {binding.role} key {binding.key_id} in {binding.backend_alias} "
                f"({binding.backend_kind}), fingerprint {binding.fingerprint[:16]}..."
            )
