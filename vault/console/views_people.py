"""Console pages for people: a tenant's members and roles, and API tokens.

Both pages mirror the REST API's rules and go through the same services, which write the audit
events:

- Members (``vault.tenants.api.views.MembershipViewSet``): owners and auditors read the list,
  owners add, change roles and remove. Making someone an owner or a custodian is under dual
  control (``vault.lifecycle.approvals``): the page files an approval request instead of granting
  the role, as the API asks its callers to. The last owner cannot be demoted or removed. Adding a
  person never shows a password set-up link: that would let the owner sign in as the person, in
  every tenant the person later joins; platform operators issue set-up links.
- Tokens (``vault.tokens.api.views.ApiTokenViewSet``): owners and auditors see every token of the
  tenant, anyone else their own tokens of their current role. Everyone but the auditor creates
  tokens for themselves, with a role their own covers; owners revoke any token of the tenant,
  anyone else their own. A new token is shown once, on the page after the POST: it waits in the
  session until that page pops it, but only sealed (AES-GCM under a key derived from
  ``SECRET_KEY``, bound to the session and the user) and for two minutes, so the database's
  session rows and their backups never hold a clear token.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django import forms
from django.conf import settings
from django.contrib import messages
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django_otp.plugins.otp_totp.models import TOTPDevice

from vault.console.tenancy import ALL_ROLES, WRITERS, TenantRequest, tenant_page
from vault.lifecycle.approvals import approval_request
from vault.lifecycle.services import LifecycleError
from vault.tenants import services as tenant_services
from vault.tenants.models import Membership, Role, role_covers
from vault.tokens import services as token_services
from vault.tokens.models import ApiToken

OWNERS = frozenset({Role.OWNER})
MEMBER_READERS = frozenset({Role.OWNER, Role.AUDITOR})
# As in vault.tenants.api.views: appointing these roles needs approvals.
DUAL_CONTROL_ROLES = frozenset({Role.OWNER, Role.CUSTODIAN})
# The last created token, sealed, kept until the next page shows it (once), for two minutes.
NEW_TOKEN_KEY = "console_new_token"  # noqa: S105  (a session key's name, not a secret)
NEW_TOKEN_INFO = b"ciphervault/v1/console-new-token"
NEW_TOKEN_SECONDS = 120
LAST_OWNER = (
    "{email} is the tenant's last owner, and a tenant always keeps one. "
    "Make someone else an owner first."
)
REASON_HELP = (
    "Needed when making someone an owner or a custodian: that goes to other custodians and "
    "owners for approval, and they read this."
)


# --- forms ---------------------------------------------------------------------------------------


class _ReasonMixin(forms.Form):
    reason = forms.CharField(
        label="Reason",
        required=False,
        max_length=2000,
        help_text=REASON_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        wants_approval = cleaned.get("role") in DUAL_CONTROL_ROLES and self._needs_approval(cleaned)
        if wants_approval and not cleaned.get("reason", "").strip():
            self.add_error("reason", "Give a reason for the approvers.")
        return cleaned

    def _needs_approval(self, cleaned: dict[str, Any]) -> bool:
        return True


class MemberAddForm(_ReasonMixin):
    prefix = "add"
    email = forms.EmailField(
        label="E-mail address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)
    field_order = ["email", "role", "reason"]


class MemberRoleForm(_ReasonMixin):
    prefix = "change"
    membership = forms.TypedChoiceField(label="Member", coerce=int)
    role = forms.ChoiceField(label="New role", choices=Role.choices)
    field_order = ["membership", "role", "reason"]

    def __init__(self, *args: Any, members: QuerySet[Membership], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.members = members
        field = cast(forms.TypedChoiceField, self.fields["membership"])
        field.choices = [(m.pk, f"{m.user.email} ({m.get_role_display()})") for m in members]

    def _needs_approval(self, cleaned: dict[str, Any]) -> bool:
        current = next((m for m in self.members if m.pk == cleaned.get("membership")), None)
        return current is not None and current.role not in (cleaned["role"], Role.OWNER)


class TokenCreateForm(forms.Form):
    prefix = "token"
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="What the token is for, e.g. the integration that uses it.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    role = forms.ChoiceField(label="Role")
    lifetime_days = forms.IntegerField(
        label="Lifetime in days",
        min_value=1,
        max_value=settings.VAULT_TOKEN_MAX_DAYS,
        initial=settings.VAULT_TOKEN_DEFAULT_DAYS,
        help_text=f"1 to {settings.VAULT_TOKEN_MAX_DAYS} days.",
        widget=forms.NumberInput(attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: Any, creator_role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        role_field = cast(forms.ChoiceField, self.fields["role"])
        role_field.choices = [
            (value, label) for value, label in Role.choices if role_covers(creator_role, value)
        ]
        # The narrowest role by default: a token for an integration rarely needs more.
        role_field.initial = Role.MEMBER if role_covers(creator_role, Role.MEMBER) else creator_role


# --- reads ---------------------------------------------------------------------------------------


def _members(request: TenantRequest) -> QuerySet[Membership]:
    """The tenant's memberships, with whether each person has an authenticator app."""
    enrolled = TOTPDevice.objects.filter(user=OuterRef("user"), confirmed=True)
    return (
        Membership.objects.filter(tenant=request.tenant)
        .select_related("user")
        .annotate(mfa_enrolled=Exists(enrolled))
        .order_by("user__email", "pk")
    )


def _visible_tokens(request: TenantRequest) -> QuerySet[ApiToken]:
    """The tokens the tokens API lists for the caller: the tenant's all for owners and
    auditors, else the person's own of their current role (a narrower token of a wider role
    must not see the wider tokens, and neither must the person after a demotion)."""
    tokens = ApiToken.objects.filter(tenant=request.tenant).select_related("user")
    if request.role in MEMBER_READERS:
        return tokens
    return tokens.filter(user=request.user, role=request.role)


def _revocable_tokens(request: TenantRequest) -> QuerySet[ApiToken]:
    """The tokens the caller may revoke: any of the tenant's for an owner, else their own."""
    tokens = ApiToken.objects.filter(tenant=request.tenant)
    if request.role == Role.OWNER:
        return tokens
    return tokens.filter(user=request.user, role=request.role)


# --- members -------------------------------------------------------------------------------------


def _request_appointment(request: TenantRequest, *, email: str, role: str, reason: str) -> None:
    """File the approval request that makes ``email`` an owner or custodian once approved."""
    try:
        made = approval_request(
            tenant=request.tenant,
            user=request.user,
            action=f"member.{role}.add",
            reason=reason,
            params={"email": email},
        )
    except LifecycleError as exc:
        messages.error(request, f"The request was refused: {exc}.")
        return
    messages.success(
        request,
        f"Giving {made.params['email']} the role {Role(role).label} needs {made.required} "
        f"approvals from other custodians or owners. Request #{made.pk} is waiting for them.",
    )


def _member_add(request: TenantRequest, form: MemberAddForm) -> None:
    email, role = form.cleaned_data["email"], form.cleaned_data["role"]
    if role in DUAL_CONTROL_ROLES:
        _request_appointment(
            request, email=email, role=role, reason=form.cleaned_data["reason"].strip()
        )
        return
    try:
        membership, _ = tenant_services.member_add(tenant=request.tenant, email=email, role=role)
    except tenant_services.AlreadyMember:
        messages.error(request, f"{email} is already a member; change their role instead.")
        return
    # The same message whether the person had an account or not (as the API answers).
    messages.success(
        request, f"{membership.user.email} is now a member, as {membership.get_role_display()}."
    )


def _member_change_role(request: TenantRequest, form: MemberRoleForm) -> None:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "tenant"),
        tenant=request.tenant,
        pk=form.cleaned_data["membership"],
    )
    role, email = form.cleaned_data["role"], membership.user.email
    if membership.role == role:
        messages.info(request, f"{email} has the role {membership.get_role_display()} already.")
        return
    if role in DUAL_CONTROL_ROLES and membership.role != Role.OWNER:
        _request_appointment(
            request, email=email, role=role, reason=form.cleaned_data["reason"].strip()
        )
        return
    try:
        tenant_services.member_set_role(membership=membership, role=role)
    except tenant_services.LastOwner:
        messages.error(request, LAST_OWNER.format(email=email))
        return
    messages.success(request, f"{email} now has the role {Role(role).label}.")


def _member_remove(request: TenantRequest) -> None:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "tenant"),
        tenant=request.tenant,
        pk=_int(request.POST.get("membership")),
    )
    email = membership.user.email
    try:
        tenant_services.member_remove(membership=membership)
    except tenant_services.LastOwner:
        messages.error(request, LAST_OWNER.format(email=email))
        return
    messages.success(request, f"{email} is no longer a member; their tokens here are revoked.")


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


@never_cache
@tenant_page({"GET": MEMBER_READERS, "POST": OWNERS})
def members(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's members: who holds which role, and whether they have MFA (owners edit)."""
    people = _members(request)
    add_form = MemberAddForm()
    role_form = MemberRoleForm(members=people)
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "add":
            add_form = MemberAddForm(request.POST)
            if add_form.is_valid():
                _member_add(request, add_form)
                return redirect("console:members", slug=slug)
        elif action == "role":
            role_form = MemberRoleForm(request.POST, members=people)
            if role_form.is_valid():
                _member_change_role(request, role_form)
                return redirect("console:members", slug=slug)
        elif action == "remove":
            _member_remove(request)
            return redirect("console:members", slug=slug)
        else:
            messages.error(request, "Nothing was changed: the form did not say what to do.")
            return redirect("console:members", slug=slug)
    context = {
        "members": people,
        "add_form": add_form,
        "role_form": role_form,
        "can_edit": request.role == Role.OWNER,
        "approvals_required": settings.VAULT_APPROVALS_REQUIRED,
    }
    return render(request, "console/members.html", context)


# --- tokens --------------------------------------------------------------------------------------


@never_cache
@tenant_page({"GET": ALL_ROLES, "POST": WRITERS})
def tokens(request: TenantRequest, slug: str) -> HttpResponse:
    """API tokens: the ones the caller may see, a form to create one, and revoke buttons."""
    form = TokenCreateForm(creator_role=request.role)
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "create":
            form = TokenCreateForm(request.POST, creator_role=request.role)
            if form.is_valid() and _token_create(request, form):
                return redirect("console:tokens", slug=slug)
        elif action == "revoke":
            token = get_object_or_404(
                _revocable_tokens(request), pk=_int(request.POST.get("token"))
            )
            already = token.revoked_at is not None
            token_services.token_revoke(token=token)
            messages.success(
                request,
                f"The token {token.name} ({token.prefix}) "
                + ("was revoked already." if already else "is revoked."),
            )
            return redirect("console:tokens", slug=slug)
        else:
            messages.error(request, "Nothing was changed: the form did not say what to do.")
            return redirect("console:tokens", slug=slug)
    # Shown on this one page only: popped before rendering, so a reload does not show it again.
    new_token = _new_token_open(request, request.session.pop(NEW_TOKEN_KEY, None))
    if new_token and new_token.get("tenant") != request.tenant.slug:
        new_token = None
    listed = list(_visible_tokens(request))
    revocable = set(_revocable_tokens(request).values_list("pk", flat=True))
    for token in listed:
        token.can_revoke = (  # type: ignore[attr-defined]
            request.role != Role.AUDITOR and token.pk in revocable and token.revoked_at is None
        )
        token.state = (  # type: ignore[attr-defined]
            "revoked" if token.revoked_at else "live" if token.is_live() else "expired"
        )
    context = {
        "tokens": listed,
        "form": form,
        "can_create": request.role != Role.AUDITOR,
        "new_token": new_token,
        "sees_all": request.role in MEMBER_READERS,
    }
    return render(request, "console/tokens.html", context)


def _token_create(request: TenantRequest, form: TokenCreateForm) -> bool:
    try:
        issued = token_services.token_create(
            tenant=request.tenant,
            name=form.cleaned_data["name"],
            role=form.cleaned_data["role"],
            user=request.user,
            lifetime_days=form.cleaned_data["lifetime_days"],
        )
    except token_services.TokenError as exc:
        form.add_error(None, str(exc))
        return False
    request.session[NEW_TOKEN_KEY] = _new_token_seal(
        request,
        {
            "tenant": request.tenant.slug,
            "name": issued.token.name,
            "prefix": issued.token.prefix,
            "role": issued.token.role,
            "clear": issued.clear,
        },
    )
    messages.success(request, f"The token {issued.token.name} is created.")
    return True


def _new_token_aead(request: TenantRequest) -> tuple[AESGCM, bytes]:
    """The sealing key (HKDF-SHA256 of ``SECRET_KEY``) and the associated data: session, user."""
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=NEW_TOKEN_INFO).derive(
        settings.SECRET_KEY.encode()
    )
    bound = json.dumps([request.session.session_key or "", request.user.pk]).encode()
    return AESGCM(key), bound


def _new_token_seal(request: TenantRequest, shown: dict[str, str]) -> dict[str, Any]:
    """A new token for the session: encrypted and short-lived, never in clear."""
    if request.session.session_key is None:
        request.session.save()  # the key is part of the associated data: fix it now
    aead, bound = _new_token_aead(request)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, json.dumps(shown).encode(), bound)
    return {
        "ct": base64.b64encode(sealed).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "expires": int(time.time()) + NEW_TOKEN_SECONDS,
    }


def _new_token_open(request: TenantRequest, entry: Any) -> dict[str, str] | None:
    """The sealed new token, if it is there, not expired, and opens for this session and user."""
    if not isinstance(entry, dict) or not isinstance(entry.get("expires"), int):
        return None
    if entry["expires"] < time.time():
        return None
    aead, bound = _new_token_aead(request)
    try:
        plain = aead.decrypt(base64.b64decode(entry["nonce"]), base64.b64decode(entry["ct"]), bound)
    except (InvalidTag, KeyError, TypeError, ValueError):
        return None
    return cast(dict[str, str], json.loads(plain))
