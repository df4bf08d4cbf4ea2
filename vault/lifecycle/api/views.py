"""Key rotation and rewrap campaigns over the API."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from kms_plugins.errors import KeyBackendError
from vault.api.errors import ApiError
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedViewSet
from vault.keys.models import KeyRole
from vault.lifecycle import services
from vault.lifecycle.models import Campaign
from vault.tenants.models import Role

KEY_PEOPLE = frozenset({Role.OWNER, Role.CUSTODIAN})
KEY_READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})


class CampaignSerializer(serializers.Serializer[Campaign]):
    id = serializers.IntegerField()
    key = serializers.CharField()
    role = serializers.CharField()
    target_version = serializers.IntegerField()
    reason = serializers.CharField()
    state = serializers.CharField()
    total = serializers.IntegerField(help_text="Stored headers of the tenant when it started.")
    rewrapped = serializers.IntegerField()
    already_current = serializers.IntegerField()
    progress = serializers.FloatField()
    phase = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()

    def to_representation(self, instance: Campaign) -> dict[str, Any]:
        return super().to_representation(services.campaign_status(instance))  # type: ignore[arg-type]


class RotateSerializer(serializers.Serializer[Any]):
    role = serializers.ChoiceField(
        choices=[KeyRole.PRIMARY, KeyRole.RECOVERY], default=KeyRole.PRIMARY
    )
    compromised = serializers.BooleanField(
        default=False,
        help_text="The current version is compromised: it stops wrapping at once and its "
        "campaign runs before every other.",
    )


class LifecycleApiError(ApiError):
    pass


def _error(status_code: int, code: str, message: str) -> ApiError:
    error = LifecycleApiError(message, code=code)
    error.status_code = status_code
    return error


class CampaignViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet[Campaign]
):
    """The tenant's key rotations and their rewrap campaigns."""

    serializer_class = CampaignSerializer
    allowed_roles = {"list": KEY_READERS, "retrieve": KEY_READERS, "create": KEY_PEOPLE}

    def base_queryset(self) -> QuerySet[Campaign]:
        return Campaign.objects.select_related("binding").order_by("-created_at", "-pk")

    @extend_schema(
        request=RotateSerializer,
        responses={202: CampaignSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
        description=(
            "Rotate the tenant's primary (or recovery) key: its backend adds a version that "
            "wraps from now on, and a campaign rewraps every stored data key still under an "
            "older version (only the header's stanza changes, never the ciphertext)."
        ),
    )
    def create(self, request: Request) -> Response:
        incoming = RotateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        role = incoming.validated_data["role"]
        try:
            if incoming.validated_data["compromised"]:
                campaign = services.key_mark_compromised(tenant=self.tenant, role=role)
            else:
                campaign = services.key_rotate(tenant=self.tenant, role=role)
        except services.LifecycleError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        except KeyBackendError as exc:
            raise _error(
                503 if exc.transient else 500,
                exc.code,
                "The tenant's key backend is unavailable; try again later."
                if exc.transient
                else "The tenant's key backend refused the rotation.",
            ) from exc
        return Response(CampaignSerializer(campaign).data, status=status.HTTP_202_ACCEPTED)
