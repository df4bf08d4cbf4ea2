"""Base classes for tenant-scoped API views."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from rest_framework import viewsets

from vault.api.principal import Principal
from vault.tenants.models import Tenant


class TenantScopedMixin:
    """Every queryset is filtered to the caller's tenant in ``get_queryset``.

    Object permissions never run on lists, so the tenant filter lives here, where both lists and
    detail look-ups go through it: another tenant's id is simply not found (404, never 403).
    """

    request: Any
    tenant_field = "tenant"

    @property
    def principal(self) -> Principal:
        principal = self.request.user
        assert isinstance(principal, Principal)  # noqa: S101  (permission classes ran first)
        return principal

    @property
    def tenant(self) -> Tenant:
        return self.principal.tenant

    def scope(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.tenant_field: self.tenant})


_M = TypeVar("_M", bound=Model)


class TenantScopedViewSet(TenantScopedMixin, viewsets.GenericViewSet[_M]):
    """A generic viewset whose subclasses implement ``base_queryset()``; scoping is added here."""

    lookup_value_converter = "int"

    def base_queryset(self) -> QuerySet[_M]:
        raise NotImplementedError

    def get_queryset(self) -> QuerySet[_M]:
        return self.scope(self.base_queryset())
