"""Reads for tenants and memberships. Every read is scoped to one tenant."""

from __future__ import annotations

from django.db.models import QuerySet

from vault.tenants.models import Membership, Tenant


def memberships_for_tenant(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user")


def tenant_by_slug(*, slug: str) -> Tenant:
    return Tenant.objects.get(slug=slug)
