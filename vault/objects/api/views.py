from __future__ import annotations

import re
from typing import Any, BinaryIO, cast

from django.db.models import Prefetch, Q, QuerySet
from django.db.models.functions import Substr
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from kms_plugins.errors import KeyBackendError, KeyDestroyed, KeyStateError
from vault.api.errors import ApiError
from vault.api.serializers import ErrorSerializer
from vault.api.views import TenantScopedViewSet
from vault.crypto import envelope
from vault.crypto.errors import EnvelopeError
from vault.objects import services, uploads
from vault.objects.api.serializers import (
    ObjectVersionSerializer,
    StoredObjectCreateSerializer,
    StoredObjectSerializer,
    UploadSessionCreateSerializer,
    UploadSessionSerializer,
)
from vault.objects.models import ObjectVersion, StoredObject, UploadSession
from vault.tenants.models import Role

READERS = frozenset({Role.OWNER, Role.MEMBER, Role.AUDITOR})
WRITERS = frozenset({Role.OWNER, Role.MEMBER})
_RANGE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$")


class ObjectApiError(ApiError):
    pass


def _api_error(exc: services.ObjectError) -> ApiError:
    error = ObjectApiError(str(exc), code=exc.code)
    error.status_code = exc.status
    return error


def _backend_error(exc: KeyBackendError) -> ApiError:
    """The answer to a key backend's error: 503 when it may pass, 410 when the key is gone for
    good (a crypto-shred, or a restored database older than one), 409 when the key's state
    forbids the call (a deactivated key cannot wrap), 500 for anything else."""
    if exc.transient:
        message, status_code = "The tenant's key backend is unavailable; try again later.", 503
    elif isinstance(exc, KeyDestroyed):
        message, status_code = "The key this data was protected with was destroyed.", 410
    elif isinstance(exc, KeyStateError):
        message, status_code = "The key's state forbids this operation.", 409
    else:
        message, status_code = "The tenant's key backend refused the operation.", 500
    error = ObjectApiError(message, code=exc.code)
    error.status_code = status_code
    return error


class RawBodyParser(BaseParser):
    """Declares raw uploads; the view reads the body itself, as a stream, never all at once."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        return None


class OctetStreamRenderer(BaseRenderer):
    """Lets clients ask for the bytes with ``Accept: application/octet-stream``; errors: JSON."""

    media_type = "application/octet-stream"
    format = "bin"
    charset = None

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        return JSONRenderer().render(data, "application/json", renderer_context)


def _parse_range(header: str | None) -> services.ByteRange | None:
    """One ``bytes=`` range; anything else (several ranges, inverted, malformed) is ignored and
    the whole object is sent, as RFC 9110 allows."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        return services.ByteRange(suffix=int(last))
    if last and int(last) < int(first):
        return None
    return services.ByteRange(first=int(first), last=int(last) if last else None)


def _media_type(raw: str) -> str:
    content_type = raw.split(";")[0].strip()
    if not _MEDIA_TYPE.match(content_type):
        raise _api_error(services.BadContentType("Content-Type must be a plain media type"))
    return content_type


def _content_length(request: Request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH") or ""
    return int(raw) if _DIGITS.match(raw) else None


class ObjectViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet[StoredObject],
):
    """Objects of the caller's tenant. Members and owners store and read them; auditors see
    their metadata but not their content."""

    serializer_class = StoredObjectSerializer
    allowed_roles = {
        "list": READERS,
        "retrieve": READERS,
        "versions": READERS,
        "create": WRITERS,
        "destroy": WRITERS,
        "content": WRITERS,
        "header": WRITERS,
    }

    def base_queryset(self) -> QuerySet[StoredObject]:
        queryset = StoredObject.objects.filter(deleted_at__isnull=True).select_related("tenant")
        prefix = self.request.query_params.get("prefix")
        if prefix:
            # Case-sensitive on every database (SQLite's LIKE ignores ASCII case).
            queryset = queryset.annotate(_head=Substr("name", 1, len(prefix))).filter(_head=prefix)
        mode = self.request.query_params.get("mode")
        if mode:
            queryset = queryset.filter(mode=mode)
        return queryset.prefetch_related(
            Prefetch("versions", queryset=ObjectVersion.objects.order_by("-number"))
        ).order_by("name", "pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("prefix", str, description="Only names starting with this."),
            OpenApiParameter("mode", str, enum=["gateway", "client"]),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=StoredObjectCreateSerializer,
        responses={201: StoredObjectSerializer, 409: ErrorSerializer},
    )
    def create(self, request: Request) -> Response:
        incoming = StoredObjectCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            obj = services.object_create(
                tenant=self.tenant, token=self.principal.token, **incoming.validated_data
            )
        except services.ObjectError as exc:
            raise _api_error(exc) from exc
        return Response(StoredObjectSerializer(obj).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Any) -> None:
        services.object_delete(obj=instance)

    @extend_schema(responses=ObjectVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        obj = self.get_object()
        page = self.paginate_queryset(obj.versions.order_by("number"))  # type: ignore[arg-type]
        return self.get_paginated_response(ObjectVersionSerializer(page, many=True).data)

    @extend_schema(
        methods=["GET"],
        parameters=[
            OpenApiParameter("version", int, description="Default: the latest."),
            OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="bytes=a-b"),
        ],
        responses={
            # Gateway objects answer in the version's own media type, client-side ones in
            # application/octet-stream.
            (200, "*/*"): OpenApiTypes.BINARY,
            (206, "*/*"): OpenApiTypes.BINARY,
            404: ErrorSerializer,
            409: ErrorSerializer,
            410: ErrorSerializer,
            416: ErrorSerializer,
            503: ErrorSerializer,
        },
        description=(
            "Gateway objects answer with the plaintext, decrypted as it is sent; client-side "
            "objects with their envelope. A stored segment that fails to authenticate aborts "
            "the connection instead of finishing the answer."
        ),
    )
    @extend_schema(
        methods=["PUT"],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            201: ObjectVersionSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            410: ErrorSerializer,
            411: ErrorSerializer,
            413: ErrorSerializer,
            503: ErrorSerializer,
        },
        description=(
            "Store a new version. Gateway objects: send the plaintext; the vault encrypts it as "
            "it reads. Client-side objects: send an envelope whose context is the object's "
            "`next_context`. Content-Length is required."
        ),
    )
    @action(
        detail=True,
        methods=["get", "put"],
        parser_classes=[RawBodyParser],
        renderer_classes=[JSONRenderer, OctetStreamRenderer],
    )
    def content(self, request: Request, pk: str | None = None) -> Any:
        obj = self.get_object()
        try:
            if request.method == "PUT":
                return self._upload(request, obj)
            return self._download(request, obj)
        except services.ObjectError as exc:
            raise _api_error(exc) from exc
        except KeyBackendError as exc:
            raise _backend_error(exc) from exc

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            200: ObjectVersionSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            413: ErrorSerializer,
        },
        description=(
            "Replace the recipient stanzas of a client-side version's envelope header (a rewrap "
            "after the client rotated its key). The body is not touched: everything in the new "
            "header but the stanzas must equal the stored header."
        ),
    )
    @action(
        detail=True,
        methods=["put"],
        url_path="versions/<int:number>/header",
        parser_classes=[RawBodyParser],
    )
    def header(self, request: Request, pk: str | None = None, number: int = 0) -> Response:
        obj = self.get_object()
        version = obj.versions.filter(number=number).first()
        if version is None:
            raise _api_error(services.NoVersion("the object has no such version"))
        length = _content_length(request) or -1
        if not 0 < length <= envelope.MAX_HEADER_SIZE:
            raise _api_error(services.MalformedEnvelope("send one header, with Content-Length"))
        data = request._request.read(length)
        principal = self.principal
        if principal.role != Role.OWNER and not services.version_created_by(
            version, token=principal.token, user=principal.user
        ):
            raise _api_error(
                services.NotYours("only the version's uploader or an owner may rewrap")
            )
        try:
            services.version_replace_header(version=version, header=data, token=principal.token)
        except services.ObjectError as exc:
            raise _api_error(exc) from exc
        return Response(ObjectVersionSerializer(version).data)

    def _upload(self, request: Request, obj: StoredObject) -> Response:
        length = _content_length(request)
        content_type = _media_type(request.content_type or obj.content_type)
        store = (
            services.version_store_client
            if obj.mode == "client"
            else services.version_store_gateway
        )
        try:
            version = store(
                obj=obj,
                stream=cast(BinaryIO, request._request),  # Django's request streams the body
                length=length,
                content_type=content_type,
                token=self.principal.token,
            )
        except EnvelopeError as exc:
            raise _api_error(services.MalformedEnvelope(type(exc).__name__)) from exc
        return Response(ObjectVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    def _download(self, request: Request, obj: StoredObject) -> StreamingHttpResponse:
        number = request.query_params.get("version")
        versions = obj.versions.order_by("-number")
        if number is not None:
            versions = versions.filter(number=int(number) if _DIGITS.match(number) else -1)
        version: ObjectVersion | None = versions.first()
        if version is None:
            raise services.NoVersion("the object has no such version")
        download = services.version_read(
            version=version, byte_range=_parse_range(request.headers.get("Range"))
        )
        mode_type = "application/octet-stream" if obj.mode == "client" else version.content_type
        response = StreamingHttpResponse(download.chunks, content_type=mode_type)
        response["Content-Length"] = str(download.length)
        response["Accept-Ranges"] = "bytes"
        response["Cache-Control"] = "no-store"
        response["Content-Disposition"] = "attachment"
        if download.start is not None:
            response.status_code = 206
            last = download.start + download.length - 1
            response["Content-Range"] = f"bytes {download.start}-{last}/{download.total}"
        return response


class UploadViewSet(
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet[UploadSession],
):
    """Resumable uploads (``docs/objects.md``): open a session for a length, send the parts in
    order with ``PUT /uploads/{id}/parts/{offset}/``, ask where to continue with ``GET``. A
    session is visible to the person (or integration token) that opened it only."""

    serializer_class = UploadSessionSerializer
    tenant_field = "object__tenant"
    lookup_value_converter = "uuid"
    allowed_roles = {
        "create": WRITERS,
        "retrieve": WRITERS,
        "destroy": WRITERS,
        "part": WRITERS,
    }

    def base_queryset(self) -> QuerySet[UploadSession]:
        principal = self.principal
        if principal.user is not None:
            mine = Q(created_by__user=principal.user)
        else:
            mine = Q(created_by=principal.token) | Q(created_by__parent=principal.token)
        return (
            UploadSession.objects.filter(mine, object__deleted_at__isnull=True)
            .select_related("object__tenant", "version", "created_by")
            .order_by("created_at", "pk")
        )

    @extend_schema(
        request=UploadSessionCreateSerializer,
        responses={
            201: UploadSessionSerializer,
            400: ErrorSerializer,
            404: ErrorSerializer,
            413: ErrorSerializer,
        },
    )
    def create(self, request: Request) -> Response:
        incoming = UploadSessionCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        obj = (
            StoredObject.objects.filter(
                tenant=self.tenant, pk=data["object"], deleted_at__isnull=True
            )
            .select_related("tenant")
            .first()
        )
        if obj is None:
            error = ObjectApiError("No such object.", code="not_found")
            error.status_code = 404
            raise error
        content_type = _media_type(data.get("content_type") or obj.content_type)
        if obj.mode == "client":
            content_type = "application/octet-stream"
        try:
            session = uploads.upload_create(
                obj=obj,
                length=data["length"],
                content_type=content_type,
                token=self.principal.token,
            )
        except services.ObjectError as exc:
            raise _api_error(exc) from exc
        return Response(UploadSessionSerializer(session).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Any) -> None:
        uploads.upload_abort(session=instance)

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            200: UploadSessionSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            410: ErrorSerializer,
            411: ErrorSerializer,
            503: ErrorSerializer,
        },
        description=(
            "Send the part that starts at `offset` (which must be the session's `offset`). A "
            "part cut short stores nothing: send it again. The part that brings the session "
            "to its length makes the version (`complete`, `version`); if that fails for a "
            "passing reason, an empty part at the session's length tries again."
        ),
    )
    @action(
        detail=True,
        methods=["put"],
        url_path="parts/<int:offset>",
        parser_classes=[RawBodyParser],
    )
    def part(self, request: Request, pk: str | None = None, offset: int = 0) -> Response:
        session = self.get_object()
        try:
            session = uploads.upload_part(
                session=session,
                offset=offset,
                stream=cast(BinaryIO, request._request),
                length=_content_length(request),
            )
        except services.ObjectError as exc:
            raise _api_error(exc) from exc
        except KeyBackendError as exc:
            raise _backend_error(exc) from exc
        except EnvelopeError as exc:
            raise _api_error(services.MalformedEnvelope(type(exc).__name__)) from exc
        return Response(UploadSessionSerializer(session).data)
