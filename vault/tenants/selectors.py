"""Reads for tenants and memberships."""

from __future__ import annotations

from django.db.models import QuerySet

from vault.accounts.models import User
from vault.tenants.models import Membership


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    """A person's memberships across tenants, with the tenant loaded, by tenant name."""
    return Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name")
