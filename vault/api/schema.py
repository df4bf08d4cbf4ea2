"""OpenAPI generation: the bearer scheme and the error responses every operation can give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from vault.api.serializers import ErrorSerializer


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "vault.api.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cvt_<key id>_<secret>",
            "description": (
                "An API token made by `manage.py token_create` or `POST /api/v1/tokens/`."
            ),
        }


_ERRORS = {
    "400": "The request is not valid (`invalid`, `bad_request`).",
    "401": "No valid bearer token (`not_authenticated`, `invalid_token`).",
    "403": "The token's role does not allow this (`role_forbidden`).",
    "404": "No such resource in the caller's tenant (`not_found`).",
    "429": "Too many failed authentications from this address (`authentication_throttled`).",
}


class VaultAutoSchema(AutoSchema):
    """Adds the documented error responses, all in the one error shape, to every operation."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if not self.get_auth():
            return responses
        for status_code, description in _ERRORS.items():
            if status_code == "400" and self.method == "GET" and "{" in self.path:
                continue
            if status_code not in responses:
                responses[status_code] = self._get_response_for_code(
                    OpenApiResponse(response=ErrorSerializer, description=description), status_code
                )
        return responses
