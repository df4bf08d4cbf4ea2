"""Waivers (accepted risks under dual control) and signed attestations."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compliance import catalog
from compliance.checks import get_check
from compliance.models import Attestation, Waiver, WaiverApproval, WaiverState
from vault.accounts.models import User
from vault.audit.models import AuditEvent
from vault.audit.services import audit_record, log_of, log_signer
from vault.crypto import canonical
from vault.crypto.auditbundle import format_time
from vault.tenants.models import Membership, Role, Tenant

WAIVER_MAX_DAYS = 365
ATTESTATION_MAX_DAYS = 366
DECIDERS = frozenset({Role.OWNER, Role.CUSTODIAN})
ATTESTATION_KINDS = (
    "access_review",
    "custodian_ack",
    "tra",
    "policy_approval",
    "crypto_inventory_review",
    "ceremony",
    "configuration",
    "other",
)


class ComplianceError(Exception):
    """A request the compliance services refuse; ``code`` is stable, ``status`` HTTP's."""

    code = "compliance_invalid"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        if code:
            self.code = code
        if status:
            self.status = status


def _role_of(tenant: Tenant, user: User) -> str | None:
    return (
        Membership.objects.filter(tenant=tenant, user=user).values_list("role", flat=True).first()
    )


# --- waivers -------------------------------------------------------------------------------------


@transaction.atomic
def waiver_request(
    *,
    tenant: Tenant,
    user: User,
    check_id: str,
    justification: str,
    days: int,
    finding_id: str = "",
    compensating_control: str = "",
) -> Waiver:
    """Ask to accept the findings of one check (all, or one finding) for ``days`` days.

    Raises:
        ComplianceError: an unknown check, a manual check, an empty justification, a period
            outside 1 to 365 days, or a requester who may not ask.
    """
    try:
        check = get_check(check_id)
    except KeyError:
        raise ComplianceError(f"no check {check_id!r}", code="unknown_check") from None
    if check.kind == "manual":
        raise ComplianceError(
            "manual checks are satisfied by attestations, not waived", code="check_is_manual"
        )
    if _role_of(tenant, user) not in DECIDERS:
        raise ComplianceError(
            "only owners and custodians ask for waivers", code="role_forbidden", status=403
        )
    if len(justification.strip()) < 10:
        raise ComplianceError("say why the risk is accepted (10 characters at least)")
    if not 1 <= days <= WAIVER_MAX_DAYS:
        raise ComplianceError(f"a waiver lasts 1 to {WAIVER_MAX_DAYS} days")
    if finding_id and (
        len(finding_id) != 64 or not all(c in "0123456789abcdef" for c in finding_id)
    ):
        raise ComplianceError("finding_id is a finding's 64 hex digit id")
    waiver = Waiver.objects.create(
        tenant=tenant,
        check_id=check_id,
        finding_id=finding_id,
        justification=justification.strip(),
        compensating_control=compensating_control.strip(),
        requested_by=user,
        expires_at=timezone.now() + timedelta(days=days),
    )
    audit_record(
        "compliance.waiver.request",
        tenant=tenant,
        resource_type="waiver",
        resource_id=waiver.pk,
        details={"check": check_id, "finding": finding_id, "days": days},
    )
    return waiver


@transaction.atomic
def waiver_decide(*, waiver: Waiver, user: User, approve: bool, reason: str = "") -> Waiver:
    """Approve or reject a pending waiver; it becomes active at the required approvals.

    Raises:
        ComplianceError: the waiver is not pending or expired, the user asked for it, already
            decided, or is not an owner or custodian of the tenant.
    """
    waiver = Waiver.objects.select_for_update().get(pk=waiver.pk)
    if waiver.state != WaiverState.PENDING:
        raise ComplianceError(
            f"the waiver is {waiver.state}", code="waiver_not_pending", status=409
        )
    if waiver.expires_at <= timezone.now():
        raise ComplianceError("the waiver expired", code="waiver_not_pending", status=409)
    if waiver.requested_by_id == user.pk:
        raise ComplianceError(
            "the requester cannot approve their own waiver", code="self_approval", status=403
        )
    if _role_of(waiver.tenant, user) not in DECIDERS:
        raise ComplianceError(
            "only owners and custodians decide waivers", code="role_forbidden", status=403
        )
    if WaiverApproval.objects.filter(waiver=waiver, approver=user).exists():
        raise ComplianceError("you already decided", code="already_decided", status=409)
    WaiverApproval.objects.create(waiver=waiver, approver=user, approve=approve, reason=reason)
    if not approve:
        waiver.state = WaiverState.REJECTED
        event = "compliance.waiver.reject"
    else:
        event = "compliance.waiver.approve"
        approvals = WaiverApproval.objects.filter(waiver=waiver, approve=True).count()
        if approvals >= settings.VAULT_APPROVALS_REQUIRED:
            waiver.state = WaiverState.ACTIVE
            waiver.approved_at = timezone.now()
    waiver.save(update_fields=["state", "approved_at"])
    audit_record(
        event,
        tenant=waiver.tenant,
        resource_type="waiver",
        resource_id=waiver.pk,
        details={"check": waiver.check_id, "state": waiver.state},
    )
    return waiver


def waiver_holds(waiver: Waiver) -> bool:
    """Whether an active waiver still stands on its own record, not on its ``state`` column alone.

    It needs the required approvals from owners or custodians of its tenant other than the
    requester, each also recorded as a ``compliance.waiver.approve`` event in the tenant's
    audit log, and an expiry within the cap: a row made or edited in the database without those
    counts for nothing.
    """
    required = settings.VAULT_APPROVALS_REQUIRED
    if waiver.expires_at > waiver.requested_at + timedelta(days=WAIVER_MAX_DAYS, hours=1):
        return False
    deciders = set(
        Membership.objects.filter(tenant=waiver.tenant, role__in=DECIDERS).values_list(
            "user_id", flat=True
        )
    )
    approvers = {
        a.approver_id
        for a in waiver.approvals.filter(approve=True)
        if a.approver_id != waiver.requested_by_id and a.approver_id in deciders
    }
    if len(approvers) < required:
        return False
    if waiver.approvals.filter(approve=False).exists():
        return False
    recorded = AuditEvent.objects.filter(
        tenant=waiver.tenant,
        type="compliance.waiver.approve",
        resource_type="waiver",
        resource_id=str(waiver.pk),
    ).count()
    return recorded >= required


@transaction.atomic
def waiver_revoke(*, waiver: Waiver, user: User) -> Waiver:
    """End a pending or active waiver now (one owner or custodian may: it only tightens)."""
    waiver = Waiver.objects.select_for_update().get(pk=waiver.pk)
    if _role_of(waiver.tenant, user) not in DECIDERS:
        raise ComplianceError(
            "only owners and custodians revoke waivers", code="role_forbidden", status=403
        )
    if waiver.state not in (WaiverState.PENDING, WaiverState.ACTIVE):
        raise ComplianceError(f"the waiver is {waiver.state}", code="waiver_not_active", status=409)
    waiver.state = WaiverState.REVOKED
    waiver.save(update_fields=["state"])
    audit_record(
        "compliance.waiver.revoke",
        tenant=waiver.tenant,
        resource_type="waiver",
        resource_id=waiver.pk,
        details={"check": waiver.check_id},
    )
    return waiver


# --- attestations --------------------------------------------------------------------------------


@transaction.atomic
def attestation_create(
    *,
    tenant: Tenant,
    user: User,
    requirement: str,
    kind: str,
    statement: str,
    valid_days: int,
    document_sha256: str = "",
) -> Attestation:
    """Record a person's signed statement for a requirement, valid for ``valid_days``.

    The canonical body names the tenant, requirement, statement, signer and period; the
    tenant's signing key signs it (the signer authenticated to the vault to ask), and an audit
    event carries the body's SHA-256.

    Raises:
        ComplianceError: an unknown requirement or kind, an empty statement, a bad period or
            document digest, or a user who is not an owner or custodian of the tenant.
    """
    if requirement not in catalog.REQUIREMENTS:
        raise ComplianceError(f"no requirement {requirement!r}", code="unknown_requirement")
    if kind not in ATTESTATION_KINDS:
        raise ComplianceError(f"kind is one of {', '.join(ATTESTATION_KINDS)}")
    if _role_of(tenant, user) not in DECIDERS:
        raise ComplianceError(
            "only owners and custodians attest", code="role_forbidden", status=403
        )
    if len(statement.strip()) < 10:
        raise ComplianceError("the statement says what was done (10 characters at least)")
    if not 1 <= valid_days <= ATTESTATION_MAX_DAYS:
        raise ComplianceError(f"an attestation is valid 1 to {ATTESTATION_MAX_DAYS} days")
    if document_sha256 and (
        len(document_sha256) != 64 or not all(c in "0123456789abcdef" for c in document_sha256)
    ):
        raise ComplianceError("document_sha256 is 64 lowercase hex digits")
    now = timezone.now()
    until = now + timedelta(days=valid_days)
    body = canonical.canonical_json(
        {
            "format": "ciphervault-attestation/1",
            "tenant": tenant.slug,
            "requirement": requirement,
            "kind": kind,
            "statement": statement.strip(),
            "document_sha256": document_sha256,
            "signer": user.email,
            "signed_at": format_time(now),
            "valid_until": format_time(until),
        }
    )
    signer = log_signer(log_of(tenant))
    signature = signer.sign(body)
    item = Attestation.objects.create(
        tenant=tenant,
        requirement=requirement,
        kind=kind,
        statement=statement.strip(),
        document_sha256=document_sha256,
        signer=user,
        signed_at=now,
        valid_until=until,
        body=body,
        signature=base64.b64encode(signature).decode("ascii"),
        signing_key=signer.key.vkey,
    )
    audit_record(
        "compliance.attest",
        tenant=tenant,
        resource_type="attestation",
        resource_id=item.pk,
        details={
            "requirement": requirement,
            "kind": kind,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
    )
    return item


def attestation_verifies(item: Attestation, keys: object = None) -> bool:
    """Whether an attestation stands: its signature verifies under one of the tenant's signing
    keys (``keys``: the tenant log's ``CheckpointKey`` versions; looked up when None), and its
    columns say what its signed body says. One edited in the database counts for nothing."""
    from vault.crypto.checkpoint import CheckpointKey

    try:
        trusted = keys if keys is not None else log_signer(log_of(item.tenant)).all_keys
        key = CheckpointKey.from_vkey(item.signing_key)
        if all(key.vkey != known.vkey for known in trusted):  # type: ignore[attr-defined]
            return False
        body = bytes(item.body)
        if not key.verify(body, base64.b64decode(item.signature)):
            return False
        signed = json.loads(body)
    except Exception:
        return False
    return (
        signed.get("format") == "ciphervault-attestation/1"
        and signed.get("tenant") == item.tenant.slug
        and signed.get("requirement") == item.requirement
        and signed.get("kind") == item.kind
        and signed.get("statement") == item.statement
        and signed.get("document_sha256") == item.document_sha256
        and signed.get("signer") == item.signer.email
        and signed.get("signed_at") == format_time(item.signed_at)
        and signed.get("valid_until") == format_time(item.valid_until)
    )
