"""``manage.py serve``: migrate, set up the demo tenant, and serve with gunicorn."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Serve Ciphervault with gunicorn. Outside production it first migrates, creates the demo "
        "tenant on first run and prints a fresh API token; with the embedded default it also runs "
        "the scheduled jobs in-process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        parser.add_argument(
            "--workers", type=int, default=None, help="default: 1 on SQLite, else 2"
        )
        parser.add_argument("--no-demo", action="store_true", help="skip the demo tenant and token")

    def handle(
        self, *args: Any, host: str, port: int, workers: int | None, no_demo: bool, **options: Any
    ) -> None:
        if not 0 < port < 65536:
            raise CommandError(f"port {port} is out of range")
        call_command("migrate", interactive=False, verbosity=0)
        url = f"http://{host}:{port}"
        self.stdout.write(f"Ciphervault is starting on {url}")
        self.stdout.write(f"Console: {url}/")
        self.stdout.write(f"API docs: {url}/api/docs/")
        if not settings.PRODUCTION and not no_demo:
            self._print_demo_access()
        sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
        count = workers if workers is not None else (1 if sqlite else 2)
        from vault.core.server import serve

        serve(
            bind=f"{host}:{port}",
            workers=count,
            embedded_scheduler=settings.CELERY_TASK_ALWAYS_EAGER,
        )

    def _print_demo_access(self) -> None:
        from vault.core.bootstrap import demo_bootstrap

        access = demo_bootstrap()
        self.stdout.write(f"Tenant: {access.tenant.slug}")
        self.stdout.write(f"Login: {access.owner.email}")
        if access.password is not None:
            self.stdout.write(
                f"Password: {access.password}  (shown once; enrol a second factor at first sign-in)"
            )
        else:
            self.stdout.write(
                "Password: as printed on the first run (reset it with "
                f"`.venv/bin/python manage.py changepassword {access.owner.email}`)"
            )
        self.stdout.write(f"API token: {access.token.clear}")
        self.stdout.flush()
