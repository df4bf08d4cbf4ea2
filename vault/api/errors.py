"""One error shape for every API error, 4xx and 5xx alike.

    {"error": {"code": "not_found", "message": "...", "status": 404, "request_id": "...",
               "details": {...}}}

``code`` is stable: clients branch on it; ``message`` is for people and may change.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from vault.core.logging import current_request_id

#: Seconds a client is told to wait (``Retry-After``) after a 503 from a view.
UNAVAILABLE_RETRY_AFTER = 5
#: 503s that last until someone acts; they carry no ``Retry-After``.
LASTING_503_CODES = frozenset({"key_suspended"})


class ApiError(exceptions.APIException):
    """Base for the service's own API errors: declare ``status_code`` and ``default_code``."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "The request cannot be served."


class Conflict(ApiError):
    status_code: int = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class ServiceUnavailable(ApiError):
    status_code: int = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "service_unavailable"
    default_detail = "A component the service depends on is unavailable; try again later."


def error_body(status_code: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status_code,
        "request_id": current_request_id.get(),
    }
    if details:
        body["details"] = details
    return {"error": body}


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    return exc.default_code if isinstance(exc.default_code, str) else "error"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler producing the one error shape."""
    from vault.audit.services import AuditUnavailable

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, AuditUnavailable):
        unavailable = ServiceUnavailable(str(exc), code=AuditUnavailable.code)
        exc = unavailable
    if not isinstance(exc, exceptions.APIException):
        return None  # unexpected: Django's handler500 answers in the same shape
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    elif (
        exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE
        and _code_of(exc) not in LASTING_503_CODES
    ):
        # A component that will come back (a key backend, the audit log): say when to try again
        # (RFC 9110, 10.2.3), as the outage middleware does for its own 503s. A suspended key
        # waits for an operator, so it gets no Retry-After.
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
    if isinstance(exc, exceptions.ValidationError):
        code, message, details = "invalid", "The request is not valid.", exc.detail
    else:
        code, message, details = _code_of(exc), str(exc.detail), None
    set_rollback()
    return Response(
        error_body(exc.status_code, code, message, details), status=exc.status_code, headers=headers
    )


def json_error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(status_code, code, message), status=status_code)


def wants_json(request: HttpRequest) -> bool:
    """Whether ``request`` is answered in the API's error shape rather than an HTML page."""
    return request.path.startswith(("/api/", "/healthz", "/readyz"))


# Django's own error views answer everything outside the API (console pages) in HTML; the API,
# including paths no view matches and crashes outside DRF, answers in the one error shape.
def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(400, "bad_request", "The request is malformed.")
    return defaults.bad_request(request, exception or Exception())


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(403, "permission_denied", "You may not do this.")
    return defaults.permission_denied(request, exception or Exception())


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(404, "not_found", "No such resource.")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    # Django calls this while handling the exception: one from an unavailable component (raised
    # outside a view, where DependencyFailureMiddleware cannot see it) still answers 503.
    from vault.core.outages import outage_of, outage_response

    failure = sys.exc_info()[1]
    outage = outage_of(failure) if failure is not None else None
    if outage is not None:
        return outage_response(request, outage)
    if wants_json(request):
        return json_error(500, "server_error", "The server failed to answer; quote the request id.")
    return defaults.server_error(request)
