"""The audit log over the API: events, checkpoints, proofs, signing keys and exports.

Owners and auditors read their tenant's log; every read and export is itself recorded.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from vault.api.errors import ApiError
from vault.api.permissions import READERS
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedMixin, TenantScopedViewSet
from vault.audit import exports, services
from vault.audit.api.serializers import (
    AuditEventSerializer,
    CheckpointSerializer,
    ConsistencyProofSerializer,
    InclusionProofSerializer,
    SigningKeysSerializer,
)
from vault.audit.models import AuditEvent
from vault.crypto.merkle import InvalidProofParameters


class AuditApiError(ApiError):
    pass


def _error(status_code: int, code: str, message: str) -> ApiError:
    error = AuditApiError(message, code=code)
    error.status_code = status_code
    return error


def _when(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    parsed = parse_datetime(raw)
    if parsed is None or parsed.tzinfo is None:
        raise _error(400, "invalid_time", f"{name} must be an ISO 8601 time with a zone")
    return parsed


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(v).decode("ascii") for v in values]


TIME_FILTERS = [
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="Events at or after (ISO 8601)."),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="Events before (ISO 8601)."),
]


class AuditEventViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet[AuditEvent]
):
    """The tenant's audit events, newest first, filterable by type, outcome and time."""

    serializer_class = AuditEventSerializer
    allowed_roles = {"list": READERS, "retrieve": READERS, "proof": READERS}

    def base_queryset(self) -> QuerySet[AuditEvent]:
        queryset = AuditEvent.objects.select_related("leaf_entry").order_by("-time", "-pk")
        params = self.request.query_params
        if params.get("type"):
            queryset = queryset.filter(type=params["type"])
        if params.get("outcome"):
            queryset = queryset.filter(outcome=params["outcome"])
        start, end = _when(self.request, "from"), _when(self.request, "to")
        if start is not None:
            queryset = queryset.filter(time__gte=start)
        if end is not None:
            queryset = queryset.filter(time__lt=end)
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("type", str),
            OpenApiParameter("outcome", str, enum=["success", "failure"]),
            *TIME_FILTERS,
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.audit_record("audit.read", tenant=self.tenant, details={"view": "events"})
        return super().list(request, *args, **kwargs)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        event = self.get_object()
        services.audit_record(
            "audit.read", tenant=self.tenant, resource_type="audit_event", resource_id=event.uuid
        )
        return Response(AuditEventSerializer(event).data)

    @extend_schema(responses={200: InclusionProofSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["get"])
    def proof(self, request: Request, pk: str | None = None) -> Response:
        """The event's inclusion proof in the tree of the latest checkpoint."""
        event = self.get_object()
        entry = getattr(event, "leaf_entry", None)
        log = services.log_of(self.tenant)
        checkpoint = services.latest_checkpoint(log)
        if entry is None or checkpoint is None or entry.index >= checkpoint.size:
            raise _error(409, "not_yet_integrated", "The event is not in a checkpoint yet.")
        services.audit_record(
            "audit.read", tenant=self.tenant, resource_type="audit_event", resource_id=event.uuid
        )
        tree = services.log_tree(log, checkpoint.size)
        proof = tree.inclusion_proof(entry.index, checkpoint.size)
        return Response(
            {
                "index": entry.index,
                "size": checkpoint.size,
                "proof": _b64(proof),
                "checkpoint": checkpoint.note,
            }
        )


class _LogView(TenantScopedMixin, GenericAPIView[Any]):
    allowed_roles = {"get": READERS}

    @property
    def log(self) -> str:
        return services.log_of(self.tenant)


class AuditCheckpointView(_LogView):
    """The tenant log's latest signed checkpoint."""

    serializer_class = CheckpointSerializer

    @extend_schema(responses={200: CheckpointSerializer, 404: ErrorSerializer})
    def get(self, request: Request) -> Response:
        checkpoint = services.latest_checkpoint(self.log)
        if checkpoint is None:
            raise _error(404, "no_checkpoint", "The log has no checkpoint yet.")
        services.audit_record("audit.read", tenant=self.tenant, details={"view": "checkpoint"})
        origin = services.origin_of_log(self.log, self.tenant)
        return Response({"origin": origin, "size": checkpoint.size, "note": checkpoint.note})


class AuditKeysView(_LogView):
    """The public keys that sign the tenant log's checkpoints, in verifier-key form."""

    serializer_class = SigningKeysSerializer

    def get(self, request: Request) -> Response:
        signer = services.log_signer(self.log)
        services.audit_record("audit.read", tenant=self.tenant, details={"view": "keys"})
        return Response(
            {"origin": signer.key.name, "keys": [{"vkey": key.vkey} for key in signer.all_keys]}
        )


class ConsistencyProofView(_LogView):
    """A consistency proof between two sizes of the tenant's log (both at most the latest
    checkpoint's)."""

    serializer_class = ConsistencyProofSerializer

    @extend_schema(
        parameters=[OpenApiParameter("from", int, required=True), OpenApiParameter("to", int)],
        responses={200: ConsistencyProofSerializer, 400: ErrorSerializer},
    )
    def get(self, request: Request) -> Response:
        checkpoint = services.latest_checkpoint(self.log)
        newest = checkpoint.size if checkpoint else 0
        try:
            old = int(request.query_params.get("from", ""))
            new = int(request.query_params.get("to") or newest)
        except ValueError:
            raise _error(400, "invalid_size", "from and to must be sizes") from None
        if not 0 < old <= new <= newest:
            raise _error(400, "invalid_size", f"need 0 < from <= to <= {newest}")
        services.audit_record("audit.read", tenant=self.tenant, details={"view": "consistency"})
        try:
            proof = services.log_tree(self.log, new).consistency_proof(old, new)
        except InvalidProofParameters as exc:
            raise _error(400, "invalid_size", str(exc)) from exc
        return Response({"from": old, "to": new, "proof": _b64(proof)})


class AuditExportView(_LogView):
    """An export bundle (docs/audit-format.md) of the events between ``from`` and ``to``."""

    @extend_schema(
        parameters=TIME_FILTERS,
        responses={(200, "application/json"): OpenApiTypes.OBJECT, 404: ErrorSerializer},
    )
    def get(self, request: Request) -> HttpResponse:
        start, end = _when(request, "from"), _when(request, "to")
        services.audit_record(
            "audit.export",
            tenant=self.tenant,
            details={
                "from": start.isoformat() if start else None,
                "to": end.isoformat() if end else None,
            },
        )
        try:
            bundle = exports.export_bundle(self.log, start=start, end=end)
        except exports.NothingToExport as exc:
            raise _error(404, "no_checkpoint", str(exc)) from exc
        response = HttpResponse(bundle, content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="audit-export.json"'
        response["Cache-Control"] = "no-store"
        return response
