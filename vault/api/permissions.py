"""Role checks: deny by default; each view names the roles allowed per action."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from vault.api.principal import Principal
from vault.audit.models import Outcome
from vault.audit.services import audit_record
from vault.tenants.models import Role

ALL_ROLES = frozenset(Role.values)
# The auditor reads everything and changes nothing: give it read actions only.
READERS = frozenset({Role.OWNER, Role.AUDITOR})


def action_name(request: Request, view: Any) -> str:
    """The action a request performs: a viewset's action, else the lower-cased HTTP method."""
    action = getattr(view, "action", None) or (request.method or "").lower()
    return "get" if action == "head" else action


class HasTenantRole(BasePermission):
    """Allows a request only when the caller's role is listed for the action.

    Views declare ``allowed_roles = {"list": {...}, "create": {...}, ...}``. An action missing
    from the map is denied, so a new action is closed until someone opens it on purpose.
    """

    message = "Your role does not allow this."
    code = "role_forbidden"

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, Principal):
            return False
        if (request.method or "").upper() not in view.allowed_methods:
            return True  # let the view answer 405 Method Not Allowed
        if request.method == "OPTIONS":
            return True  # describes the endpoint to any member of the tenant; changes nothing
        allowed: Mapping[str, frozenset[str] | set[str]] = getattr(view, "allowed_roles", {})
        action = action_name(request, view)
        if principal.role in allowed.get(action, frozenset()):
            return True
        audit_record(
            "access.denied",
            tenant=principal.tenant,
            outcome=Outcome.FAILURE,
            request=request._request,
            resource_type="api",
            resource_id=request.path,
            details={"action": action, "role": principal.role},
        )
        return False
