"""Rotating a tenant's keys and rewrapping every data key still under an older version.

A rotation adds a version to the key in its backend (which becomes the one that wraps) and
starts a campaign. The campaign rewraps, in batches, every stored header of the tenant whose
stanza for that key is older: gateway versions, deduplicated blobs and the deduplication key.
Client-side versions are the user's (``cvault key rotate``) and are left alone. Only the one
stanza changes; the body and every other stanza stay as they are, and the header is replaced
with a compare-and-swap, so a header is rewrapped at most once and a crash loses nothing.

Campaigns are driven by their own row, not by the task queue: ``campaigns_run`` (the scheduled
job ``vault.lifecycle.run_campaigns``, also under the embedded scheduler) takes the lease of a
running campaign, does batches until it is done or its time is up, and renews the lease as it
goes. A worker that dies leaves a lease that expires after ``VAULT_CAMPAIGN_LEASE_SECONDS``; the
next run continues from the campaign's cursor.
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
from django.db import transaction
from django.utils import timezone

from kms_plugins.base import KeyBackend
from kms_plugins.types import Capability, KeyState
from vault.audit.services import audit_record
from vault.crypto import envelope
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.models import PHASES, Campaign, CampaignReason, CampaignState
from vault.objects.models import Blob, DedupKey, HeaderHistory, ObjectVersion
from vault.objects.services import blob_context, version_context
from vault.tenants.models import Tenant

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
    with transaction.atomic():
        binding = KeyBinding.objects.select_for_update().filter(tenant=tenant, role=role).first()
        if binding is None:
            raise NotBound(f"tenant {tenant.slug} has no {role} key")
        backend = key_backend(binding.backend_alias)
        if Capability.ROTATE not in backend.capabilities:
            raise CannotRotate(f"the {binding.backend_kind} backend cannot rotate keys")
        audit_record(
            "key.rotate",
            tenant=tenant,
            resource_type="key",
            resource_id=binding.key_id,
            details={"role": role, "reason": reason},
        )
        ref = backend.rotate(binding.key_id)
        now = timezone.now()
        Campaign.objects.filter(binding=binding, state=CampaignState.RUNNING).update(
            state=CampaignState.SUPERSEDED, finished_at=now, lease_owner="", lease_until=None
        )
        campaign = Campaign.objects.create(
            tenant=tenant,
            binding=binding,
            target_version=ref.version,
            reason=reason,
            priority=0 if reason == CampaignReason.COMPROMISED else 10,
            total=_stored_headers(tenant),
        )
    logger.info("tenant %s: %s key rotated to version %d", tenant.slug, role, ref.version)
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        from vault.lifecycle.tasks import run_campaigns

        transaction.on_commit(run_campaigns.delay)
    return campaign


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


def keys_rotate_due(*, now: datetime | None = None) -> int:
    """Rotate every wrapping key whose current version is older than its cryptoperiod
    (``VAULT_KEK_CRYPTOPERIOD_DAYS``; NIST SP 800-57 allows a key-encryption key at most two
    years of originator use). Returns how many keys were rotated."""
    moment = now or timezone.now()
    limit = timedelta(days=settings.VAULT_KEK_CRYPTOPERIOD_DAYS)
    rotated = 0
    for binding in KeyBinding.objects.filter(
        tenant__isnull=False, tenant__is_active=True, role__in=ROTATABLE_ROLES
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
        if moment - born < limit:
            continue
        assert binding.tenant is not None  # noqa: S101  (filtered above)
        try:
            key_rotate(tenant=binding.tenant, role=binding.role, reason=CampaignReason.CRYPTOPERIOD)
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
    return envelope.replace_stanzas(header, stanzas, dek=dek)


def _lease(campaign_id: int, worker: str) -> Campaign | None:
    """Take or renew the campaign's lease; None if it is finished or another worker holds it."""
    now = timezone.now()
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update()
            .select_related("binding", "tenant")
            .filter(pk=campaign_id, state=CampaignState.RUNNING)
            .first()
        )
        if campaign is None:
            return None
        held = campaign.lease_until is not None and campaign.lease_until > now
        if held and campaign.lease_owner != worker:
            return None
        campaign.lease_owner = worker
        campaign.lease_until = now + timedelta(seconds=settings.VAULT_CAMPAIGN_LEASE_SECONDS)
        campaign.save(update_fields=["lease_owner", "lease_until"])
        return campaign


def campaign_step(campaign_id: int, worker: str) -> bool:
    """Rewrap one batch of a campaign. Returns whether there is more to do for this worker.

    Raises:
        AuditUnavailable, KeyBackendError: the batch did not happen (headers already replaced
            stay replaced; the cursor did not move, so the batch is looked at again).
    """
    campaign = _lease(campaign_id, worker)
    if campaign is None:
        return False
    source = SOURCES[campaign.phase]
    batch = list(
        source.queryset(campaign.tenant)
        .filter(pk__gt=campaign.cursor)
        .order_by("pk")[: settings.VAULT_REWRAP_BATCH]
    )
    if not batch:
        return _next_phase(campaign, worker)
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
            "phase": campaign.phase,
            "first": batch[0].pk,
            "last": batch[-1].pk,
            "count": len(batch),
            "target_version": campaign.target_version,
        },
    )
    rewrapped = current = 0
    for item in batch:
        old = bytes(item.header)
        new = _rewrap_header(
            old,
            binding=binding,
            backend=backend,
            context=source.context(item),
            target=campaign.target_version,
        )
        if new is None:
            current += 1
            continue
        with transaction.atomic():
            # Compare and swap: a header changed meanwhile (by another worker) is left alone.
            changed = source.model.objects.filter(pk=item.pk, header=old).update(header=new)
            if changed and source.keeps_history:
                HeaderHistory.objects.create(version=item, header=old)
        if changed:
            rewrapped += 1
        else:
            current += 1
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state != CampaignState.RUNNING:
            return False  # superseded meanwhile; the new campaign covers the rest
        if locked.phase == campaign.phase:
            locked.cursor = max(locked.cursor, batch[-1].pk)
        locked.rewrapped += rewrapped
        locked.already_current += current
        locked.save(update_fields=["cursor", "rewrapped", "already_current"])
    _pace(len(batch))
    return True


def _next_phase(campaign: Campaign, worker: str) -> bool:
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state != CampaignState.RUNNING or locked.lease_owner != worker:
            return False
        index = PHASES.index(locked.phase)
        if index + 1 < len(PHASES):
            locked.phase, locked.cursor = PHASES[index + 1], 0
            locked.save(update_fields=["phase", "cursor"])
            return True
        locked.state = CampaignState.COMPLETE
        locked.finished_at = timezone.now()
        locked.lease_owner, locked.lease_until = "", None
        locked.save(update_fields=["state", "finished_at", "lease_owner", "lease_until"])
        audit_record(
            "key.rewrap",
            tenant=locked.tenant,
            resource_type="key",
            resource_id=locked.binding.key_id,
            details={
                "campaign": locked.pk,
                "complete": True,
                "rewrapped": locked.rewrapped,
                "already_current": locked.already_current,
                "target_version": locked.target_version,
            },
        )
    logger.info("campaign %d complete: %d rewrapped", locked.pk, locked.rewrapped)
    return False


def _pace(count: int) -> None:
    """Keep to ``VAULT_REWRAP_RATE`` data keys per second (0: as fast as the backend goes)."""
    rate = settings.VAULT_REWRAP_RATE
    if rate > 0:
        time.sleep(count / rate)


def campaigns_run(*, worker: str | None = None, max_seconds: float = 50.0) -> int:
    """Work on running campaigns, compromised keys first, for at most about ``max_seconds``.

    Returns how many campaigns were completed or handed back unfinished (0 when none ran).
    """
    name = worker or f"{os.uname().nodename}:{os.getpid()}"
    deadline = time.monotonic() + max_seconds
    touched = 0
    for campaign_id in Campaign.objects.filter(state=CampaignState.RUNNING).values_list(
        "pk", flat=True
    ):
        worked = False
        while time.monotonic() < deadline:
            try:
                more = campaign_step(campaign_id, name)
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
    return {
        "id": campaign.pk,
        "key": campaign.binding.key_id,
        "role": campaign.binding.role,
        "target_version": campaign.target_version,
        "reason": campaign.reason,
        "state": campaign.state,
        "total": campaign.total,
        "rewrapped": campaign.rewrapped,
        "already_current": campaign.already_current,
        "progress": round(campaign.progress, 4),
        "phase": campaign.phase,
        "created_at": campaign.created_at,
        "finished_at": campaign.finished_at,
        "last_error": campaign.last_error,
    }
