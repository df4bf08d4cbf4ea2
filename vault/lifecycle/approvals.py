"""Dual control and crypto-shredding.

Actions under dual control: destroying the tenant's keys, making someone an owner, and loosening
the tenant's policy (turning deduplication on). One is requested by a custodian (or an owner)
and runs only after
``required`` approvals (``VAULT_APPROVALS_REQUIRED``, at least 2) from other custodians or owners:
the requester can neither approve their own request nor anyone approve twice, and one denial
ends the request. Requests expire after ``VAULT_APPROVAL_HOURS``. Every step is an audit event.

Destroying a tenant's keys (``key.destroy``) then waits ``VAULT_SHRED_WAIT_DAYS`` (default 7;
0 allowed by configuration), during which anyone who may approve can still cancel it, and then
crypto-shreds: the tenant's gateway objects are marked shredded (reads answer 410), every version
of the tenant's primary and recovery keys is destroyed in its backend (so no stanza, recovery
stanzas included, can open a data key again), and a destruction certificate is signed with the
tenant's signing key and anchored in the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from kms_plugins.types import Capability
from vault.accounts.models import User
from vault.audit.services import audit_record, latest_checkpoint, log_of, log_signer
from vault.crypto import canonical
from vault.crypto.auditbundle import format_time
from vault.crypto.merkle import root_from_leaves
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.models import (
    Approval,
    ApprovalAction,
    ApprovalRequest,
    Campaign,
    CampaignState,
    Decision,
    DestructionCertificate,
    RequestState,
)
from vault.lifecycle.services import LifecycleError
from vault.objects.models import StoredObject
from vault.tenants.models import Membership, Role, Tenant
from vault.tenants.services import member_add, member_set_role, tenant_update

logger = logging.getLogger(__name__)
CUSTODIANS = (Role.CUSTODIAN, Role.OWNER)
# Appointments under dual control: the action, and the role it grants.
GRANTS = {"member.owner.add": Role.OWNER, "member.custodian.add": Role.CUSTODIAN}
CERTIFICATE_FORMAT = "ciphervault-destruction-certificate/1"


class NotACustodian(LifecycleError):
    code, status = "not_a_custodian", 403


class SelfApproval(LifecycleError):
    code, status = "self_approval", 403


class AlreadyDecided(LifecycleError):
    code, status = "already_decided", 409


class NotPending(LifecycleError):
    code, status = "not_pending", 409


class AlreadyShredded(LifecycleError):
    code, status = "tenant_shredded", 410


class BadParameters(LifecycleError):
    code, status = "invalid_parameters", 400


def _checked_params(action: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters an action needs, checked now so that an approved request can run."""
    params = dict(params or {})
    if action in GRANTS:
        email = str(params.get("email") or "").strip().lower()
        if "@" not in email or len(email) > 254 or set(params) != {"email"}:
            raise BadParameters(f"{action} needs {{'email': the person's address}}")
        return {"email": email}
    if action == ApprovalAction.POLICY_LOOSEN:
        period = params.get("kek_cryptoperiod_days")
        if params == {"deduplicate": True}:
            return params
        ceiling = settings.VAULT_KEK_CRYPTOPERIOD_DAYS
        if (
            set(params) == {"kek_cryptoperiod_days"}
            and isinstance(period, int)
            and 1 <= period <= ceiling
        ):
            return params
        raise BadParameters(
            "tenant.policy.loosen needs {'deduplicate': true} or "
            f"{{'kek_cryptoperiod_days': 1 to {settings.VAULT_KEK_CRYPTOPERIOD_DAYS}}}"
        )
    if params:
        raise BadParameters(f"{action} takes no parameters")
    return {}


def _custodian(tenant: Tenant, user: User | None) -> User:
    if (
        user is None
        or not Membership.objects.filter(tenant=tenant, user=user, role__in=CUSTODIANS).exists()
    ):
        raise NotACustodian("only the tenant's custodians and owners take part in dual control")
    return user


def _audit(event: str, request: ApprovalRequest, **details: Any) -> None:
    audit_record(
        event,
        tenant=request.tenant,
        resource_type="approval_request",
        resource_id=request.pk,
        details={"action": request.action, **details},
    )


def approval_request(
    *, tenant: Tenant, user: User | None, action: str, reason: str, params: dict[str, Any] | None
) -> ApprovalRequest:
    """Ask for an action under dual control.

    Raises:
        NotACustodian: the requester is not a custodian or owner of the tenant (integration
            tokens, which act for no person, cannot take part).
        AlreadyShredded: the tenant's keys are already destroyed.
    """
    requester = _custodian(tenant, user)
    params = _checked_params(action, params)
    if action == ApprovalAction.KEY_DESTROY:
        if tenant.shredded_at is not None:
            raise AlreadyShredded("the tenant's keys were destroyed already")
        for binding in KeyBinding.objects.filter(
            tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
        ):
            if Capability.DESTROY not in key_backend(binding.backend_alias).capabilities:
                raise BadParameters(f"the {binding.backend_kind} backend cannot destroy keys")
    with transaction.atomic():
        request = ApprovalRequest.objects.create(
            tenant=tenant,
            action=action,
            params=params,
            reason=reason,
            requested_by=requester,
            expires_at=timezone.now() + timedelta(hours=settings.VAULT_APPROVAL_HOURS),
            required=settings.VAULT_APPROVALS_REQUIRED,
        )
        _audit("approval.request", request, reason=reason, required=request.required)
    return request


def approval_decide(
    *, request: ApprovalRequest, user: User | None, approve: bool, reason: str = ""
) -> ApprovalRequest:
    """Record one custodian's approval or denial; with enough approvals, schedule (or, with no
    waiting period, run) the action.

    Raises:
        NotACustodian, SelfApproval, AlreadyDecided, NotPending (expired, denied, cancelled,
        already approved).
    """
    approver = _custodian(request.tenant, user)
    if approver.pk == request.requested_by_id:
        raise SelfApproval("a request needs approvals from people other than its requester")
    if request.action in GRANTS and approver.email == request.params.get("email"):
        raise SelfApproval("nobody approves their own appointment")
    now = timezone.now()
    run_now = False
    _expire(request, now)
    with transaction.atomic():
        locked = ApprovalRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state != RequestState.PENDING:
            raise NotPending(f"the request is {locked.state}")
        try:
            with transaction.atomic():
                Approval.objects.create(
                    request=locked,
                    approver=approver,
                    decision=Decision.APPROVE if approve else Decision.DENY,
                    reason=reason,
                )
        except IntegrityError:
            raise AlreadyDecided("each person decides once on a request") from None
        _audit("approval.approve" if approve else "approval.deny", locked, reason=reason)
        if not approve:
            locked.state, locked.finished_at, locked.finished_by = (
                RequestState.DENIED,
                now,
                approver,
            )
            locked.save(update_fields=["state", "finished_at", "finished_by"])
        elif _valid_approvals(locked) >= locked.required:
            wait = timedelta(days=settings.VAULT_SHRED_WAIT_DAYS)
            locked.state, locked.approved_at = RequestState.APPROVED, now
            locked.not_before = now + wait if locked.action == ApprovalAction.KEY_DESTROY else now
            locked.save(update_fields=["state", "approved_at", "not_before"])
            _audit("approval.granted", locked, not_before=format_time(locked.not_before))
            run_now = locked.not_before <= now
    if run_now:
        return approval_execute(request=locked)
    return locked


def _valid_approvals(request: ApprovalRequest) -> int:
    """Approvals from people who still are custodians or owners of the tenant: a vote from
    someone since demoted or removed no longer counts."""
    still = Membership.objects.filter(tenant=request.tenant, role__in=CUSTODIANS).values("user")
    return request.votes.filter(decision=Decision.APPROVE, approver__in=still).count()


def _expire(request: ApprovalRequest, now: datetime) -> None:
    with transaction.atomic():
        expired = ApprovalRequest.objects.filter(
            pk=request.pk, state=RequestState.PENDING, expires_at__lte=now
        ).update(state=RequestState.EXPIRED, finished_at=now)
        if expired:
            _audit("approval.expire", request)


def approval_cancel(*, request: ApprovalRequest, user: User | None) -> ApprovalRequest:
    """Cancel a request that has not run yet (pending, or approved within its waiting period).

    Raises:
        NotACustodian, NotPending.
    """
    canceller = _custodian(request.tenant, user)
    with transaction.atomic():
        locked = ApprovalRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state not in (RequestState.PENDING, RequestState.APPROVED):
            raise NotPending(f"the request is {locked.state}")
        locked.state, locked.finished_at, locked.finished_by = (
            RequestState.CANCELLED,
            timezone.now(),
            canceller,
        )
        locked.save(update_fields=["state", "finished_at", "finished_by"])
        _audit("approval.cancel", locked)
    return locked


def approvals_due(*, now: datetime | None = None) -> int:
    """Expire late requests and run approved ones whose waiting period is over. Returns how
    many ran."""
    moment = now or timezone.now()
    for request in ApprovalRequest.objects.filter(
        state=RequestState.PENDING, expires_at__lte=moment
    ):
        _expire(request, moment)
    ran = 0
    due = ApprovalRequest.objects.filter(
        state=RequestState.APPROVED, not_before__lte=moment
    ) | ApprovalRequest.objects.filter(state=RequestState.EXECUTING).exclude(last_error="")
    for request in due:
        try:
            approval_execute(
                request=request, now=moment, resume=request.state == RequestState.EXECUTING
            )
            ran += 1
        except Exception as exc:
            logger.exception("approved request %d could not run; it is retried", request.pk)
            ApprovalRequest.objects.filter(pk=request.pk).update(last_error=str(exc)[:500])
    return ran


def approval_execute(
    *, request: ApprovalRequest, now: datetime | None = None, resume: bool = False
) -> ApprovalRequest:
    """Run an approved request whose waiting period is over (once).

    Raises:
        NotPending: it is not approved, or its waiting period is not over.
    """
    moment = now or timezone.now()
    with transaction.atomic():
        # Claimed once, atomically: a cancel or a second runner after this sees EXECUTING.
        claimed = ApprovalRequest.objects.filter(
            pk=request.pk, state=RequestState.APPROVED, not_before__lte=moment
        ).update(state=RequestState.EXECUTING)
        failed_before = ApprovalRequest.objects.filter(
            pk=request.pk, state=RequestState.EXECUTING
        ).exclude(last_error="")
        if not claimed and not (resume and failed_before.exists()):
            locked = ApprovalRequest.objects.get(pk=request.pk)
            raise NotPending(f"the request is {locked.state} and cannot run now")
        locked = ApprovalRequest.objects.select_related("tenant").get(pk=request.pk)
    try:
        _run(locked)
    except Exception as exc:
        # Left EXECUTING: a destruction that started is finished, never cancelled, by the next
        # scheduled run (every step of it is safe to repeat).
        ApprovalRequest.objects.filter(pk=locked.pk).update(last_error=str(exc)[:500] or "failed")
        raise
    locked.refresh_from_db()
    return locked


def _run(locked: ApprovalRequest) -> None:
    if locked.action == ApprovalAction.KEY_DESTROY:
        tenant_shred(request=locked)
    with transaction.atomic():
        if locked.action in GRANTS:
            _grant(locked.tenant, locked.params["email"], GRANTS[locked.action])
        elif locked.action == ApprovalAction.POLICY_LOOSEN:
            tenant_update(tenant=locked.tenant, **locked.params)
        ApprovalRequest.objects.filter(pk=locked.pk, state=RequestState.EXECUTING).update(
            state=RequestState.EXECUTED, finished_at=timezone.now(), last_error=""
        )
        _audit("approval.execute", locked)


def _grant(tenant: Tenant, email: str, role: str) -> None:
    membership = Membership.objects.filter(tenant=tenant, user__email=email).first()
    if membership is None:
        member_add(tenant=tenant, email=email, role=role)
    elif membership.role != role and membership.role != Role.OWNER:
        member_set_role(membership=membership, role=role)


# --- crypto-shredding ---------------------------------------------------------------------------


def tenant_shred(*, request: ApprovalRequest) -> DestructionCertificate:
    """Destroy the tenant's wrapping keys and certify it (see the module's description).

    Safe to run again after a failure part-way: versions already destroyed are skipped, and the
    certificate is made once.
    """
    tenant = request.tenant
    now = timezone.now()
    bindings = list(
        KeyBinding.objects.filter(
            tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
        ).order_by("role")
    )
    with transaction.atomic():
        audit_record(
            "key.destroy",
            tenant=tenant,
            resource_type="tenant",
            resource_id=tenant.slug,
            details={"request": request.pk, "keys": [b.key_id for b in bindings], "step": "start"},
        )
        Tenant.objects.filter(pk=tenant.pk, shredded_at__isnull=True).update(shredded_at=now)
        Campaign.objects.filter(tenant=tenant, state=CampaignState.RUNNING).update(
            state=CampaignState.SUPERSEDED, finished_at=now
        )
        StoredObject.objects.filter(tenant=tenant, mode="gateway", shredded_at__isnull=True).update(
            shredded_at=now
        )
    keys = []
    for binding in bindings:
        backend = key_backend(binding.backend_alias)
        description = backend.describe(binding.key_id)
        for info in description.versions:
            if info.state != "destroyed":
                backend.destroy(info.ref)
        after = backend.describe(binding.key_id)
        keys.append(
            {
                "role": binding.role,
                "backend": binding.backend_alias,
                "kind": binding.backend_kind,
                "key_id": binding.key_id,
                "pinned_fingerprint": binding.fingerprint,
                "versions": [
                    {"version": v.ref.version, "fingerprint": v.fingerprint, "state": v.state.value}
                    for v in after.versions
                ],
                "destroy_assurance": backend.destroy_assurance,
            }
        )
    existing = DestructionCertificate.objects.filter(request=request).first()
    if existing is not None:
        return existing
    object_ids = list(
        StoredObject.objects.filter(tenant=tenant, mode="gateway")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    checkpoint = latest_checkpoint(log_of(tenant))
    approvers = list(
        request.votes.filter(decision=Decision.APPROVE)
        .order_by("decided_at")
        .values_list("approver__email", flat=True)
    )
    body = {
        "format": CERTIFICATE_FORMAT,
        "tenant": tenant.slug,
        "request": request.pk,
        "reason": request.reason,
        "requested_by": request.requested_by.email,
        "approvers": approvers,
        "destroyed_at": format_time(timezone.now()),
        "keys": keys,
        "objects_affected": len(object_ids),
        "objects_root": base64.b64encode(
            root_from_leaves(str(pk).encode("ascii") for pk in object_ids)
        ).decode("ascii"),
        "audit_checkpoint": checkpoint.note if checkpoint is not None else None,
    }
    raw = canonical.canonical_json(body)
    signer = log_signer(log_of(tenant))
    signature = signer.sign(raw)
    if not signer.key.verify(raw, signature):
        raise LifecycleError("the certificate's signature does not verify")
    with transaction.atomic():
        certificate = DestructionCertificate.objects.create(
            tenant=tenant,
            request=request,
            body=raw,
            signature=base64.b64encode(signature).decode("ascii"),
            signing_key=signer.key.vkey,
        )
        # Anchored in the audit log: the event carries the certificate's hash.
        audit_record(
            "key.destroy",
            tenant=tenant,
            resource_type="destruction_certificate",
            resource_id=certificate.pk,
            details={
                "request": request.pk,
                "step": "certified",
                "sha256": hashlib.sha256(raw).hexdigest(),
                "objects_affected": len(object_ids),
            },
        )
    logger.info("tenant %s crypto-shredded (%d objects)", tenant.slug, len(object_ids))
    return certificate
