"""Identity and access checks (PCI-DSS 7.2 and 8): the role model, unique IDs, inactive
accounts, idle sessions, lockout, password rules, MFA coverage and machine credentials.

Per-person checks judge the tenant's members (``Membership``) and report on resource
``("user", e-mail)``; settings checks report on ``("platform", "platform")``; token checks on
``("token", prefix)``. No check here writes anything.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import password_validation
from django.db.models import Max
from django.urls import NoReverseMatch, reverse

from compliance.checks import register
from compliance.checks.base import Check, Context, Outcome
from vault.accounts.models import User
from vault.accounts.validators import LettersAndDigitsValidator, PasswordHistoryValidator
from vault.crypto.auditbundle import format_time
from vault.tenants.models import Membership, Role

PLATFORM = ("platform", "platform")
PRIVILEGED = (Role.OWNER, Role.CUSTODIAN)
INACTIVE_DAYS = 90  # PCI-DSS 8.2.6
TOKEN_UNUSED_DAYS = 90  # a live credential nobody used for this long is an unwatched door

# PCI-DSS 8.2.2: local parts of addresses that name a function or a group, not a person. A
# member with one of these is a shared account unless a waiver documents the exception. Trailing
# digits and separators are ignored ("admin2", "test_") and so is a "+tag".
# fmt: off
GENERIC_LOCAL_PARTS = frozenset({
    "admin", "administrator", "root", "sysadmin", "system", "shared", "team", "test", "tester",
    "demo", "guest", "user", "info", "support", "helpdesk", "service", "ops", "operations", "it",
    "security", "noreply", "no-reply", "contact", "office", "sales", "billing", "finance",
    "webmaster", "postmaster", "hostmaster",
})
# fmt: on


def _time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


@dataclass(frozen=True)
class _Member:
    user_id: int
    email: str
    role: str
    since: datetime  # the membership row's creation
    is_active: bool
    is_superuser: bool
    last_login: datetime | None
    date_joined: datetime


def _members(ctx: Context) -> list[_Member]:
    """The tenant's members, read once per run (by e-mail)."""
    if "iam.members" not in ctx.shared:
        rows = (
            Membership.objects.filter(tenant=ctx.tenant)
            .order_by("user__email")
            .values_list(
                "user_id",
                "user__email",
                "role",
                "created_at",
                "user__is_active",
                "user__is_superuser",
                "user__last_login",
                "user__date_joined",
            )
        )
        ctx.shared["iam.members"] = [_Member(*row) for row in rows]
    members: list[_Member] = ctx.shared["iam.members"]
    return members


# --- IAM-001 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grant:
    """The latest member.* audit event for one person: the role it left them with."""

    type: str
    role: str | None  # None: the event removed them
    previous: str | None
    actor_kind: str


def _grant_events(ctx: Context, emails: set[str]) -> dict[str, _Grant]:
    """The last member.add / member.role.change / member.remove event per e-mail (few rows)."""
    from vault.audit.models import AuditEvent
    from vault.audit.services import log_of

    found: dict[str, _Grant] = {}
    rows = (
        AuditEvent.objects.filter(
            log=log_of(ctx.tenant),
            type__in=("member.add", "member.role.change", "member.remove"),
            resource_type="member",
            resource_id__in=emails,
        )
        .order_by("time", "pk")
        .values_list("resource_id", "type", "actor_kind", "leaf")
    )
    for email, kind, actor_kind, leaf in rows.iterator(chunk_size=500):
        details = json.loads(bytes(leaf))["details"]
        if kind == "member.add":
            found[email] = _Grant(kind, details.get("role"), None, actor_kind)
        elif kind == "member.role.change":
            found[email] = _Grant(kind, details.get("to"), details.get("from"), actor_kind)
        else:
            found[email] = _Grant(kind, None, details.get("role"), actor_kind)
    return found


def _executed_grants(ctx: Context) -> dict[tuple[str, str], list[tuple[datetime, int]]]:
    """Executed dual-control appointments: (e-mail, role) -> [(finished at, request id)]."""
    from vault.lifecycle.approvals import GRANTS
    from vault.lifecycle.models import ApprovalRequest, RequestState

    found: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
    rows = ApprovalRequest.objects.filter(
        tenant=ctx.tenant, state=RequestState.EXECUTED, action__in=list(GRANTS)
    ).values_list("pk", "action", "params", "finished_at")
    for pk, action, params, finished_at in rows:
        email = str((params or {}).get("email", "")).lower()
        if finished_at is not None:
            found.setdefault((email, GRANTS[action]), []).append((finished_at, pk))
    return found


def _history_starts(ctx: Context) -> datetime | None:
    """The time of the oldest event still kept in the tenant's log (retention prunes)."""
    from vault.audit.models import AuditEvent
    from vault.audit.services import log_of

    return (
        AuditEvent.objects.filter(log=log_of(ctx.tenant))
        .order_by("pk")
        .values_list("time", flat=True)
        .first()
    )


def _direct_grants(members: list[_Member]) -> dict[int, list[str]]:
    """Django permissions held outside the role model, per user id."""
    ids = [m.user_id for m in members]
    perms = Counter(
        User.user_permissions.through.objects.filter(user_id__in=ids).values_list(
            "user_id", flat=True
        )
    )
    groups = Counter(
        User.groups.through.objects.filter(user_id__in=ids).values_list("user_id", flat=True)
    )
    found: dict[int, list[str]] = {}
    for m in members:
        what = []
        if m.is_superuser:
            what.append("Django superuser")
        if perms[m.user_id]:
            what.append(f"{perms[m.user_id]} direct permission(s)")
        if groups[m.user_id]:
            what.append(f"{groups[m.user_id]} group(s)")
        if what:
            found[m.user_id] = what
    return found


@register
class RoleModelOnly(Check):
    """IAM-001: access only through one tenant role; owners and custodians under dual control."""

    id = "IAM-001"
    title = (
        "Every member holds one role of the model, no direct permissions, and owner and "
        "custodian roles were granted under dual control"
    )
    description = (
        "For each member: the role is one of owner, custodian, member, auditor; the user holds "
        "no Django permissions, groups or superuser flag; the role agrees with the audit log's "
        "last member event for the person; and an owner or custodian role is backed by an "
        "executed dual-control request (member.owner.add / member.custodian.add) finished after "
        "the membership began, by the operator's command line (a tenant's first owner), or by "
        "the demotion of an owner."
    )
    risk = (
        "Privileges granted outside the role model or without a second person's approval give "
        "one person key-management power nobody agreed to."
    )
    severity = "high"
    scope = "user"
    requirements = ("7.2.1", "7.2.2", "7.2.3")
    remediation = (
        "Remove direct grants in the admin (user permissions, groups, superuser); set the role "
        "back with PATCH /api/v1/members/<id>/ and, where the person needs owner or custodian, "
        "request it under dual control (POST /api/v1/approvals/ with action "
        "member.owner.add or member.custodian.add)."
    )
    evidence_captured = (
        "The role matrix: each member's role, direct grants, the basis of each privileged grant "
        "(approval request id, operator, demotion) and the last audit event's role."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        members = _members(ctx)
        if not members:
            return
        direct = _direct_grants(members)
        events = _grant_events(ctx, {m.email for m in members})
        approvals = _executed_grants(ctx)
        history = _history_starts(ctx)
        verdicts = []
        for m in members:
            problem = self._role_problem(m, events.get(m.email), direct.get(m.user_id))
            problems = [problem] if problem else []
            basis, unknown = "", False
            if m.role in PRIVILEGED and not problems:
                basis = self._privileged_basis(m, events.get(m.email), approvals)
                unknown = not basis and history is not None and m.since < history
                if not basis and not unknown:
                    problems.append(
                        f"no executed dual-control request, operator command or owner demotion "
                        f"backs the {m.role} role"
                    )
            verdicts.append((m, problems, basis, unknown))
        digest = ctx.evidence(
            "role_matrix",
            [
                {
                    "user": m.email,
                    "role": m.role,
                    "direct_grants": direct.get(m.user_id, []),
                    "grant_basis": basis,
                    "audit_role": getattr(events.get(m.email), "role", None),
                    "problems": problems,
                }
                for m, problems, basis, _ in verdicts
            ],
        )
        for m, problems, basis, unknown in verdicts:
            if problems:
                yield self.failed(
                    "user",
                    m.email,
                    f"Member {m.email} ({m.role}): {'; '.join(problems)}.",
                    digest,
                    role=m.role,
                    problems=problems,
                )
            elif unknown:
                yield self.manual(
                    "user",
                    m.email,
                    f"Member {m.email} became {m.role} before the retained audit history "
                    "begins and no approval request backs it; check the archived log.",
                    digest,
                    role=m.role,
                )
            else:
                how = f" ({basis})" if basis else ""
                yield self.passed(
                    "user",
                    m.email,
                    f"Member {m.email} holds the {m.role} role only{how}.",
                    digest,
                    role=m.role,
                    basis=basis,
                )

    @staticmethod
    def _role_problem(m: _Member, last: _Grant | None, direct: list[str] | None) -> str:
        if m.role not in Role.values:
            return f"the role {m.role!r} is not one of the model's roles"
        if direct:
            return "holds " + ", ".join(direct) + " outside the role model"
        if last is not None and last.role != m.role:
            said = f"gives {last.role}" if last.role else "removed the person"
            return (
                f"the audit log's last member event ({last.type}) {said}, so the role was "
                "changed outside the product"
            )
        return ""

    @staticmethod
    def _privileged_basis(
        m: _Member,
        last: _Grant | None,
        approvals: dict[tuple[str, str], list[tuple[datetime, int]]],
    ) -> str:
        backing = [pk for at, pk in approvals.get((m.email.lower(), m.role), []) if at >= m.since]
        if backing:
            return f"dual control, approval request {max(backing)}"
        if last is not None and last.actor_kind == "system" and last.role == m.role:
            return "granted by the platform operator's command"
        if last is not None and last.previous == Role.OWNER and m.role == Role.CUSTODIAN:
            return "demoted from owner"
        return ""


# --- IAM-004 ------------------------------------------------------------------------------------


def generic_address(email: str) -> bool:
    """Whether an address names a function or a group rather than a person (PCI-DSS 8.2.2)."""
    local = email.lower().split("@", 1)[0].split("+", 1)[0]
    return re.sub(r"[0-9._-]+$", "", local) in GENERIC_LOCAL_PARTS


@register
class UniqueIds(Check):
    """IAM-004: every member is one identifiable person; people's tokens name the person."""

    id = "IAM-004"
    title = "Every member is a named person with a unique ID, and every person's token names them"
    description = (
        "Members whose address names a function or a group (admin@, support@, test@, ...: the "
        "documented list GENERIC_LOCAL_PARTS in compliance/checks/iam.py) are shared accounts; "
        "addresses that differ only by case are one person twice. Live API tokens created "
        "through a person's token must act for a person (user set)."
    )
    risk = "Actions by a shared or duplicated account cannot be traced to one person."
    severity = "high"
    scope = "user"
    requirements = ("8.2.1", "8.2.2")
    remediation = (
        "Replace the shared account with named members (POST /api/v1/members/) and remove it "
        "(DELETE /api/v1/members/<id>/); merge case duplicates; revoke tokens that act for no "
        "person (DELETE /api/v1/tokens/<id>/). A documented exception is recorded as a waiver."
    )
    evidence_captured = "The member list with the generic and duplicate flags, and token owners."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from django.db.models import Count
        from django.db.models.functions import Lower

        members = _members(ctx)
        lowered = {m.email.lower() for m in members}
        duplicated = set(
            User.objects.annotate(address=Lower("email"))
            .filter(address__in=lowered)
            .values("address")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .values_list("address", flat=True)
        )
        rows = [
            {
                "user": m.email,
                "generic": generic_address(m.email),
                "duplicate": m.email.lower() in duplicated,
            }
            for m in members
        ]
        tokens = self._tokens(ctx)
        digest = ctx.evidence("member_ids", {"members": rows, "tokens": tokens})
        for row in rows:
            email, problems = row["user"], []
            if row["generic"]:
                problems.append("its address names a function or group, not a person")
            if row["duplicate"]:
                problems.append("another account has the same address in a different case")
            if problems:
                yield self.failed(
                    "user", email, f"Member {email}: {'; '.join(problems)}.", digest, **row
                )
            else:
                yield self.passed(
                    "user", email, f"Member {email} is a named, unique account.", digest
                )
        for token in tokens:
            if token["orphaned"]:
                yield self.failed(
                    "token",
                    token["prefix"],
                    f"Token {token['prefix']} was created through {token['parent_for']}'s token "
                    "but acts for no person.",
                    digest,
                )
            else:
                who = token["for"] or "an integration (issued by the platform operator)"
                yield self.passed(
                    "token", token["prefix"], f"Token {token['prefix']} acts for {who}.", digest
                )

    @staticmethod
    def _tokens(ctx: Context) -> list[dict[str, Any]]:
        from vault.tokens.models import ApiToken

        rows = (
            ApiToken.objects.filter(
                tenant=ctx.tenant, revoked_at__isnull=True, expires_at__gt=ctx.now
            )
            .order_by("key_id")
            .values_list("key_id", "user__email", "parent__user__email")
        )
        return [
            {
                "prefix": f"cvt_{key_id}",
                "for": email or "",
                "parent_for": parent_email or "",
                "orphaned": email is None and parent_email is not None,
            }
            for key_id, email, parent_email in rows
        ]


# --- IAM-005 ------------------------------------------------------------------------------------


@register
class InactiveAccountsDisabled(Check):
    """IAM-005: no enabled member has been idle for more than 90 days."""

    id = "IAM-005"
    title = "No enabled member account has been inactive for more than 90 days"
    description = (
        "A member's last activity is the later of the last console sign-in and the last use of "
        "one of their API tokens (the date the account was made, if neither). An enabled "
        "account whose last activity is more than 90 days before the run fails; a disabled "
        "account (is_active false) passes."
    )
    risk = "Forgotten accounts are taken over without anyone noticing."
    scope = "user"
    requirements = ("8.2.6",)
    remediation = (
        "Remove the member (DELETE /api/v1/members/<id>/) or disable the account in the admin "
        "(Users: clear 'active'); the person signs in again to stay active."
    )
    evidence_captured = "Each member's last sign-in, last token use and account state."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from vault.tokens.models import ApiToken

        members = _members(ctx)
        token_use = dict(
            ApiToken.objects.filter(user_id__in=[m.user_id for m in members])
            .values("user_id")
            .annotate(last=Max("last_used_at"))
            .values_list("user_id", "last")
        )
        cutoff = ctx.days_ago(INACTIVE_DAYS)
        rows = []
        for m in members:
            seen = [t for t in (m.last_login, token_use.get(m.user_id)) if t is not None]
            last = max(seen) if seen else m.date_joined
            rows.append((m, last))
        digest = ctx.evidence(
            "last_activity",
            [
                {
                    "user": m.email,
                    "active": m.is_active,
                    "last_login": _time(m.last_login),
                    "last_token_use": _time(token_use.get(m.user_id)),
                    "last_activity": _time(last),
                }
                for m, last in rows
            ],
        )
        for m, last in rows:
            days = (ctx.now - last).days
            if not m.is_active:
                yield self.passed(
                    "user", m.email, f"Member {m.email}'s account is disabled.", digest
                )
            elif last < cutoff:
                yield self.failed(
                    "user",
                    m.email,
                    f"Member {m.email} has been inactive for {days} days (more than "
                    f"{INACTIVE_DAYS}) and the account is still enabled.",
                    digest,
                    last_activity=_time(last),
                    days=days,
                )
            else:
                yield self.passed(
                    "user",
                    m.email,
                    f"Member {m.email} was last active {days} days ago.",
                    digest,
                    last_activity=_time(last),
                )


# --- IAM-006, IAM-007, IAM-008: settings ----------------------------------------------------------


def _settings_outcome(
    check: Check, ctx: Context, kind: str, facts: dict[str, Any], problems: list[str], good: str
) -> Outcome:
    digest = ctx.evidence(kind, {**facts, "problems": problems})
    if problems:
        return check.failed(*PLATFORM, "The platform: " + "; ".join(problems) + ".", digest)
    return check.passed(*PLATFORM, good, digest)


@register
class IdleSessionsEnd(Check):
    """IAM-006: console sessions end after at most 15 idle minutes."""

    id = "IAM-006"
    title = "Console sessions end after at most 15 idle minutes"
    description = (
        "Sessions are server-side (SessionMiddleware in MIDDLEWARE) and expire "
        "SESSION_COOKIE_AGE seconds after the last request (SESSION_SAVE_EVERY_REQUEST renews "
        "the expiry on every request). Passes when both are set, SESSION_COOKIE_AGE is at most "
        "900 seconds and VAULT_SESSION_IDLE_MINUTES is at most 15."
    )
    risk = "An unattended, signed-in browser gives anyone at it the person's access."
    scope = "platform"
    requirements = ("8.2.8",)
    remediation = (
        "Set VAULT_SESSION_IDLE_MINUTES to 15 or less and keep vault/settings.py's "
        "SessionMiddleware, SESSION_SAVE_EVERY_REQUEST = True and SESSION_COOKIE_AGE derived "
        "from it; redeploy."
    )
    evidence_captured = "The session settings and whether the session middleware is installed."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        middleware = "django.contrib.sessions.middleware.SessionMiddleware"
        facts = {
            "session_middleware": middleware in settings.MIDDLEWARE,
            "session_engine": settings.SESSION_ENGINE,
            "session_cookie_age": settings.SESSION_COOKIE_AGE,
            "save_every_request": settings.SESSION_SAVE_EVERY_REQUEST,
            "idle_minutes": settings.VAULT_SESSION_IDLE_MINUTES,
        }
        problems = []
        if not facts["session_middleware"]:
            problems.append(f"{middleware} is not in MIDDLEWARE")
        if not facts["save_every_request"]:
            problems.append("SESSION_SAVE_EVERY_REQUEST is off, so sessions expire by age only")
        if settings.SESSION_COOKIE_AGE > 15 * 60:
            problems.append(f"SESSION_COOKIE_AGE is {settings.SESSION_COOKIE_AGE} s (over 900)")
        if settings.VAULT_SESSION_IDLE_MINUTES > 15:
            problems.append(
                f"VAULT_SESSION_IDLE_MINUTES is {settings.VAULT_SESSION_IDLE_MINUTES} (over 15)"
            )
        minutes = settings.SESSION_COOKIE_AGE // 60
        good = f"The platform ends console sessions after {minutes} idle minutes."
        yield _settings_outcome(self, ctx, "session_settings", facts, problems, good)


@register
class LockoutAfterFailures(Check):
    """IAM-007: at most 10 failed sign-ins lock the account for at least 30 minutes."""

    id = "IAM-007"
    title = "Accounts lock after at most 10 failed sign-in attempts, for at least 30 minutes"
    description = (
        "Reads VAULT_LOCKOUT_THRESHOLD and VAULT_LOCKOUT_MINUTES, which "
        "vault.accounts.services.login_failure_record applies to every wrong password and every "
        "wrong second-factor code (console and admin share the console's sign-in). The "
        "behaviour itself is proved by tests/console/test_sign_in.py and the IAM-007 tests."
    )
    risk = "Unlimited guessing eventually finds a password."
    severity = "high"
    scope = "platform"
    requirements = ("8.3.4",)
    remediation = (
        "Set VAULT_LOCKOUT_THRESHOLD to 10 or less and VAULT_LOCKOUT_MINUTES to 30 or more; "
        "redeploy."
    )
    evidence_captured = "The lockout settings and the API's failed-authentication throttle."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        threshold = settings.VAULT_LOCKOUT_THRESHOLD
        minutes = settings.VAULT_LOCKOUT_MINUTES
        facts = {
            "threshold": threshold,
            "minutes": minutes,
            "api_failure_limit": settings.VAULT_AUTH_FAILURE_LIMIT,
            "api_failure_window_seconds": settings.VAULT_AUTH_FAILURE_WINDOW,
        }
        problems = []
        if not 1 <= threshold <= 10:
            problems.append(f"VAULT_LOCKOUT_THRESHOLD is {threshold} (more than 10 attempts)")
        if minutes < 30:
            problems.append(f"VAULT_LOCKOUT_MINUTES is {minutes} (under 30)")
        good = f"The platform locks an account for {minutes} minutes after {threshold} failures."
        yield _settings_outcome(self, ctx, "lockout_settings", facts, problems, good)


@register
class PasswordRules(Check):
    """IAM-008: passwords of 12+ characters with letters and digits, none of the last 4 reused."""

    id = "IAM-008"
    title = (
        "Passwords have at least 12 characters with letters and digits, and differ from the last 4"
    )
    description = (
        "Instantiates AUTH_PASSWORD_VALIDATORS as Django does and looks for the minimum-length "
        "validator (min_length at least 12) and the project's LettersAndDigitsValidator and "
        "PasswordHistoryValidator (history at least 4)."
    )
    risk = "Short, simple or recycled passwords are guessed or reused from old breaches."
    severity = "high"
    scope = "platform"
    requirements = ("8.3.6", "8.3.7")
    remediation = (
        "Keep vault/settings.py's AUTH_PASSWORD_VALIDATORS and set VAULT_PASSWORD_MIN_LENGTH "
        "(12 or more) and VAULT_PASSWORD_HISTORY (4 or more); redeploy."
    )
    evidence_captured = "The configured validators with their parameters."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        configured = cast(list[dict[str, Any]], settings.AUTH_PASSWORD_VALIDATORS)
        validators = password_validation.get_password_validators(configured)
        min_length = max(
            (
                v.min_length
                for v in validators
                if isinstance(v, password_validation.MinimumLengthValidator)
            ),
            default=0,
        )
        history = max(
            (v.history for v in validators if isinstance(v, PasswordHistoryValidator)), default=0
        )
        composition = any(isinstance(v, LettersAndDigitsValidator) for v in validators)
        facts = {
            "validators": [f"{type(v).__module__}.{type(v).__qualname__}" for v in validators],
            "min_length": min_length,
            "letters_and_digits": composition,
            "history": history,
        }
        problems = []
        if min_length < 12:
            problems.append(f"the minimum password length is {min_length} (under 12)")
        if not composition:
            problems.append("no validator requires both letters and digits")
        if history < 4:
            problems.append(f"new passwords are compared with the last {history} (under 4)")
        good = (
            f"The platform requires {min_length}+ characters with letters and digits, and none "
            f"of the last {history} passwords."
        )
        yield _settings_outcome(self, ctx, "password_rules", facts, problems, good)


# --- IAM-009 ------------------------------------------------------------------------------------


def _mfa_enforcement_problems() -> tuple[dict[str, Any], list[str]]:
    """Whether the console and the admin demand a verified second factor."""
    from django.contrib import admin
    from django_otp.admin import OTPAdminSite

    try:
        verify_url = reverse("console:verify")
    except NoReverseMatch:
        verify_url = ""
    middleware = list(settings.MIDDLEWARE)
    otp = "django_otp.middleware.OTPMiddleware"
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    facts = {
        "otp_middleware": otp in middleware,
        "otp_after_authentication": otp in middleware
        and auth in middleware
        and middleware.index(otp) > middleware.index(auth),
        "totp_app": "django_otp.plugins.otp_totp" in settings.INSTALLED_APPS,
        "admin_requires_otp": isinstance(admin.site, OTPAdminSite),
        "console_verify_url": verify_url,
    }
    problems = []
    if not facts["otp_after_authentication"]:
        problems.append(f"{otp} is not in MIDDLEWARE after {auth}")
    if not facts["totp_app"]:
        problems.append("django_otp.plugins.otp_totp is not installed")
    if not facts["admin_requires_otp"]:
        problems.append("the admin site does not require a verified second factor")
    if not verify_url:
        problems.append("the console has no second-factor step (console:verify)")
    return facts, problems


@register
class MfaCoverage(Check):
    """IAM-009: every active member has an authenticator, and sign-in demands it."""

    id = "IAM-009"
    title = "Every active member has a confirmed authenticator and every console sign-in demands it"
    description = (
        "Platform: django-otp's middleware runs after authentication, the TOTP plugin is "
        "installed, the admin is an OTPAdminSite and the console's verification step exists. "
        "Per member: an active account has a confirmed TOTP device. Members added who never "
        "enrolled fail until they do (the console makes them enrol at their first sign-in)."
    )
    risk = "A stolen password alone opens the vault."
    severity = "high"
    scope = "user"
    requirements = ("8.4.1", "8.4.2", "8.4.3")
    remediation = (
        "Have the member sign in to the console and enrol an authenticator app "
        "(/console/login/enrol/), or remove the member; keep OTPMiddleware and the OTP admin "
        "site in the deployment."
    )
    evidence_captured = "The MFA settings, and each member's enrolment state."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from django_otp.plugins.otp_totp.models import TOTPDevice

        facts, problems = _mfa_enforcement_problems()
        yield _settings_outcome(
            self,
            ctx,
            "mfa_enforcement",
            facts,
            problems,
            "The console and the admin demand a verified second factor after the password.",
        )
        members = _members(ctx)
        enrolled = set(
            TOTPDevice.objects.filter(
                user_id__in=[m.user_id for m in members], confirmed=True
            ).values_list("user_id", flat=True)
        )
        digest = ctx.evidence(
            "mfa_enrolment",
            [
                {"user": m.email, "active": m.is_active, "totp": m.user_id in enrolled}
                for m in members
            ],
        )
        for m in members:
            if not m.is_active:
                yield self.not_applicable(
                    "user", m.email, f"Member {m.email}'s account is disabled.", digest
                )
            elif m.user_id in enrolled:
                yield self.passed(
                    "user", m.email, f"Member {m.email} has a confirmed authenticator.", digest
                )
            else:
                yield self.failed(
                    "user",
                    m.email,
                    f"Member {m.email} is active but has no confirmed authenticator app.",
                    digest,
                )


# --- IAM-011 ------------------------------------------------------------------------------------


@register
class MachineCredentials(Check):
    """IAM-011: live API tokens are short-lived, rotated and in use."""

    id = "IAM-011"
    title = "Live API tokens expire within the maximum lifetime, are younger than it and in use"
    description = (
        "For each live token (not revoked, not expired): its lifetime (expiry minus creation) "
        "and its age are at most VAULT_TOKEN_MAX_DAYS, so integration tokens (acting for no "
        "person) are replaced at least that often; and it was used (or, never used, created) "
        "within the last 90 days."
    )
    risk = "Long-lived or forgotten credentials leak and stay usable."
    severity = "high"
    scope = "tenant"
    requirements = ("8.6.3",)
    remediation = (
        "Revoke the token (DELETE /api/v1/tokens/<id>/) and issue a new one with a lifetime "
        "within VAULT_TOKEN_MAX_DAYS (POST /api/v1/tokens/, or manage.py token_create for "
        "integrations)."
    )
    evidence_captured = "Each live token's prefix, owner, creation, expiry and last use."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        from vault.tokens.models import ApiToken

        max_days = settings.VAULT_TOKEN_MAX_DAYS
        rows = list(
            ApiToken.objects.filter(
                tenant=ctx.tenant, revoked_at__isnull=True, expires_at__gt=ctx.now
            )
            .order_by("key_id")
            .values_list("key_id", "user__email", "created_at", "expires_at", "last_used_at")
        )
        digest = ctx.evidence(
            "live_tokens",
            {
                "max_days": max_days,
                "tokens": [
                    {
                        "prefix": f"cvt_{key_id}",
                        "for": email or "",
                        "created_at": _time(created),
                        "expires_at": _time(expires),
                        "last_used_at": _time(used),
                    }
                    for key_id, email, created, expires, used in rows
                ],
            },
        )
        limit = timedelta(days=max_days)
        for key_id, email, created, expires, used in rows:
            prefix = f"cvt_{key_id}"
            kind = "integration token" if email is None else f"token of {email}"
            problems = []
            if expires - created > limit:
                problems.append(
                    f"it expires {(expires - created).days} days after creation "
                    f"(more than {max_days})"
                )
            if ctx.now - created > limit:
                problems.append(f"it is {(ctx.now - created).days} days old and was never replaced")
            idle = ctx.now - (used or created)
            if idle > timedelta(days=TOKEN_UNUSED_DAYS):
                problems.append(f"it has not been used for {idle.days} days")
            if problems:
                yield self.failed(
                    "token",
                    prefix,
                    f"Live {kind} {prefix}: {'; '.join(problems)}.",
                    digest,
                    problems=problems,
                )
            else:
                yield self.passed(
                    "token",
                    prefix,
                    f"Live {kind} {prefix} expires {(expires - created).days} days after "
                    f"creation and was used or issued within {TOKEN_UNUSED_DAYS} days.",
                    digest,
                )
