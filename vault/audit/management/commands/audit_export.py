"""Write an export bundle of a tenant's (or the platform's) audit log to a file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from vault.audit.context import acting_as
from vault.audit.exports import NothingToExport, export_bundle
from vault.audit.models import PLATFORM_LOG
from vault.audit.services import audit_archive_record, audit_record, log_of
from vault.crypto.checkpoint import Checkpoint, SignedNote
from vault.tenants.models import Tenant


def _time(value: str | None, name: str) -> Any:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None or parsed.tzinfo is None:
        raise CommandError(f"--{name} must be an ISO 8601 time with a zone")
    return parsed


class Command(BaseCommand):
    help = "Export an audit log (leaves, checkpoints, proofs) for offline verification."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--tenant", metavar="SLUG")
        target.add_argument("--platform", action="store_true")
        parser.add_argument("--output", required=True, metavar="FILE")
        parser.add_argument("--from", dest="start", metavar="TIME")
        parser.add_argument("--to", dest="end", metavar="TIME")
        parser.add_argument(
            "--archive",
            action="store_true",
            help="this file is kept as the log's archive: retention may then remove the events "
            "it holds once they are older than VAULT_AUDIT_RETENTION_DAYS",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant {options['tenant']!r}")
        log = log_of(tenant) if tenant else PLATFORM_LOG
        start, end = _time(options["start"], "from"), _time(options["end"], "to")
        with acting_as("manage.py audit_export"):
            audit_record(
                "audit.export",
                tenant=tenant,
                details={"from": options["start"], "to": options["end"]},
            )
            try:
                bundle = export_bundle(log, start=start, end=end)
            except NothingToExport as exc:
                raise CommandError(f"{log}: {exc}; run manage.py audit_checkpoint") from exc
        path = Path(options["output"])
        temporary = path.with_name(f".{path.name}.partial")
        with open(temporary, "wb") as handle:
            handle.write(bundle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        self.stdout.write(f"wrote {path} ({len(bundle)} bytes)")
        if options["archive"]:
            if start is not None or end is not None:
                raise CommandError("an archive holds the whole log: leave out --from and --to")
            # The archive holds every event up to the bundle's last checkpoint.
            last_note = json.loads(bundle)["checkpoints"][-1].encode("utf-8")
            size = Checkpoint.from_text(SignedNote.parse(last_note).text).size
            with acting_as("manage.py audit_export"):
                audit_archive_record(log, size=size, sha256=hashlib.sha256(bundle).hexdigest())
            self.stdout.write(f"recorded as the archive of {log} up to {size} leaves")
