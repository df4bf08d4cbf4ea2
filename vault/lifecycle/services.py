"""Rotating a tenant's keys and rewrapping every data key still under an older version.

A rotation adds a version to the key in its backend (which becomes the one that wraps) and
starts a campaign. The campaign rewraps, in batches, every stored header of the tenant whose
stanza for that key is older: gateway versions, deduplicated blobs and the deduplication key.
Client-side versions are the user's (``cvault key rotate``) and are left alone. Only the one
stanza changes; the body and every other stanza stay as they are, and the header is replaced
with a compare-and-swap, so a header is rewrapped at most once and a crash loses nothing.

Campaigns are driven by their own rows, not by the task queue: a campaign is split into slices
(``VAULT_CAMPAIGN_SLICES``), and ``campaigns_run`` (the scheduled job
``vault.lifecycle.run_campaigns``, also under the embedded scheduler) takes the lease of a
slice, does batches until it is done or its time is up, renewing the lease as it goes, then the
next slice. Several workers share a campaign slice by slice. A worker that dies leaves a lease
that expires after ``VAULT_CAMPAIGN_LEASE_SECONDS``; the next run continues from that slice's
cursor.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from kms_plugins.base import KeyBackend
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import Capability, KeyState
from vault.audit.services import audit_record
from vault.crypto import envelope
from vault.crypto.errors import EnvelopeError
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.models import PHASES, Campaign, CampaignReason, CampaignSlice, CampaignState
from vault.objects.models import Blob, DedupKey, HeaderHistory, ObjectVersion
from vault.objects.services import blob_context, version_context
from vault.tenants.models import Tenant
from vault.tenants.services import tenant_cryptoperiod_days

logger = logging.getLogger(__name__)
ROTATABLE_ROLES = (KeyRole.PRIMARY, KeyRole.RECOVERY)


class LifecycleError(Exception):
    """Base of the key lifecycle's errors; ``code`` and ``status`` become the API answer."""

    code = "lifecycle_error"
    status = 400


class NotBound(LifecycleError):
    code, status = "key_not_bound", 404


class CannotRotate(LifecycleError):
    code, status = "key_cannot_rotate", 409


class KeyIsSuspended(LifecycleError):
    code, status = "key_suspended", 409


class TenantShredded(LifecycleError):
    code, status = "tenant_shredded", 410


# --- what a campaign rewraps -------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    model: Any  # a model class with a ``header`` field
    queryset: Callable[[Tenant], Any]
    context: Callable[[Any], dict[str, str]]
    keeps_history: bool = False


def _version_context(version: ObjectVersion) -> dict[str, str]:
    return version_context(version.object, version.number)


SOURCES: dict[str, _Source] = {
    "versions": _Source(
        ObjectVersion,
        lambda tenant: (
            ObjectVersion.objects.filter(
                object__tenant=tenant, object__mode="gateway", blob__isnull=True
            )
            .exclude(header=b"")
            .select_related("object__tenant")
        ),
        _version_context,
        keeps_history=True,
    ),
    "blobs": _Source(
        Blob,
        lambda tenant: Blob.objects.filter(tenant=tenant).select_related("tenant"),
        lambda blob: blob_context(blob.tenant, blob.digest),
    ),
    "dedup_keys": _Source(
        DedupKey,
        lambda tenant: DedupKey.objects.filter(tenant=tenant).select_related("tenant"),
        lambda record: {"tenant": record.tenant.slug, "purpose": "dedup"},
    ),
}
assert tuple(SOURCES) == PHASES  # noqa: S101  (the campaign's phases are these sources, in order)


def _stored_headers(tenant: Tenant) -> int:
    return sum(source.queryset(tenant).count() for source in SOURCES.values())


# --- rotation ----------------------------------------------------------------------------------


def key_rotate(
    *,
    tenant: Tenant,
    role: str = KeyRole.PRIMARY,
    reason: str = CampaignReason.MANUAL,
) -> Campaign:
    """Rotate one of the tenant's wrapping keys and start the campaign that rewraps to it.

    The key binding's row is locked for the rotation, so two rotations of one key (in any
    processes) happen one after the other. A running campaign of the same key is superseded:
    the new one rewraps everything older than the new version.

    Raises:
        NotBound: the tenant has no such key.
        CannotRotate: its backend cannot rotate keys.
        AuditUnavailable, KeyBackendError: nothing changed in the vault.
    """
    if role not in ROTATABLE_ROLES:
        raise CannotRotate(f"only the {' and '.join(ROTATABLE_ROLES)} keys are rotated here")
    tenant.refresh_from_db(fields=["shredded_at"])
    if tenant.shredded_at is not None:
        raise TenantShredded("the tenant's keys were destroyed")
    binding = KeyBinding.objects.filter(tenant=tenant, role=role).first()
    if binding is None:
        raise NotBound(f"tenant {tenant.slug} has no {role} key")
    if binding.suspended_at is not None:
        raise KeyIsSuspended(f"the {role} key is suspended: {binding.suspended_reason}")
    backend = key_backend(binding.backend_alias)
    if Capability.ROTATE not in backend.capabilities:
        raise CannotRotate(f"the {binding.backend_kind} backend cannot rotate keys")
    # The intent is recorded (and committed) before the backend is asked: a rotation that
    # happened in the backend can never lack its event.
    audit_record(
        "key.rotate",
        tenant=tenant,
        resource_type="key",
        resource_id=binding.key_id,
        details={"role": role, "reason": reason},
    )
    with transaction.atomic():
        binding = KeyBinding.objects.select_for_update().get(pk=binding.pk)
        ref = backend.rotate(binding.key_id)
        now = timezone.now()
        made = backend.describe(binding.key_id).version(ref.version)
        # Pinned now (PCI-DSS 3.7.7): the health check compares the backend with this.
        pins = {**binding.pins, str(ref.version): made.fingerprint if made else ""}
        KeyBinding.objects.filter(pk=binding.pk).update(current_version=ref.version, pins=pins)
        Campaign.objects.filter(binding=binding, state=CampaignState.RUNNING).update(
            state=CampaignState.SUPERSEDED, finished_at=now
        )
        campaign = Campaign.objects.create(
            tenant=tenant,
            binding=binding,
            target_version=ref.version,
            reason=reason,
            priority=0 if reason == CampaignReason.COMPROMISED else 10,
            total=_stored_headers(tenant),
            slices=settings.VAULT_CAMPAIGN_SLICES,
            bounds=_bounds(tenant),
        )
        CampaignSlice.objects.bulk_create(
            CampaignSlice(campaign=campaign, number=n) for n in range(campaign.slices)
        )
    logger.info("tenant %s: %s key rotated to version %d", tenant.slug, role, ref.version)
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        transaction.on_commit(_prompt_campaigns)
    return campaign


def _prompt_campaigns() -> None:
    """Ask a worker to start on the new campaign now rather than at the next scheduled run.

    Only a prompt: the rotation and its campaign are committed rows, and Celery beat's
    ``run_campaigns`` drives every running campaign. So a task queue that is down must not
    fail (or make a client retry) a rotation that happened; it only delays the rewrap.
    """
    from vault.core.outages import outage_of
    from vault.lifecycle.tasks import run_campaigns

    try:
        run_campaigns.delay()
    except Exception as exc:
        if outage_of(exc) is None:
            raise
        logger.warning(
            "the task queue is unavailable: the campaign starts at the next scheduled run",
            exc_info=True,
        )


def key_mark_compromised(*, tenant: Tenant, role: str = KeyRole.PRIMARY) -> Campaign:
    """A wrapping key's current version is compromised: it stops wrapping at once, a new
    version replaces it, and its campaign runs before every other.

    Raises:
        As ``key_rotate``.
    """
    binding = KeyBinding.objects.filter(tenant=tenant, role=role).first()
    if binding is None:
        raise NotBound(f"tenant {tenant.slug} has no {role} key")
    backend = key_backend(binding.backend_alias)
    primary = backend.describe(binding.key_id).primary
    if primary is not None and Capability.STATES in backend.capabilities:
        with transaction.atomic():
            KeyBinding.objects.select_for_update().filter(pk=binding.pk).first()
            audit_record(
                "key.state.change",
                tenant=tenant,
                resource_type="key",
                resource_id=binding.key_id,
                details={"version": primary.ref.version, "state": KeyState.COMPROMISED.value},
            )
            backend.set_state(primary.ref, KeyState.COMPROMISED)
    return key_rotate(tenant=tenant, role=role, reason=CampaignReason.COMPROMISED)


def wraps_since(tenant: Tenant, moment: datetime) -> int:
    """Data keys the tenant's keys wrapped since ``moment``, counted from the audit log (each
    ``key.wrap`` event is one data key wrapped by each of the tenant's wrapping keys)."""
    from vault.audit.models import AuditEvent
    from vault.audit.services import log_of

    return AuditEvent.objects.filter(log=log_of(tenant), type="key.wrap", time__gte=moment).count()


def keys_rotate_due(*, now: datetime | None = None) -> int:
    """Rotate every wrapping key whose current version is older than its cryptoperiod
    (``VAULT_KEK_CRYPTOPERIOD_DAYS``; NIST SP 800-57 allows a key-encryption key at most two
    years of originator use), or has wrapped ``VAULT_KEK_MAX_WRAPS`` data keys. Returns how many
    keys were rotated."""
    moment = now or timezone.now()
    rotated = 0
    for binding in KeyBinding.objects.filter(
        tenant__isnull=False,
        tenant__is_active=True,
        tenant__shredded_at__isnull=True,
        suspended_at__isnull=True,
        role__in=ROTATABLE_ROLES,
    ).select_related("tenant"):
        backend = key_backend(binding.backend_alias)
        if Capability.ROTATE not in backend.capabilities:
            continue
        try:
            primary = backend.describe(binding.key_id).primary
        except Exception:
            logger.exception("cannot describe %s; its cryptoperiod is checked next time", binding)
            continue
        born = (primary.activated or primary.created) if primary else None
        born = born or binding.created_at
        assert binding.tenant is not None  # noqa: S101  (filtered above)
        limit = timedelta(days=tenant_cryptoperiod_days(binding.tenant))
        if moment - born >= limit:
            reason = CampaignReason.CRYPTOPERIOD
        elif wraps_since(binding.tenant, born) >= settings.VAULT_KEK_MAX_WRAPS:
            reason = CampaignReason.USAGE
        else:
            continue
        try:
            key_rotate(tenant=binding.tenant, role=binding.role, reason=reason)
            rotated += 1
        except Exception:
            logger.exception("%s is past its cryptoperiod but could not be rotated", binding)
    return rotated


# --- campaigns ---------------------------------------------------------------------------------


def _rewrap_header(
    raw: bytes, *, binding: KeyBinding, backend: KeyBackend, context: dict[str, str], target: int
) -> bytes | None:
    """The header with its stanza of ``binding``'s key rewrapped to the key's primary version,
    or None when that stanza is already at ``target`` or later (or absent)."""
    header = envelope.parse_header(raw)
    position = next(
        (
            i
            for i, stanza in enumerate(header.stanzas)
            if stanza.backend == backend.kind and stanza.key.key_id == binding.key_id
        ),
        None,
    )
    if position is None or header.stanzas[position].key.version >= target:
        return None
    dek = envelope.unwrap_dek(
        header,
        lambda wrapped: backend.unwrap(wrapped, context),
        backend=backend.kind,
        key_id=binding.key_id,
    )
    stanzas = list(header.stanzas)
    stanzas[position] = backend.wrap(binding.key_id, dek, context)
    if stanzas[position].key.version < target:
        raise CannotRotate("the backend wrapped under an older version than the rotation's")
    # ``unwrap_dek`` checked the key against the header's commitment already.
    return envelope.replace_stanzas(header, stanzas)


def _lease(slice_id: int, worker: str) -> CampaignSlice | None:
    """Take or renew a slice's lease; None if it is done, its campaign is not running, or
    another worker holds it."""
    now = timezone.now()
    with transaction.atomic():
        part = (
            CampaignSlice.objects.select_for_update(of=("self",))
            .select_related("campaign__binding", "campaign__tenant")
            .filter(pk=slice_id, done=False, campaign__state=CampaignState.RUNNING)
            .first()
        )
        if part is None:
            return None
        if part.campaign.binding.suspended_at is not None:
            return None  # paused: a suspended key is used for nothing
        held = part.lease_until is not None and part.lease_until > now
        if held and part.lease_owner != worker:
            return None
        part.lease_owner = worker
        part.lease_until = now + timedelta(seconds=settings.VAULT_CAMPAIGN_LEASE_SECONDS)
        part.save(update_fields=["lease_owner", "lease_until"])
        return part


def _bounds(tenant: Tenant) -> dict[str, list[int]]:
    """For each phase, the lowest and highest primary key of the headers there are now.

    Headers made later were wrapped under the new version already and need no rewrap.
    """
    found = {}
    for phase, source in SOURCES.items():
        span = source.queryset(tenant).aggregate(lo=models.Min("pk"), hi=models.Max("pk"))
        found[phase] = [span["lo"] or 0, span["hi"] or 0]
    return found


def _in_slice(queryset: Any, part: CampaignSlice) -> Any:
    """The slice's share of a phase: a contiguous range of primary keys (so it reads by index)."""
    lo, hi = part.campaign.bounds.get(part.phase, [0, 0])
    if hi == 0:
        return queryset.none()
    count = part.campaign.slices
    width = (hi - lo) // count + 1
    start = lo + part.number * width
    return queryset.filter(pk__gte=start, pk__lt=start + width, pk__lte=hi)


def _rewrap_items(
    source: _Source, batch: list[Any], campaign: Campaign, backend: KeyBackend
) -> tuple[int, int, int]:
    """Rewrap a batch of stored headers: (rewrapped, already current, failed).

    The backend's work first, then one transaction for the whole batch: each header still
    changes atomically, and a crash before the commit leaves the batch to be done again. A
    header that cannot be rewrapped for good (malformed, or its version destroyed) is counted as
    failed and skipped, so one bad header does not hold the others back; a backend that does not
    answer stops the batch, which is then tried again.
    """
    changes = []
    current = failed = 0
    for item in batch:
        old = bytes(item.header)
        try:
            new = _rewrap_header(
                old,
                binding=campaign.binding,
                backend=backend,
                context=source.context(item),
                target=campaign.target_version,
            )
        except KeyBackendError as exc:
            if exc.transient:
                raise
            failed += 1
            logger.error(
                "campaign %d: %s %d cannot be rewrapped (%s)",
                campaign.pk,
                source.model.__name__,
                item.pk,
                exc.code,
            )
            continue
        except (EnvelopeError, LifecycleError) as exc:
            failed += 1
            logger.error(
                "campaign %d: %s %d cannot be rewrapped (%s)",
                campaign.pk,
                source.model.__name__,
                item.pk,
                type(exc).__name__,
            )
            continue
        if new is None:
            current += 1
        else:
            changes.append((item, old, new))
    with transaction.atomic():
        # Compare and swap, for the whole batch at once: the rows are locked, and a header that
        # changed since it was read (another worker's rewrap) is left alone.
        wanted = {item.pk: (item, old, new) for item, old, new in changes}
        locked_rows = source.model.objects.select_for_update().filter(pk__in=list(wanted))
        updated = []
        history = []
        for pk, header in locked_rows.values_list("pk", "header"):
            item, old, new = wanted[pk]
            if bytes(header) != old:
                current += 1
                continue
            item.header = new
            updated.append(item)
            if source.keeps_history:
                history.append(HeaderHistory(version=item, header=old))
        if updated:
            table = connection.ops.quote_name(source.model._meta.db_table)
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"UPDATE {table} SET header = %s WHERE id = %s",  # noqa: S608
                    [(item.header, item.pk) for item in updated],
                )
        HeaderHistory.objects.bulk_create(history)
    return len(updated), current, failed


def _sweep_tail(campaign: Campaign) -> tuple[int, int, int]:
    """Headers stored after the campaign started (beyond its bounds) whose data keys were
    wrapped before the rotation (an upload that was streaming when it happened): rewrap them
    too before the campaign may call itself complete."""
    backend = key_backend(campaign.binding.backend_alias)
    totals = [0, 0, 0]
    for phase, source in SOURCES.items():
        _, hi = campaign.bounds.get(phase, [0, 0])
        cursor = hi
        while True:
            batch = list(
                source.queryset(campaign.tenant)
                .filter(pk__gt=cursor)
                .order_by("pk")[: settings.VAULT_REWRAP_BATCH]
            )
            if not batch:
                break
            for index, count in enumerate(_rewrap_items(source, batch, campaign, backend)):
                totals[index] += count
            cursor = batch[-1].pk
    return totals[0], totals[1], totals[2]


def slice_step(slice_id: int, worker: str) -> bool:
    """Rewrap one batch of a slice. Returns whether there is more to do for this worker.

    Raises:
        AuditUnavailable, KeyBackendError: the batch did not happen (headers already replaced
            stay replaced; the cursor did not move, so the batch is looked at again).
    """
    part = _lease(slice_id, worker)
    if part is None:
        return False
    campaign = part.campaign
    source = SOURCES[part.phase]
    batch = list(
        _in_slice(source.queryset(campaign.tenant), part)
        .filter(pk__gt=part.cursor)
        .order_by("pk")[: settings.VAULT_REWRAP_BATCH]
    )
    if not batch:
        return _next_phase(part, worker)
    binding = campaign.binding
    backend = key_backend(binding.backend_alias)
    # One event per batch, before any data key is unwrapped: a batch that cannot be recorded
    # does not happen.
    audit_record(
        "key.rewrap",
        tenant=campaign.tenant,
        resource_type="key",
        resource_id=binding.key_id,
        details={
            "campaign": campaign.pk,
            "slice": part.number,
            "phase": part.phase,
            "first": batch[0].pk,
            "last": batch[-1].pk,
            "count": len(batch),
            "target_version": campaign.target_version,
        },
    )
    rewrapped, current, failed = _rewrap_items(source, batch, campaign, backend)
    with transaction.atomic():
        locked = CampaignSlice.objects.select_for_update().get(pk=part.pk)
        if locked.phase == part.phase:
            locked.cursor = max(locked.cursor, batch[-1].pk)
        locked.rewrapped += rewrapped
        locked.already_current += current
        locked.failed += failed
        locked.save(update_fields=["cursor", "rewrapped", "already_current", "failed"])
    _pace(len(batch))
    return True


def _next_phase(part: CampaignSlice, worker: str) -> bool:
    with transaction.atomic():
        locked = CampaignSlice.objects.select_for_update().get(pk=part.pk)
        if locked.done or locked.lease_owner != worker:
            return False
        index = PHASES.index(locked.phase)
        if index + 1 < len(PHASES):
            locked.phase, locked.cursor = PHASES[index + 1], 0
            locked.save(update_fields=["phase", "cursor"])
            return True
        locked.done = True
        locked.lease_owner, locked.lease_until = "", None
        locked.save(update_fields=["done", "lease_owner", "lease_until"])
        campaign = Campaign.objects.get(pk=locked.campaign_id)
        if campaign.state != CampaignState.RUNNING or campaign.parts.filter(done=False).exists():
            return False
    # The last slice is done: pick up what was stored meanwhile under an older version, then
    # (if no other worker finished first) the campaign is complete.
    swept = _sweep_tail(campaign)
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if campaign.state != CampaignState.RUNNING:
            return False
        CampaignSlice.objects.filter(campaign=campaign, number=part.number).update(
            rewrapped=models.F("rewrapped") + swept[0],
            already_current=models.F("already_current") + swept[1],
            failed=models.F("failed") + swept[2],
        )
        campaign.state = CampaignState.COMPLETE
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["state", "finished_at"])
        status = campaign_status(campaign)
        audit_record(
            "key.rewrap",
            tenant=campaign.tenant,
            resource_type="key",
            resource_id=part.campaign.binding.key_id,
            details={
                "campaign": campaign.pk,
                "complete": True,
                "rewrapped": status["rewrapped"],
                "already_current": status["already_current"],
                "failed": status["failed"],
                "target_version": campaign.target_version,
            },
        )
    logger.info("campaign %d complete: %d rewrapped", campaign.pk, status["rewrapped"])
    return False


def campaign_step(campaign_id: int, worker: str) -> bool:
    """One batch of any slice of the campaign this worker may work on; whether there is more."""
    for slice_id in CampaignSlice.objects.filter(
        campaign_id=campaign_id, done=False, campaign__state=CampaignState.RUNNING
    ).values_list("pk", flat=True):
        if slice_step(slice_id, worker):
            return True
    return False


def _pace(count: int) -> None:
    """Keep to ``VAULT_REWRAP_RATE`` data keys per second (0: as fast as the backend goes)."""
    rate = settings.VAULT_REWRAP_RATE
    if rate > 0:
        time.sleep(count / rate)


def campaigns_run(*, worker: str | None = None, max_seconds: float = 50.0) -> int:
    """Work on running campaigns, compromised keys first, for at most about ``max_seconds``:
    slice after slice, each under its own lease, so that several workers share a campaign.

    Returns how many slices this worker worked on (0 when none was free).
    """
    name = worker or f"{os.uname().nodename}:{os.getpid()}"
    deadline = time.monotonic() + max_seconds
    touched = 0
    slices = CampaignSlice.objects.filter(done=False, campaign__state=CampaignState.RUNNING)
    for slice_id, campaign_id in slices.order_by(
        "campaign__priority", "campaign__created_at", "number"
    ).values_list("pk", "campaign_id"):
        worked = False
        while time.monotonic() < deadline:
            try:
                more = slice_step(slice_id, name)
            except Exception as exc:
                logger.exception("campaign %d: a batch failed; it is retried", campaign_id)
                Campaign.objects.filter(pk=campaign_id).update(last_error=str(exc)[:500])
                break
            worked = True
            if not more:
                break
        touched += int(worked)
        if time.monotonic() >= deadline:
            break
    return touched


def campaign_status(campaign: Campaign) -> dict[str, Any]:
    """What the API and ``key_rotation_status`` show of a campaign."""
    totals = campaign.parts.aggregate(
        rewrapped=models.Sum("rewrapped"),
        current=models.Sum("already_current"),
        failed=models.Sum("failed"),
    )
    rewrapped, current = totals["rewrapped"] or 0, totals["current"] or 0
    if campaign.state != CampaignState.RUNNING:
        progress = 1.0
    else:
        progress = min((rewrapped + current) / campaign.total, 1.0) if campaign.total else 0.0
    phases = sorted(set(campaign.parts.filter(done=False).values_list("phase", flat=True)))
    return {
        "id": campaign.pk,
        "key": campaign.binding.key_id,
        "role": campaign.binding.role,
        "target_version": campaign.target_version,
        "reason": campaign.reason,
        "state": campaign.state,
        "total": campaign.total,
        "rewrapped": rewrapped,
        "already_current": current,
        "failed": totals["failed"] or 0,
        "progress": round(progress, 4),
        "phase": ",".join(phases) or "done",
        "slices": campaign.slices,
        "created_at": campaign.created_at,
        "finished_at": campaign.finished_at,
        "last_error": campaign.last_error,
    }
