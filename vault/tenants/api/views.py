from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from vault.api.errors import Conflict
from vault.api.permissions import ALL_ROLES, READERS
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedMixin, TenantScopedViewSet
from vault.tenants import services
from vault.tenants.api.serializers import (
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    TenantSerializer,
    TenantUpdateSerializer,
)
from vault.tenants.models import Membership, Role

OWNERS = frozenset({Role.OWNER})
CONFLICT = OpenApiResponse(
    response=ErrorSerializer,
    description="The change would leave no owner (`last_owner`), or "
    "the person is already a member (`already_member`).",
)


# Appointing these roles needs approvals (dual control over who holds the keys and the tenant).
DUAL_CONTROL_ROLES = (Role.OWNER, Role.CUSTODIAN)


def _dual_control(action: str, what: str) -> Conflict:
    return Conflict(
        f'{what} needs approvals: request it with POST /api/v1/approvals/ (action "{action}")',
        code="dual_control_required",
    )


class TenantView(TenantScopedMixin, GenericAPIView[Any]):
    """The caller's tenant."""

    allowed_roles = {"get": ALL_ROLES, "patch": OWNERS}
    serializer_class = TenantSerializer

    def get(self, request: Request) -> Response:
        return Response(TenantSerializer(self.tenant).data)

    @extend_schema(
        request=TenantUpdateSerializer,
        responses={
            200: TenantSerializer,
            409: OpenApiResponse(
                response=ErrorSerializer,
                description="Loosening the policy needs approvals (`dual_control_required`).",
            ),
        },
    )
    def patch(self, request: Request) -> Response:
        """Change the tenant's settings (owners)."""
        incoming = TenantUpdateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        wanted = incoming.validated_data
        if wanted.get("deduplicate") and not self.tenant.deduplicate:
            raise _dual_control("tenant.policy.loosen", "turning deduplication on")
        period = wanted.get("kek_cryptoperiod_days")
        if period is not None and period > services.tenant_cryptoperiod_days(self.tenant):
            raise _dual_control("tenant.policy.loosen", "lengthening the cryptoperiod")
        try:
            tenant = services.tenant_update(tenant=self.tenant, **wanted)
        except ValueError as exc:
            raise ValidationError({"kek_cryptoperiod_days": [str(exc)]}) from exc
        return Response(TenantSerializer(tenant).data)


class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet[Membership],
):
    """Members of the caller's tenant. Owners manage them; auditors read them."""

    serializer_class = MembershipSerializer
    allowed_roles = {
        "list": READERS,
        "retrieve": READERS,
        "create": OWNERS,
        "partial_update": OWNERS,
        "destroy": OWNERS,
    }
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def base_queryset(self) -> QuerySet[Membership]:
        # Unscoped on purpose: TenantScopedViewSet.get_queryset adds the one tenant filter.
        return Membership.objects.select_related("user").order_by("user__email", "pk")

    @extend_schema(
        request=MembershipCreateSerializer,
        responses={201: MembershipSerializer, 409: CONFLICT},
    )
    def create(self, request: Request) -> Response:
        incoming = MembershipCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        if incoming.validated_data["role"] in DUAL_CONTROL_ROLES:
            role = incoming.validated_data["role"]
            raise _dual_control(f"member.{role}.add", f"making someone {role}")
        try:
            membership, _ = services.member_add(
                tenant=self.tenant,
                email=incoming.validated_data["email"],
                role=incoming.validated_data["role"],
            )
        except services.AlreadyMember as exc:
            raise Conflict(str(exc), code=exc.code) from exc
        # The answer is the same whether the person had an account or not, and never carries a
        # credential: a set-up link handed to the inviting owner would let that owner sign in as
        # the person, in every tenant the person later joins. Operators issue set-up links.
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=MembershipUpdateSerializer, responses={200: MembershipSerializer, 409: CONFLICT}
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        membership = self.get_object()
        incoming = MembershipUpdateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        role = incoming.validated_data["role"]
        if role in DUAL_CONTROL_ROLES and membership.role not in (role, Role.OWNER):
            raise _dual_control(f"member.{role}.add", f"making someone {role}")
        try:
            services.member_set_role(membership=membership, role=incoming.validated_data["role"])
        except services.LastOwner as exc:
            raise Conflict(str(exc), code=exc.code) from exc
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None, 409: CONFLICT})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: Any) -> None:
        try:
            services.member_remove(membership=instance)
        except services.LastOwner as exc:
            raise Conflict(str(exc), code=exc.code) from exc
