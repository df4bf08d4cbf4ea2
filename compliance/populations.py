"""The populations an assessor samples from, captured at run time as evidence: every key, member,
token, rotation and dual-control request of the tenant (never a pre-selected sample)."""

from __future__ import annotations

import re
from typing import Any

from django_otp.plugins.otp_totp.models import TOTPDevice

from compliance.checks.base import Context
from kms_plugins.errors import KeyBackendError
from vault.crypto.auditbundle import format_time
from vault.lifecycle.models import ApprovalRequest, Campaign
from vault.tenants.models import Membership
from vault.tokens.models import ApiToken


def _time(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def _no_pan(text: str) -> str:
    """Free text as evidence may carry it: card numbers masked (DATA-001 reports them)."""
    from compliance.checks.data import find_pans

    if any(True for _ in find_pans(text.encode("utf-8"))):
        return re.sub(r"\d", "*", text)
    return text


def _keys(ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for binding in [*ctx.bindings, *ctx.platform_bindings]:
        row: dict[str, Any] = {
            "owner": "tenant" if binding.tenant_id else "platform",
            "role": binding.role,
            "backend": binding.backend_alias,
            "kind": binding.backend_kind,
            "key_id": binding.key_id,
            "fingerprint": binding.fingerprint,
            "created_at": _time(binding.created_at),
            "current_version": binding.current_version,
            "suspended": binding.suspended_at is not None,
        }
        try:
            backend = ctx.backend(binding.backend_alias)
            row["production_safe"] = bool(backend.production_safe)
            description = ctx.describe(binding)
            row["versions"] = [
                {
                    "version": info.ref.version,
                    "state": str(info.state),
                    "algorithm": info.algorithm,
                    "size": info.size,
                    "created": _time(info.created),
                    "activated": _time(info.activated),
                    "deactivated": _time(info.deactivated),
                }
                for info in description.versions
            ]
        except (KeyBackendError, Exception) as exc:  # an unreachable backend is a fact too
            row["versions"] = []
            row["unavailable"] = type(exc).__name__
        rows.append(row)
    return rows


def collect(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """Every population of the tenant, JSON-shaped for evidence and reports."""
    tenant = ctx.tenant
    mfa = set(
        TOTPDevice.objects.filter(confirmed=True, user__memberships__tenant=tenant).values_list(
            "user_id", flat=True
        )
    )
    members = [
        {
            "email": m.user.email,
            "role": m.role,
            "active": m.user.is_active,
            "since": _time(m.created_at),
            "last_login": _time(m.user.last_login),
            "mfa": m.user_id in mfa,
        }
        for m in Membership.objects.filter(tenant=tenant).select_related("user").order_by("pk")
    ]
    tokens = [
        {
            "name": _no_pan(t.name),
            "prefix": t.prefix,
            "role": t.role,
            "person": t.user.email if t.user else None,
            "created_at": _time(t.created_at),
            "expires_at": _time(t.expires_at),
            "revoked_at": _time(t.revoked_at),
            "last_used_at": _time(t.last_used_at),
        }
        for t in ApiToken.objects.filter(tenant=tenant).select_related("user").order_by("pk")
    ]
    rotations = [
        {
            "id": c.pk,
            "key_role": c.binding.role,
            "target_version": c.target_version,
            "reason": _no_pan(c.reason),
            "state": c.state,
            "created_at": _time(c.created_at),
            "finished_at": _time(c.finished_at),
        }
        for c in Campaign.objects.filter(tenant=tenant).select_related("binding").order_by("pk")
    ]
    approvals = [
        {
            "id": r.pk,
            "action": r.action,
            "state": r.state,
            "requested_by": r.requested_by.email,
            "requested_at": _time(r.requested_at),
            "approvals": sum(1 for v in r.votes.all() if v.decision == "approve"),
            "required": r.required,
        }
        for r in ApprovalRequest.objects.filter(tenant=tenant)
        .select_related("requested_by")
        .prefetch_related("votes")
        .order_by("pk")
    ]
    return {
        "keys": _keys(ctx),
        "members": members,
        "tokens": tokens,
        "rotations": rotations,
        "approvals": approvals,
    }
