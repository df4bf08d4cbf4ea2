"""``manage.py objects_verify``: read every stored object version back, as after a restore.

Gateway versions are read exactly as a download reads them: the data key is unwrapped through
the tenant's key backend and every segment of the body is decrypted and authenticated to the
end, so a missing or truncated body, a header whose key is gone, or a body that does not belong
to its header all fail. Client-side envelopes cannot be opened by the vault; their header is
parsed and their stored body read to the end and compared with the recorded length. Each read is
an ``object.read`` event (and ``key.unwrap`` for gateway versions) in the tenant's audit log,
like any other read. Nothing is printed of the content. Exits non-zero when a version fails.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vault.audit.context import acting_as
from vault.crypto import envelope
from vault.objects.models import ObjectMode, ObjectVersion
from vault.objects.services import version_read
from vault.tenants.models import Tenant


def _failure_code(exc: BaseException) -> str:
    """A stable name for what went wrong, never the content: the error's code, else its class."""
    return str(getattr(exc, "code", "") or type(exc).__name__)


def _check(version: ObjectVersion) -> None:
    """Read one version to its end; raise if any part of it cannot be read back."""
    download = version_read(version=version)
    read = 0
    for chunk in download.chunks:
        read += len(chunk)
    if read != download.length:
        raise OSError(f"read {read} bytes of {download.length}")
    if version.object.mode == ObjectMode.CLIENT:
        header = bytes(version.blob.header if version.blob is not None else version.header)
        envelope.parse_header(header)


class Command(BaseCommand):
    help = (
        "Read back every version of every live object: gateway versions decrypted through the "
        "tenant's key backend, client-side envelopes to their recorded length. Run it on a "
        "restored instance (docs/backup.md). Exits 1 when any version fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tenant", metavar="SLUG", action="append", help="only this tenant (repeatable)"
        )

    def handle(self, *args: Any, tenant: list[str] | None, **options: Any) -> None:
        versions = ObjectVersion.objects.filter(object__deleted_at__isnull=True)
        if tenant:
            missing = sorted(set(tenant) - set(Tenant.objects.values_list("slug", flat=True)))
            if missing:
                raise CommandError(f"no tenant {', '.join(map(repr, missing))}")
            versions = versions.filter(object__tenant__slug__in=tenant)
        versions = versions.select_related("object__tenant", "blob").order_by(
            "object__tenant__slug", "object_id", "number"
        )
        counts: Counter[str] = Counter()
        objects: set[int] = set()
        tenants: set[str] = set()
        with acting_as("manage.py objects_verify"):
            for version in versions.iterator(chunk_size=200):
                obj = version.object
                objects.add(obj.pk)
                tenants.add(obj.tenant.slug)
                if obj.shredded_at is not None:
                    counts["shredded"] += 1  # its keys were destroyed on purpose
                    continue
                try:
                    _check(version)
                except Exception as exc:
                    counts["failed"] += 1
                    self.stdout.write(
                        f"FAILED {obj.tenant.slug} object {obj.pk} version {version.number} "
                        f"({obj.mode}): {_failure_code(exc)}"
                    )
                    continue
                counts[obj.mode] += 1
        self.stdout.write(
            f"{sum(counts.values())} version(s) of {len(objects)} object(s) in {len(tenants)} "
            f"tenant(s): {counts[ObjectMode.GATEWAY]} gateway read back, "
            f"{counts[ObjectMode.CLIENT]} client-side complete, {counts['shredded']} shredded, "
            f"{counts['failed']} failed"
        )
        if counts["failed"]:
            raise CommandError(f"{counts['failed']} version(s) could not be read back")
