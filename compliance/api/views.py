"""Compliance over the API: runs and their exports, waivers, attestations, the report CA.

Owners, custodians and auditors read runs and exports and may start a run (a run observes the
vault; it changes nothing in it). Waivers and attestations are people's acts: owners and
custodians, through a token that acts for a person.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from compliance import engine, services
from compliance.exports import FORMATS, MEDIA_TYPES, ExportError, export_run
from compliance.models import Attestation, ComplianceRun, Trigger, Waiver
from vault.accounts.models import User
from vault.api.errors import ApiError
from vault.api.permissions import ALL_ROLES
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedMixin, TenantScopedViewSet
from vault.tenants.models import Role

READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})
DECIDERS = frozenset({Role.OWNER, Role.CUSTODIAN})


class ComplianceApiError(ApiError):
    pass


def _error(status_code: int, code: str, message: str) -> ApiError:
    error = ComplianceApiError(message, code=code)
    error.status_code = status_code
    return error


def _raise(exc: Exception) -> None:
    code = getattr(exc, "code", "compliance_failed")
    status_code = getattr(exc, "status", None) or (503 if getattr(exc, "transient", False) else 500)
    raise _error(status_code, code, str(exc)) from exc


RUN_FIELDS: tuple[str, ...] = (
    "id",
    "trigger",
    "requested_by",
    "state",
    "started_at",
    "finished_at",
    "engine_version",
    "catalog_sha256",
    "checkpoint_start",
    "checkpoint_end",
    "summary",
    "integrity",
    "anchor_event",
)


class RunSerializer(serializers.ModelSerializer[ComplianceRun]):
    class Meta:
        model = ComplianceRun
        fields = RUN_FIELDS
        read_only_fields = RUN_FIELDS


class RequirementSerializer(serializers.Serializer[Any]):
    ref = serializers.CharField()
    finding = serializers.CharField()
    narrative = serializers.CharField()
    guardrails = serializers.JSONField()
    compensating_control_used = serializers.BooleanField()
    attestations = serializers.JSONField()


class ResultSerializer(serializers.Serializer[Any]):
    finding_id = serializers.CharField()
    check_id = serializers.CharField()
    check_version = serializers.CharField()
    status = serializers.CharField()
    severity = serializers.CharField()
    resource_type = serializers.CharField()
    resource_id = serializers.CharField()
    detail = serializers.CharField()
    evidence = serializers.JSONField()
    waiver = serializers.IntegerField(source="waiver_id", allow_null=True)


class RunDetailSerializer(RunSerializer):
    requirements = RequirementSerializer(many=True, read_only=True)
    results = ResultSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = (*RUN_FIELDS, "requirements", "results")
        read_only_fields = (*RUN_FIELDS, "requirements", "results")


class RunViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet[ComplianceRun]
):
    """The tenant's compliance runs; start one; export one."""

    serializer_class = RunSerializer
    lookup_value_converter = "uuid"
    allowed_roles = {"list": READERS, "retrieve": READERS, "create": READERS, "export": READERS}

    def base_queryset(self) -> QuerySet[ComplianceRun]:
        return ComplianceRun.objects.all().order_by("-started_at")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    @extend_schema(
        request=None,
        responses={202: RunSerializer, 503: ErrorSerializer},
        description="Start a compliance run of every check for the tenant. It runs as a job; "
        "poll the run until its state is finished. While a run is in progress, this answers "
        "with that run instead of starting another.",
    )
    def create(self, request: Request) -> Response:
        from compliance.tasks import evaluate

        try:
            run = engine.run_start(
                self.tenant,
                trigger=Trigger.API,
                requested_by=str(self.principal),
                exclusive=True,
            )
        except engine.RunInProgress as exc:
            # One run at a time: asking again while one runs answers with that run.
            return Response(RunSerializer(exc.run).data, status=status.HTTP_202_ACCEPTED)
        try:
            evaluate.delay(str(run.pk))
        except Exception as exc:
            # The queue is down (503 queue_unavailable): no run may stay "running" for nothing.
            engine.run_not_queued(run, exc)
            raise
        run.refresh_from_db()
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "type",
                str,
                enum=list(FORMATS),
                default="json",
                description="The export's type (not `format`, which DRF keeps for renderers).",
            ),
        ],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/pdf"): OpenApiTypes.BINARY,
            (200, "application/zip"): OpenApiTypes.BINARY,
            400: ErrorSerializer,
            409: ErrorSerializer,
        },
        description="The run's export: canonical JSON, CSV, signed PDF or the signed evidence "
        "pack (ZIP).",
    )
    @action(detail=True, methods=["get"])
    def export(self, request: Request, pk: str | None = None) -> HttpResponse:
        run = self.get_object()
        fmt = request.query_params.get("type") or "json"
        try:
            data = export_run(run, fmt)
        except ExportError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        except Exception as exc:
            if not hasattr(exc, "code"):
                raise
            _raise(exc)
        suffix = "zip" if fmt == "pack" else fmt
        response = HttpResponse(data, content_type=MEDIA_TYPES[fmt])
        response["Content-Disposition"] = (
            f'attachment; filename="compliance-{self.tenant.slug}-{run.pk}.{suffix}"'
        )
        response["Cache-Control"] = "no-store"
        return response


def _person(view: TenantScopedMixin) -> User:
    user = view.principal.user
    if user is None:
        raise _error(403, "person_required", "Only a token that acts for a person may do this.")
    return user


class WaiverSerializer(serializers.ModelSerializer[Waiver]):
    requested_by = serializers.EmailField(source="requested_by.email", read_only=True)
    approvals = serializers.SerializerMethodField()
    days = serializers.IntegerField(write_only=True, min_value=1, max_value=365)

    class Meta:
        model = Waiver
        fields = (
            "id",
            "check_id",
            "finding_id",
            "justification",
            "compensating_control",
            "requested_by",
            "requested_at",
            "expires_at",
            "state",
            "approved_at",
            "approvals",
            "days",
        )
        read_only_fields = ("id", "requested_at", "expires_at", "state", "approved_at")

    def get_approvals(self, waiver: Waiver) -> list[dict[str, Any]]:
        return [
            {"approver": v.approver.email, "approve": v.approve, "decided_at": v.decided_at}
            for v in waiver.approvals.all().select_related("approver")
        ]


class WaiverDecisionSerializer(serializers.Serializer[Any]):
    approve = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class WaiverViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    TenantScopedViewSet[Waiver],
):
    """Accepted risks: a justification, an expiry and two approvers besides the requester."""

    serializer_class = WaiverSerializer
    allowed_roles = {
        "list": READERS,
        "retrieve": READERS,
        "create": DECIDERS,
        "decide": DECIDERS,
        "revoke": DECIDERS,
    }

    def base_queryset(self) -> QuerySet[Waiver]:
        return Waiver.objects.select_related("requested_by").order_by("-requested_at", "-pk")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = WaiverSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        try:
            waiver = services.waiver_request(
                tenant=self.tenant,
                user=_person(self),
                check_id=data["check_id"],
                finding_id=data.get("finding_id", ""),
                justification=data["justification"],
                compensating_control=data.get("compensating_control", ""),
                days=data["days"],
            )
        except services.ComplianceError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        return Response(WaiverSerializer(waiver).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=WaiverDecisionSerializer,
        responses={
            200: WaiverSerializer,
            409: OpenApiResponse(
                response=ErrorSerializer,
                description="The waiver is no longer pending (`waiver_not_pending`), or the "
                "caller already decided (`already_decided`).",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, pk: int | None = None) -> Response:
        waiver = self.get_object()
        incoming = WaiverDecisionSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            waiver = services.waiver_decide(
                waiver=waiver,
                user=_person(self),
                approve=incoming.validated_data["approve"],
                reason=incoming.validated_data["reason"],
            )
        except services.ComplianceError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        return Response(WaiverSerializer(waiver).data)

    @extend_schema(
        request=None,
        responses={
            200: WaiverSerializer,
            409: OpenApiResponse(
                response=ErrorSerializer,
                description="The waiver is not active (`waiver_not_active`).",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: int | None = None) -> Response:
        waiver = self.get_object()
        try:
            waiver = services.waiver_revoke(waiver=waiver, user=_person(self))
        except services.ComplianceError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        return Response(WaiverSerializer(waiver).data)


class AttestationSerializer(serializers.ModelSerializer[Attestation]):
    signer = serializers.EmailField(source="signer.email", read_only=True)
    valid_days = serializers.IntegerField(write_only=True, min_value=1, max_value=366)
    body = serializers.SerializerMethodField()

    class Meta:
        model = Attestation
        fields = (
            "id",
            "requirement",
            "kind",
            "statement",
            "document_sha256",
            "signer",
            "signed_at",
            "valid_until",
            "valid_days",
            "body",
            "signature",
            "signing_key",
        )
        read_only_fields = (
            "id",
            "signer",
            "signed_at",
            "valid_until",
            "body",
            "signature",
            "signing_key",
        )

    def get_body(self, item: Attestation) -> str:
        return bytes(item.body).decode("utf-8")


class AttestationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    TenantScopedViewSet[Attestation],
):
    """Signed statements for requirements that need people (access reviews, acknowledgments)."""

    serializer_class = AttestationSerializer
    allowed_roles = {"list": READERS, "retrieve": READERS, "create": DECIDERS}

    def base_queryset(self) -> QuerySet[Attestation]:
        return Attestation.objects.select_related("signer").order_by("-signed_at", "-pk")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = AttestationSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        try:
            item = services.attestation_create(
                tenant=self.tenant,
                user=_person(self),
                requirement=data["requirement"],
                kind=data["kind"],
                statement=data["statement"],
                valid_days=data["valid_days"],
                document_sha256=data.get("document_sha256", ""),
            )
        except services.ComplianceError as exc:
            raise _error(exc.status, exc.code, str(exc)) from exc
        except Exception as exc:
            if not hasattr(exc, "code"):
                raise
            _raise(exc)
        return Response(AttestationSerializer(item).data, status=status.HTTP_201_CREATED)


class CaSerializer(serializers.Serializer[Any]):
    certificate = serializers.CharField(help_text="The report CA certificate, PEM.")
    fingerprint = serializers.CharField(help_text="SHA-256 of the DER certificate, hex.")


class ReportCaView(TenantScopedMixin, GenericAPIView[Any]):
    """The CA certificate that issues the report signer's: what `cvault trust save` keeps to
    verify evidence packs offline. Public information; any member's token may read it."""

    serializer_class = CaSerializer
    allowed_roles = {"get": ALL_ROLES}

    @extend_schema(responses={200: CaSerializer, 503: ErrorSerializer})
    def get(self, request: Request) -> Response:
        from compliance.signing import ca_certificate_pem

        try:
            pem = ca_certificate_pem()
        except Exception as exc:
            if not hasattr(exc, "code"):
                raise
            _raise(exc)
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        der = x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(Encoding.DER)
        return Response({"certificate": pem, "fingerprint": hashlib.sha256(der).hexdigest()})
