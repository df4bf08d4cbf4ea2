"""Console pages for the tenant's keys, their rotation campaigns, and dual control.

The keys page lists the tenant's key bindings with what their backends say about each version,
and the rotation campaigns with their progress; owners and custodians rotate a key, mark its
current version compromised, or ask for the tenant's keys to be destroyed. The approvals inbox
lists the requests under dual control with their votes; owners and custodians approve, deny or
cancel them. Every change goes through ``vault.lifecycle`` (which records the audit events and
enforces dual control: the requester never approves, nobody decides twice); the views only
turn its refusals into messages, as the API turns them into error codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache

from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyInfo
from vault.console.tenancy import TenantRequest, require_role, tenant_page
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend, key_backends
from vault.keys.services import AlreadyBound, tenant_bind_backend
from vault.lifecycle import approvals, services
from vault.lifecycle.models import (
    ApprovalAction,
    ApprovalRequest,
    Campaign,
    CampaignReason,
    CampaignState,
    Decision,
    RequestState,
)
from vault.tenants.models import Role

# Owners and custodians look after the keys and the auditor reads, as in the API (KEY_PEOPLE,
# KEY_READERS); members have no business with keys or dual control.
KEY_PEOPLE = frozenset({Role.OWNER, Role.CUSTODIAN})
KEY_READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})
KEYS_PAGE = {"GET": KEY_READERS, "POST": KEY_PEOPLE}
REASON_MAX = 2000
RECENT_REQUESTS = 20
RECENT_CAMPAIGNS = 20

# LifecycleError codes as a person reads them; anything else shows the service's own text.
MESSAGES = {
    "key_not_bound": "This tenant has no such key.",
    "key_cannot_rotate": "This key cannot be rotated here.",
    "key_suspended": "The key is suspended: it is used for nothing until an operator looks "
    "into it.",
    "tenant_shredded": "The tenant's keys were destroyed already.",
    "not_a_custodian": "Only the tenant's custodians and owners take part in dual control.",
    "self_approval": "A request needs approvals from people other than its requester.",
    "already_decided": "You have decided on this request already.",
    "not_pending": "The request can no longer be decided or cancelled.",
}


def _lifecycle_message(exc: services.LifecycleError) -> str:
    known = MESSAGES.get(exc.code)
    detail = str(exc)
    if known is None:
        return detail or "The action was refused."
    if exc.code == "key_cannot_rotate" and detail:
        return f"{known} ({detail})"
    return known


def _backend_message(exc: KeyBackendError, what: str) -> str:
    if exc.transient:
        return "The tenant's key backend is unavailable; try again later."
    return f"The tenant's key backend refused the {what}."


def _reason(request: TenantRequest) -> str:
    return request.POST.get("reason", "").strip()[:REASON_MAX]


def _open_requests(now: datetime) -> Q:
    """Requests not yet over: pending and in time, approved (waiting), or running."""
    return Q(state=RequestState.PENDING, expires_at__gt=now) | Q(
        state__in=(RequestState.APPROVED, RequestState.EXECUTING)
    )


# --- reads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyView:
    """One of the tenant's keys and what its backend says of it now."""

    binding: KeyBinding
    role_label: str
    rotatable: bool
    versions: list[KeyInfo]
    available: bool
    detail: str


def _key_views(bindings: list[KeyBinding]) -> list[KeyView]:
    rows = []
    for binding in bindings:
        try:
            description = key_backend(binding.backend_alias).describe(binding.key_id)
        except Exception as exc:  # a backend that is down, or an alias no longer configured
            versions: list[KeyInfo] = []
            available, detail = False, type(exc).__name__
        else:
            versions = sorted(description.versions, key=lambda v: v.ref.version, reverse=True)
            available, detail = True, ""
        rows.append(
            KeyView(
                binding=binding,
                role_label=binding.get_role_display(),
                rotatable=binding.role in services.ROTATABLE_ROLES,
                versions=versions,
                available=available,
                detail=detail,
            )
        )
    return rows


def _campaigns(request: TenantRequest) -> list[dict[str, Any]]:
    campaigns = (
        Campaign.objects.filter(tenant=request.tenant)
        .select_related("binding")
        .order_by("-created_at", "-pk")[:RECENT_CAMPAIGNS]
    )
    rows = []
    for campaign in campaigns:
        status = services.campaign_status(campaign)
        status["percent"] = round(status["progress"] * 100)
        status["state_label"] = CampaignState(campaign.state).label
        status["reason_label"] = CampaignReason(campaign.reason).label
        rows.append(status)
    return rows


@never_cache
@tenant_page(KEYS_PAGE)
def keys(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's keys, their versions, and the rotation campaigns; owners and custodians
    POST ``action`` = ``rotate`` or ``compromised`` (with ``role``) or ``destroy`` (with
    ``reason``)."""
    if request.method == "POST":
        action = request.POST.get("action", "")
        if action == "rotate":
            return _rotate(request, compromised=False)
        if action == "compromised":
            return _rotate(request, compromised=True)
        if action == "destroy":
            return _destroy_request(request)
        if action == "create":
            return _create_keys(request)
        messages.error(request, "Unknown action.")
        return redirect("console:keys", slug=request.tenant.slug)
    bindings = list(KeyBinding.objects.filter(tenant=request.tenant).order_by("role"))
    can_act = request.role in KEY_PEOPLE and request.tenant.shredded_at is None
    pending_destroy = (
        ApprovalRequest.objects.filter(tenant=request.tenant, action=ApprovalAction.KEY_DESTROY)
        .filter(_open_requests(timezone.now()))
        .first()
    )
    unbound = not any(b.role == KeyRole.PRIMARY for b in bindings)
    can_create = unbound and request.role == Role.OWNER and request.tenant.shredded_at is None
    context = {
        "keys": _key_views(bindings),
        "unbound": unbound,
        "can_create": can_create,
        "backend_aliases": _backend_aliases() if can_create else [],
        "campaigns": _campaigns(request),
        "can_act": can_act,
        "pending_destroy": pending_destroy,
        "shredded_at": request.tenant.shredded_at,
    }
    return render(request, "console/keys.html", context)


# --- key actions ---------------------------------------------------------------------------------


def _backend_aliases() -> list[str]:
    """The configured backends an owner may choose (``VAULT_OWNER_BACKENDS``): never the
    platform's signing backends unless the operator listed them, none when the configuration is
    broken."""
    try:
        configured = key_backends()
    except KeyBackendError:
        return []
    return sorted(alias for alias in configured if alias in settings.VAULT_OWNER_BACKENDS)


def _create_keys(request: TenantRequest) -> HttpResponse:
    """Owners create the tenant's keys: bind it to a configured backend (and a recovery one)."""
    require_role(request, {Role.OWNER}, action="create")
    target = redirect("console:keys", slug=request.tenant.slug)
    alias = request.POST.get("backend", "").strip()
    recovery = request.POST.get("recovery_backend", "").strip() or None
    configured = _backend_aliases()
    if not alias:
        messages.error(request, "Choose the key backend for the tenant's keys.")
        return target
    for wanted in filter(None, (alias, recovery)):
        if wanted not in configured:
            messages.error(request, f"No key backend {wanted!r} is open to owners here.")
            return target
    try:
        made = tenant_bind_backend(
            tenant=request.tenant, backend_alias=alias, recovery_alias=recovery
        )
    except AlreadyBound:
        messages.error(request, "The tenant's keys exist already; nothing was created.")
        return target
    except KeyBackendError as exc:
        messages.error(request, _backend_message(exc, "new keys") + " Nothing was created.")
        return target
    created = ", ".join(
        f"{binding.get_role_display().lower()} in {binding.backend_alias}" for binding in made
    )
    messages.success(request, f"The tenant's keys are created: {created}.")
    return target


def _rotate(request: TenantRequest, *, compromised: bool) -> HttpResponse:
    """Rotate the primary or recovery key, or first mark its current version compromised."""
    target = redirect("console:keys", slug=request.tenant.slug)
    role = request.POST.get("role", "")
    if role not in services.ROTATABLE_ROLES:
        messages.error(request, "Choose the primary or the recovery key.")
        return target
    label = KeyRole(role).label
    if compromised and request.POST.get("confirm") != "yes":
        messages.error(request, "Tick the box to confirm that the key is compromised.")
        return target
    try:
        if compromised:
            campaign = services.key_mark_compromised(tenant=request.tenant, role=role)
        else:
            campaign = services.key_rotate(tenant=request.tenant, role=role)
    except services.LifecycleError as exc:
        messages.error(request, _lifecycle_message(exc))
        return target
    except KeyBackendError as exc:
        messages.error(request, _backend_message(exc, "rotation"))
        return target
    if compromised:
        messages.success(
            request,
            f"{label}: the compromised version no longer wraps; version "
            f"{campaign.target_version} replaces it and its campaign runs first.",
        )
    else:
        messages.success(
            request,
            f"{label} rotated to version {campaign.target_version}; "
            "its campaign rewraps the stored data keys.",
        )
    return target


def _destroy_request(request: TenantRequest) -> HttpResponse:
    """Ask for the tenant's keys to be destroyed (dual control)."""
    target = redirect("console:keys", slug=request.tenant.slug)
    reason = _reason(request)
    if not reason:
        messages.error(request, "Give a reason for destroying the keys.")
        return target
    try:
        made = approvals.approval_request(
            tenant=request.tenant,
            user=request.user,
            action=ApprovalAction.KEY_DESTROY,
            reason=reason,
            params={},
        )
    except services.LifecycleError as exc:
        messages.error(request, _lifecycle_message(exc))
        return target
    except KeyBackendError as exc:
        messages.error(request, _backend_message(exc, "request"))
        return target
    messages.success(
        request,
        f"Request #{made.pk} to destroy the tenant's keys is waiting for "
        f"{made.required} approvals from other custodians or owners.",
    )
    return redirect("console:approvals", slug=request.tenant.slug)


# --- approvals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """A request under dual control as the inbox shows it to the caller."""

    request: ApprovalRequest
    state: str
    state_label: str
    expired: bool
    approvals: int
    may_decide: bool
    may_cancel: bool
    my_vote: str


def _state_of(item: ApprovalRequest, now: datetime) -> tuple[str, bool]:
    """The state as it is now: a pending request past its time has expired, even if no job has
    marked it so yet."""
    if item.state == RequestState.PENDING and item.expires_at <= now:
        return RequestState.EXPIRED, True
    return item.state, False


def _request_view(item: ApprovalRequest, request: TenantRequest, now: datetime) -> RequestView:
    state, expired = _state_of(item, now)
    user = request.user
    votes = list(item.votes.all())
    mine = next((v for v in votes if v.approver_id == user.pk), None)
    key_person = request.role in KEY_PEOPLE
    return RequestView(
        request=item,
        state=state,
        state_label=RequestState(state).label,
        expired=expired,
        approvals=sum(1 for v in votes if v.decision == Decision.APPROVE),
        may_decide=(
            key_person
            and state == RequestState.PENDING
            and item.requested_by_id != user.pk
            and mine is None
        ),
        may_cancel=key_person and state in (RequestState.PENDING, RequestState.APPROVED),
        my_vote=Decision(mine.decision).label if mine is not None else "",
    )


@never_cache
@tenant_page(KEYS_PAGE)
def approvals_inbox(request: TenantRequest, slug: str) -> HttpResponse:
    """Requests under dual control: those open now, then the recent others, with their votes.
    Owners and custodians POST ``request`` (an id) and ``action`` = ``approve`` or ``deny``
    (with ``reason``) or ``cancel``."""
    if request.method == "POST":
        return _act_on_request(request)
    now = timezone.now()
    base = (
        ApprovalRequest.objects.filter(tenant=request.tenant)
        .select_related("requested_by", "finished_by")
        .prefetch_related("votes__approver")
        .order_by("-requested_at", "-pk")
    )
    open_filter = _open_requests(now)
    open_items = [_request_view(item, request, now) for item in base.filter(open_filter)]
    recent = [
        _request_view(item, request, now) for item in base.exclude(open_filter)[:RECENT_REQUESTS]
    ]
    context = {"open_requests": open_items, "recent_requests": recent}
    return render(request, "console/approvals.html", context)


def _target(request: TenantRequest) -> ApprovalRequest:
    # Another tenant's request is a 404, never a 403: its id tells nothing.
    raw = request.POST.get("request", "")
    found = None
    if raw.isdigit():
        found = ApprovalRequest.objects.filter(tenant=request.tenant, pk=int(raw)).first()
    if found is None:
        raise Http404("No such request.")
    return found


def _act_on_request(request: TenantRequest) -> HttpResponse:
    inbox = redirect("console:approvals", slug=request.tenant.slug)
    target = _target(request)
    action = request.POST.get("action", "")
    if action == "cancel":
        try:
            done = approvals.approval_cancel(request=target, user=request.user)
        except services.LifecycleError as exc:
            messages.error(request, _lifecycle_message(exc))
            return inbox
        messages.success(request, f"Request #{done.pk} is cancelled.")
        return inbox
    if action not in (Decision.APPROVE, Decision.DENY):
        messages.error(request, "Choose to approve, deny or cancel.")
        return inbox
    reason = _reason(request)
    if not reason:
        messages.error(request, f"Give a reason to {action} request #{target.pk}.")
        return inbox
    approve = action == Decision.APPROVE
    try:
        done = approvals.approval_decide(
            request=target, user=request.user, approve=approve, reason=reason
        )
    except services.LifecycleError as exc:
        messages.error(request, _lifecycle_message(exc))
        return inbox
    except KeyBackendError as exc:
        messages.error(request, _backend_message(exc, "action"))
        return inbox
    verb = "approved" if approve else "denied"
    messages.success(
        request, f"You {verb} request #{done.pk}. It is now: {RequestState(done.state).label}."
    )
    return inbox
