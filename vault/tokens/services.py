"""Create, check and revoke API tokens.

Token format: ``cvt_<key_id>_<secret>``. The ``cvt_`` prefix lets secret scanners find leaked
tokens (the pattern is documented in docs/api.md); ``key_id`` (12 lowercase hex characters) finds
the row, and the HMAC of the whole token is compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from vault.accounts.models import User
from vault.audit.services import audit_record
from vault.tenants.models import Membership, Role, Tenant, role_covers
from vault.tokens.models import ApiToken

TOKEN_PREFIX = "cvt_"  # noqa: S105  (the public prefix, not a secret)
TOKEN_PATTERN = re.compile(r"^cvt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# Recording every use would turn each read into a write; once a minute is enough for audits of
# stale tokens, and the audit log records every use in full.
LAST_USED_GRANULARITY = timedelta(seconds=60)
MAX_PARENT_DEPTH = 10


class TokenError(Exception):
    """Base of the token services' errors; ``code`` is the stable API error code."""

    code = "token_error"


class RoleNotAllowed(TokenError):
    """The creator cannot hand out the requested role."""

    code = "role_not_allowed"


class ChainTooDeep(TokenError):
    """The creating token is itself at the end of the longest chain a token may have."""

    code = "token_chain_too_deep"


class InvalidLifetime(TokenError):
    """The requested lifetime is outside what the platform allows."""

    code = "invalid_lifetime"


@dataclass(frozen=True)
class IssuedToken:
    """A token as created: the row, and the clear token that is shown exactly once."""

    token: ApiToken
    clear: str


def token_digest(clear: str) -> str:
    """The keyed hash under which a token is stored."""
    return salted_hmac(
        "ciphervault.tokens", clear, secret=settings.VAULT_TOKEN_HMAC_KEY, algorithm="sha256"
    ).hexdigest()


def _creator_role(*, tenant: Tenant, user: User | None, parent: ApiToken | None) -> str | None:
    """The role that bounds what a creator may hand out; None means a platform operator."""
    if parent is not None:
        return parent.role
    if user is not None:
        membership = Membership.objects.filter(tenant=tenant, user=user).first()
        return membership.role if membership else ""
    return None


def _depth(token: ApiToken) -> int:
    """How many tokens stand in the chain ending at ``token`` (itself included)."""
    depth, current = 1, token
    while current.parent_id is not None and depth <= MAX_PARENT_DEPTH:
        current = ApiToken.objects.only("parent_id").get(pk=current.parent_id)
        depth += 1
    return depth


@transaction.atomic
def token_create(
    *,
    tenant: Tenant,
    name: str,
    role: str,
    user: User | None = None,
    parent: ApiToken | None = None,
    lifetime_days: int | None = None,
) -> IssuedToken:
    """Create a token for ``tenant`` with ``role``.

    ``user`` is the person the token acts for and ``parent`` the token that asked for it through
    the API. With neither, the caller is a platform operator (``manage.py token_create``).

    Raises:
        RoleNotAllowed: the role is wider than the creator's.
        InvalidLifetime: the lifetime is not between 1 day and ``VAULT_TOKEN_MAX_DAYS``.
    """
    if role not in Role.values:
        raise RoleNotAllowed(f"unknown role {role!r}")
    if parent is not None and _depth(parent) >= MAX_PARENT_DEPTH:
        raise ChainTooDeep(f"tokens may be nested at most {MAX_PARENT_DEPTH} deep")
    if parent is not None and user is None:
        user = parent.user
    bound = _creator_role(tenant=tenant, user=user, parent=parent)
    if bound is not None and not role_covers(bound, role):
        raise RoleNotAllowed(f"a {bound or 'non-member'} cannot create a {role} token")
    days = settings.VAULT_TOKEN_DEFAULT_DAYS if lifetime_days is None else lifetime_days
    if not 1 <= days <= settings.VAULT_TOKEN_MAX_DAYS:
        raise InvalidLifetime(
            f"a token lives between 1 and {settings.VAULT_TOKEN_MAX_DAYS} days; asked for {days}"
        )
    key_id = secrets.token_hex(6)
    clear = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    now = timezone.now()
    with transaction.atomic():
        token = ApiToken.objects.create(
            tenant=tenant,
            name=name,
            role=role,
            key_id=key_id,
            digest=token_digest(clear),
            user=user,
            parent=parent,
            created_at=now,
            expires_at=now + timedelta(days=days),
        )
        audit_record(
            "token.create",
            tenant=tenant,
            resource_type="token",
            resource_id=token.prefix,
            details={
                "role": role,
                "for": user.email if user else "",
                "days": days,
                "parent": parent.prefix if parent else "",
            },
        )
    return IssuedToken(token=token, clear=clear)


def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token (idempotent). Tokens it created stop working with it."""
    if token.revoked_at is None:
        with transaction.atomic():
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_record(
                "token.revoke", tenant=token.tenant, resource_type="token", resource_id=token.prefix
            )
    return token


class TokenRejected(Exception):
    """A presented token is not valid; ``reason`` is for logs, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _still_entitled(token: ApiToken, now: datetime) -> bool:
    """Whether the chain of creators behind a token still grants its role."""
    current: ApiToken | None = token
    for _ in range(MAX_PARENT_DEPTH):
        assert current is not None  # noqa: S101  (loop invariant)
        if not current.is_live(now) or not current.tenant.is_active:
            return False
        if current.user is not None:
            if not current.user.is_active:
                return False
            membership = Membership.objects.filter(
                tenant_id=current.tenant_id, user=current.user
            ).first()
            if membership is None or not role_covers(membership.role, current.role):
                return False
        if current.parent_id is None:
            return True
        current = current.parent
        if current is None or not role_covers(current.role, token.role):
            return False
    return False


def _valid_ip(value: str | None) -> str | None:
    """The address if it parses as one (a unix-socket peer has none), else None."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def token_authenticate(*, clear: str, ip: str | None = None) -> ApiToken:
    """Return the live token for a presented bearer string.

    Raises:
        TokenRejected: malformed, unknown, wrong secret, expired, revoked, or no longer backed
            by its creator's role. Callers answer all of these the same way.
    """
    match = TOKEN_PATTERN.match(clear)
    if match is None:
        # Compute a digest anyway, so a malformed token costs the same as a wrong one.
        token_digest(clear)
        raise TokenRejected("malformed")
    token = (
        ApiToken.objects.select_related("tenant", "user", "parent")
        .filter(key_id=match.group(1))
        .first()
    )
    presented = token_digest(clear)
    if token is None:
        hmac.compare_digest(presented, "0" * 64)
        raise TokenRejected("unknown key id")
    if not hmac.compare_digest(presented, token.digest):
        raise TokenRejected("wrong secret")
    now = timezone.now()
    ip = _valid_ip(ip)
    if not _still_entitled(token, now):
        raise TokenRejected("expired, revoked or no longer entitled")
    if (
        token.last_used_at is None
        or now - token.last_used_at >= LAST_USED_GRANULARITY
        or (ip and ip != token.last_used_ip)
    ):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now, last_used_ip=ip)
        token.last_used_at, token.last_used_ip = now, ip
    return token
