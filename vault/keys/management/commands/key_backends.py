from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kms_plugins.errors import KeyBackendError
from vault.keys.registry import key_backends


class Command(BaseCommand):
    help = "List the configured key backends with their health."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-health", action="store_true", help="do not contact backends")

    def handle(self, *args: Any, no_health: bool, **options: Any) -> None:
        try:
            backends = key_backends()
        except KeyBackendError as exc:
            raise CommandError(str(exc)) from None
        if not list(backends):
            self.stdout.write("No key backends are configured (VAULT_KEY_BACKENDS).")
            return
        unhealthy = 0
        for alias in backends:
            try:
                backend = backends[alias]
            except KeyBackendError as exc:
                self.stdout.write(f"{alias}: misconfigured: {exc}")
                unhealthy += 1
                continue
            safe = "production-safe" if backend.production_safe else "NOT production-safe"
            line = f"{alias}: {backend.kind}, {safe}"
            if not no_health:
                health = backend.health()
                line += f", {'healthy' if health.ok else 'UNHEALTHY'} ({health.detail})"
                unhealthy += 0 if health.ok else 1
            self.stdout.write(line)
        if unhealthy:
            raise CommandError(f"{unhealthy} key backend(s) unhealthy or misconfigured")
