"""Writes for tenants and memberships."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from vault.accounts.models import User
from vault.audit.services import audit_record
from vault.tenants.models import Membership, Role, Tenant, role_covers


class TenantError(Exception):
    """Base of the tenant services' errors; ``code`` is the stable API error code."""

    code = "tenant_error"


class LastOwner(TenantError):
    """The change would leave a tenant without an owner."""

    code = "last_owner"


class AlreadyMember(TenantError):
    """The user already holds a membership in this tenant."""

    code = "already_member"


def tenant_create(*, slug: str, name: str = "") -> Tenant:
    """Create a tenant; the slug is validated before anything is written."""
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    with transaction.atomic():
        tenant.save()
        audit_record("tenant.create", resource_type="tenant", resource_id=slug)
        audit_record("audit.log.start", tenant=tenant, resource_type="tenant", resource_id=slug)
    return tenant


def tenant_update(
    *,
    tenant: Tenant,
    deduplicate: bool | None = None,
    kek_cryptoperiod_days: int | None = None,
) -> Tenant:
    """Change a tenant's settings (only those given). Deduplication applies to versions stored
    from now on; content already stored keeps its own keys. A cryptoperiod is capped by the
    platform's ``VAULT_KEK_CRYPTOPERIOD_DAYS``."""
    changes: dict[str, Any] = {}
    if deduplicate is not None:
        changes["deduplicate"] = deduplicate
    if kek_cryptoperiod_days is not None:
        if not 1 <= kek_cryptoperiod_days <= settings.VAULT_KEK_CRYPTOPERIOD_DAYS:
            raise ValueError(
                f"a cryptoperiod is 1 to {settings.VAULT_KEK_CRYPTOPERIOD_DAYS} days here"
            )
        changes["kek_cryptoperiod_days"] = kek_cryptoperiod_days
    if not changes:
        return tenant
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(**changes)
        audit_record(
            "tenant.update",
            tenant=tenant,
            resource_type="tenant",
            resource_id=tenant.slug,
            details={
                name: {"from": getattr(tenant, name), "to": value}
                for name, value in changes.items()
            },
        )
    for name, value in changes.items():
        setattr(tenant, name, value)
    return tenant


def tenant_cryptoperiod_days(tenant: Tenant) -> int:
    """The cryptoperiod that applies to the tenant's wrapping keys."""
    ceiling = settings.VAULT_KEK_CRYPTOPERIOD_DAYS
    return min(tenant.kek_cryptoperiod_days or ceiling, ceiling)


def user_get_or_create(*, email: str) -> tuple[User, bool]:
    """Find a user by e-mail, or create one with no usable password yet."""
    user_model = get_user_model()
    normalized = user_model.objects.normalize_email(email).lower()
    user = user_model.objects.filter(email=normalized).first()
    if user is not None:
        return user, False
    return user_model.objects.create_user(email=normalized), True


@transaction.atomic
def member_add(*, tenant: Tenant, email: str, role: str) -> tuple[Membership, bool]:
    """Add a user (created if new) to a tenant with a role; also say whether the user is new."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}")
    user, created = user_get_or_create(email=email)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise AlreadyMember(f"{user.email} is already a member of {tenant.slug}")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    audit_record(
        "member.add",
        tenant=tenant,
        resource_type="member",
        resource_id=user.email,
        # Not whether the address had an account: the tenant's owners and auditors read this
        # log, and that would tell them the person is known elsewhere, in another tenant. Nor
        # in the platform's log: compliance evidence shows every tenant that log's counts.
        details={"role": role},
    )
    return membership, created


def _owners_left(membership: Membership) -> int:
    """Owners other than this one, counted under a lock on the tenant row.

    The lock serializes concurrent owner changes of one tenant, so two owners demoting each
    other at once cannot both see the other as the one who stays.
    """
    Tenant.objects.select_for_update().filter(pk=membership.tenant_id).first()
    return (
        Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER)
        .exclude(pk=membership.pk)
        .count()
    )


def _revoke_tokens_beyond(membership: Membership, role: str | None) -> None:
    """Revoke the person's tokens in the tenant that ``role`` (None: no role) no longer covers.

    The per-use check already refuses them; revoking makes it final, so that re-adding or
    re-promoting the person does not bring old, possibly leaked, tokens back.
    """
    from vault.tokens.models import ApiToken

    live = ApiToken.objects.filter(
        tenant_id=membership.tenant_id, user_id=membership.user_id, revoked_at__isnull=True
    )
    doomed = [t.pk for t in live if role is None or not role_covers(role, t.role)]
    ApiToken.objects.filter(pk__in=doomed).update(revoked_at=timezone.now())


@transaction.atomic
def member_set_role(*, membership: Membership, role: str) -> Membership:
    """Change a member's role; a tenant always keeps at least one owner."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}")
    if membership.role == Role.OWNER and role != Role.OWNER and _owners_left(membership) == 0:
        raise LastOwner("a tenant must keep at least one owner")
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _revoke_tokens_beyond(membership, role)
    audit_record(
        "member.role.change",
        tenant=membership.tenant,
        resource_type="member",
        resource_id=membership.user.email,
        details={"from": previous, "to": role},
    )
    return membership


@transaction.atomic
def member_remove(*, membership: Membership) -> None:
    """Remove a membership and revoke the person's tokens in the tenant; one owner always stays."""
    if membership.role == Role.OWNER and _owners_left(membership) == 0:
        raise LastOwner("a tenant must keep at least one owner")
    _revoke_tokens_beyond(membership, None)
    audit_record(
        "member.remove",
        tenant=membership.tenant,
        resource_type="member",
        resource_id=membership.user.email,
        details={"role": membership.role},
    )
    membership.delete()
