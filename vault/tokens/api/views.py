from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from vault.api.errors import ApiError
from vault.api.permissions import ALL_ROLES, READERS
from vault.api.views import TenantScopedViewSet
from vault.tokens import services
from vault.tokens.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
)
from vault.tokens.models import ApiToken


class RoleNotAllowedError(ApiError):
    status_code: int = status.HTTP_403_FORBIDDEN
    default_code = "role_not_allowed"
    default_detail = "A token cannot carry a role wider than its creator's."


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet[ApiToken],
):
    """API tokens. Everyone manages their own; owners and auditors see the tenant's all.

    DELETE revokes (the row stays for the record); a revoked token's children stop working too.
    """

    serializer_class = ApiTokenSerializer
    allowed_roles = {
        "list": ALL_ROLES,
        "retrieve": ALL_ROLES,
        "create": ALL_ROLES,
        "destroy": ALL_ROLES,
    }

    def base_queryset(self) -> QuerySet[ApiToken]:
        queryset = ApiToken.objects.select_related("user", "tenant")
        principal = self.principal
        if self.action in ("list", "retrieve") and principal.role in READERS:
            return queryset
        if self.action == "destroy" and principal.role == "owner":
            return queryset
        if principal.user is not None:
            # Only the person's tokens of the caller's own role: a narrow token of an owner must
            # not see or revoke that owner's wider tokens.
            return queryset.filter(user=principal.user, role=principal.role)
        return queryset.filter(Q(pk=principal.token.pk) | Q(parent=principal.token))

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request) -> Response:
        incoming = ApiTokenCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            issued = services.token_create(
                tenant=self.tenant,
                name=incoming.validated_data["name"],
                role=incoming.validated_data["role"],
                parent=self.principal.token,
                lifetime_days=incoming.validated_data.get("lifetime_days"),
            )
        except services.RoleNotAllowed as exc:
            raise RoleNotAllowedError(str(exc)) from exc
        except services.TokenError as exc:
            raise ApiError(str(exc), code=exc.code) from exc
        data = dict(ApiTokenSerializer(issued.token).data)
        data["token"] = issued.clear
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Any) -> None:
        services.token_revoke(token=instance)
