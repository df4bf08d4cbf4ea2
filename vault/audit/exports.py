"""Export bundles of a log (``docs/audit-format.md``, "Export bundles")."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max, Min
from django.utils import timezone

from vault.audit import services
from vault.audit.models import AuditCheckpoint, AuditLeaf
from vault.crypto.auditbundle import build_bundle, format_time


class NothingToExport(Exception):
    """The log has no checkpoint yet."""


def export_bundle(log: str, *, start: datetime | None, end: datetime | None) -> bytes:
    """The bundle of ``log``'s integrated events with ``start <= time < end``.

    Every checkpoint of the log, consistency proofs between successive ones, and each event's
    inclusion proof against the last checkpoint.

    Raises:
        NothingToExport: no checkpoint exists yet.
    """
    checkpoints = list(AuditCheckpoint.objects.filter(log=log).order_by("size"))
    if not checkpoints:
        raise NothingToExport("the log has no checkpoint yet")
    last = checkpoints[-1]
    tree = services.log_tree(log, last.size)
    # Leaves whose events retention removed stay in the tree but are not exported.
    covered = AuditLeaf.objects.filter(log=log, index__lt=last.size, event__isnull=False)
    chosen = covered
    if start is not None:
        chosen = chosen.filter(event__time__gte=start)
    if end is not None:
        chosen = chosen.filter(event__time__lt=end)
    # Leaf order follows commit order, which may differ slightly from event times: export the
    # contiguous run of indices from the first chosen event to the last.
    bounds = chosen.aggregate(first=Min("index"), last=Max("index"))
    entries = covered.none()
    if bounds["first"] is not None:
        entries = (
            covered.filter(index__gte=bounds["first"], index__lte=bounds["last"])
            .select_related("event")
            .order_by("index")
        )
    leaves = [
        (entry.index, bytes(event.leaf), services.event_columns(event))
        for entry in entries.iterator(chunk_size=2000)
        if (event := entry.event) is not None
    ]
    signer = services.log_signer(log)
    return build_bundle(
        origin=signer.key.name,
        exported_at=format_time(timezone.now()),
        range_from=start.isoformat() if start else None,
        range_to=end.isoformat() if end else None,
        signing_keys=signer.all_keys,
        checkpoints=[c.note.encode("utf-8") for c in checkpoints],
        tree=tree,
        leaves=leaves,
    )
