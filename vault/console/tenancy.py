"""Tenant-scoped console pages: ``/console/t/<slug>/...``, one membership and one role each.

Every such view is wrapped by ``tenant_page``. It signs the visitor in with both factors first
(``console_login_required``), then finds the caller's membership in the tenant named by the URL:
none, or an inactive tenant, is 404, so a page never tells whether another tenant exists. Then it
checks the caller's role against the roles the view allows for the HTTP method, denying by
default (403, recorded as ``access.denied``). The view gets ``request.tenant``,
``request.role`` and ``request.membership``.

The auditor reads everything and changes nothing: every ``tenant_page`` must let the auditor
GET, and no ``tenant_page`` may let it use any other method (both checked when the view is
decorated, so a mistake stops start-up). Refusing the auditor's writes here, whatever a view
declares, means a page cannot open a write to it by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import wraps
from types import MappingProxyType
from typing import Any, NoReturn, cast

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed

from vault.accounts.models import User
from vault.audit.models import Outcome
from vault.audit.services import audit_record
from vault.console.decorators import View, console_login_required
from vault.tenants.models import Membership, Role, Tenant

ALL_ROLES: frozenset[str] = frozenset(Role.values)
# Roles that may change something somewhere: everyone but the auditor.
WRITERS: frozenset[str] = ALL_ROLES - {Role.AUDITOR}
# A page everyone in the tenant may read and nobody may post to.
READ_ONLY: Mapping[str, Collection[str]] = MappingProxyType({"GET": ALL_ROLES})

SAFE_METHODS = frozenset({"GET", "HEAD"})
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class TenantRequest(HttpRequest):
    """What a ``tenant_page`` view receives (for type annotations only)."""

    user: User
    tenant: Tenant
    role: str
    membership: Membership


def _checked(roles_by_method: Mapping[str, Collection[str]]) -> dict[str, frozenset[str]]:
    """The roles map in normal form; ImproperlyConfigured if it breaks the console's rules."""
    roles: dict[str, frozenset[str]] = {}
    for method, allowed in roles_by_method.items():
        name = method.upper()
        if name not in KNOWN_METHODS:
            raise ImproperlyConfigured(f"tenant_page: unknown HTTP method {method!r}")
        if isinstance(allowed, str):
            raise ImproperlyConfigured(f"tenant_page: give {method} a collection of roles")
        unknown = set(allowed) - ALL_ROLES
        if unknown:
            raise ImproperlyConfigured(f"tenant_page: unknown roles {sorted(unknown)} for {name}")
        roles[name] = frozenset(str(role) for role in allowed)
    if Role.AUDITOR not in roles.get("GET", frozenset()):
        raise ImproperlyConfigured("tenant_page: the auditor reads everything; allow it GET")
    for name, allowed in roles.items():
        if name not in SAFE_METHODS and Role.AUDITOR in allowed:
            raise ImproperlyConfigured(f"tenant_page: the auditor changes nothing; not {name}")
    return roles


def membership_for_slug(*, user: User, slug: str) -> Membership | None:
    """``user``'s membership in the active tenant ``slug``, with the tenant loaded; else None."""
    return (
        Membership.objects.select_related("tenant")
        .filter(user=user, tenant__slug=slug, tenant__is_active=True)
        .first()
    )


def _refuse(request: HttpRequest, membership: Membership, action: str) -> NoReturn:
    """Record the refusal in the tenant's log (PCI-DSS 10.2.1.4) and answer 403."""
    audit_record(
        "access.denied",
        tenant=membership.tenant,
        outcome=Outcome.FAILURE,
        request=request,
        resource_type="console",
        resource_id=request.path,
        details={"action": action.lower(), "role": membership.role},
    )
    raise PermissionDenied("Your role does not allow this.")


def require_role(request: TenantRequest, roles: Collection[str], *, action: str) -> None:
    """Refuse (403, audited) unless the caller's role is in ``roles``.

    For a page whose one method carries several actions with different roles (approve and
    withdraw on one form, say); ``tenant_page`` has already admitted the method. The auditor is
    refused whatever ``roles`` says unless the request is a GET.
    """
    allowed = frozenset(str(role) for role in roles)
    auditor_write = request.role == Role.AUDITOR and request.method not in SAFE_METHODS
    if auditor_write or request.role not in allowed:
        _refuse(request, request.membership, action)


def tenant_page(roles_by_method: Mapping[str, Collection[str]]) -> Callable[[View], View]:
    """Make a view a tenant-scoped console page (its URL has a ``slug`` argument).

    Args:
        roles_by_method: the roles allowed per HTTP method, e.g.
            ``{"GET": ALL_ROLES, "POST": {Role.OWNER}}``. HEAD follows GET. A method that is not
            listed answers 405; a role that is not listed for the method answers 403.

    Returns:
        A decorator. The wrapped view has ``console_roles`` (the normalised map), which the
        tests read to check every tenant page.

    Raises:
        ImproperlyConfigured: at decoration time, for an unknown method or role, a map that does
            not let the auditor GET, or one that lets the auditor do anything else.
    """
    roles = _checked(roles_by_method)
    allowed_methods = sorted({*roles, "HEAD"})

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, slug: str, **kwargs: Any) -> HttpResponse:
            # Never a 403 here: a person outside the tenant learns nothing, not even that it
            # exists.
            membership = membership_for_slug(user=cast(User, request.user), slug=slug)
            if membership is None:
                raise Http404("No such tenant.")
            method = (request.method or "").upper()
            wanted = "GET" if method == "HEAD" else method
            if membership.role == Role.AUDITOR and wanted not in SAFE_METHODS:
                _refuse(request, membership, method)
            if wanted not in roles:
                return HttpResponseNotAllowed(allowed_methods)
            if membership.role not in roles[wanted]:
                _refuse(request, membership, method)
            tenant_request = cast(TenantRequest, request)
            tenant_request.tenant = membership.tenant
            tenant_request.role = membership.role
            tenant_request.membership = membership
            return view(request, *args, slug=slug, **kwargs)

        guarded = console_login_required(wrapper)
        guarded.console_roles = roles  # type: ignore[attr-defined]
        return guarded

    return decorator
