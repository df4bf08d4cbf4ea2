"""Key rotation and rewrap campaigns over the API."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from kms_plugins.errors import KeyBackendError
from vault.api.errors import ApiError
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedViewSet
from vault.keys.models import KeyRole
from vault.lifecycle import approvals, services
from vault.lifecycle.models import (
    ApprovalAction,
    ApprovalRequest,
    Campaign,
    DestructionCertificate,
)
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
    failed = serializers.IntegerField(
        help_text="Headers that could not be rewrapped (malformed, or their version destroyed)."
    )
    progress = serializers.FloatField()
    phase = serializers.CharField(help_text="The phases the unfinished slices are in.")
    slices = serializers.IntegerField()
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


class VoteSerializer(serializers.Serializer[Any]):
    approver = serializers.EmailField(source="approver.email")
    decision = serializers.CharField()
    reason = serializers.CharField()
    decided_at = serializers.DateTimeField()


class ApprovalRequestSerializer(serializers.ModelSerializer[ApprovalRequest]):
    requested_by = serializers.EmailField(source="requested_by.email", read_only=True)
    votes = VoteSerializer(many=True, read_only=True)
    certificate = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalRequest
        fields = (
            "id",
            "action",
            "params",
            "reason",
            "state",
            "required",
            "requested_by",
            "requested_at",
            "expires_at",
            "approved_at",
            "not_before",
            "finished_at",
            "votes",
            "certificate",
        )
        read_only_fields = fields

    def get_certificate(self, request: ApprovalRequest) -> int | None:
        certificate = DestructionCertificate.objects.filter(request=request).first()
        return certificate.pk if certificate else None


class ApprovalRequestCreateSerializer(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=ApprovalAction.choices)
    reason = serializers.CharField(max_length=2000)
    params = serializers.DictField(
        required=False,
        default=dict,
        help_text='member.owner.add: {"email": ...}; tenant.policy.loosen: {"deduplicate": true}',
    )


class DecisionSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=2000, required=False, default="")


def _lifecycle_error(exc: services.LifecycleError) -> ApiError:
    return _error(exc.status, exc.code, str(exc))


class ApprovalRequestViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet[ApprovalRequest]
):
    """Actions under dual control (today: destroying the tenant's keys). Custodians and owners
    request, approve, deny and cancel, each as a person (a token acting for a user)."""

    serializer_class = ApprovalRequestSerializer
    allowed_roles = {
        "list": KEY_READERS,
        "retrieve": KEY_READERS,
        "create": KEY_PEOPLE,
        "approve": KEY_PEOPLE,
        "deny": KEY_PEOPLE,
        "cancel": KEY_PEOPLE,
    }

    def base_queryset(self) -> QuerySet[ApprovalRequest]:
        return ApprovalRequest.objects.select_related("requested_by", "tenant").prefetch_related(
            "votes__approver"
        )

    @extend_schema(
        request=ApprovalRequestCreateSerializer,
        responses={201: ApprovalRequestSerializer, 403: ErrorSerializer, 410: ErrorSerializer},
    )
    def create(self, request: Request) -> Response:
        incoming = ApprovalRequestCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            made = approvals.approval_request(
                tenant=self.tenant,
                user=self.principal.user,
                action=incoming.validated_data["action"],
                reason=incoming.validated_data["reason"],
                params=incoming.validated_data["params"],
            )
        except services.LifecycleError as exc:
            raise _lifecycle_error(exc) from exc
        return Response(ApprovalRequestSerializer(made).data, status=status.HTTP_201_CREATED)

    def _decide(self, request: Request, approve: bool) -> Response:
        target = self.get_object()
        incoming = DecisionSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            done = approvals.approval_decide(
                request=target,
                user=self.principal.user,
                approve=approve,
                reason=incoming.validated_data["reason"],
            )
        except services.LifecycleError as exc:
            raise _lifecycle_error(exc) from exc
        except KeyBackendError as exc:
            raise _error(503 if exc.transient else 500, exc.code, str(exc)) from exc
        return Response(ApprovalRequestSerializer(done).data)

    @extend_schema(
        request=DecisionSerializer,
        responses={200: ApprovalRequestSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
        description="Approve. The request runs once it has its approvals (a key destruction "
        "after its waiting period). The requester may not approve, nor anyone twice.",
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, True)

    @extend_schema(
        request=DecisionSerializer,
        responses={200: ApprovalRequestSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
        description="Deny: the request ends.",
    )
    @action(detail=True, methods=["post"])
    def deny(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, False)

    @extend_schema(
        request=None,
        responses={200: ApprovalRequestSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
        description="Cancel a request that has not run yet, also during its waiting period.",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        try:
            done = approvals.approval_cancel(request=self.get_object(), user=self.principal.user)
        except services.LifecycleError as exc:
            raise _lifecycle_error(exc) from exc
        return Response(ApprovalRequestSerializer(done).data)


class CertificateSerializer(serializers.ModelSerializer[DestructionCertificate]):
    body = serializers.SerializerMethodField(help_text="The certified JSON (RFC 8785 bytes).")

    class Meta:
        model = DestructionCertificate
        fields = ("id", "request", "created_at", "body", "signature", "signing_key")
        read_only_fields = fields

    def get_body(self, certificate: DestructionCertificate) -> str:
        return bytes(certificate.body).decode("utf-8")


class CertificateViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet[DestructionCertificate]
):
    """Signed destruction certificates of the tenant's crypto-shreds."""

    serializer_class = CertificateSerializer
    allowed_roles = {"list": KEY_READERS, "retrieve": KEY_READERS}

    def base_queryset(self) -> QuerySet[DestructionCertificate]:
        return DestructionCertificate.objects.all()
