"""A reusable API test harness: every endpoint gets the same four kinds of test.

For each (route, method) of ``/api/v1/`` one ``Endpoint`` entry says which roles may call it,
what success looks like, how to make an object of the caller's tenant for detail routes, and how
to check that a list or singleton answer holds the caller's tenant only. ``test_endpoints.py``
turns each entry into: anonymous -> 401, another tenant's object -> 404 (and unchanged),
each role not allowed -> 403, each allowed role -> success. A walk over the URL configuration
fails the suite when a route or method has no entry here, so a new endpoint cannot ship
without these cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

from vault.accounts.models import User
from vault.keys.services import tenant_bind_backend
from vault.tenants.models import Membership, Role, Tenant
from vault.tokens.models import ApiToken
from vault.tokens.services import token_create

ROLES = tuple(Role.values)


@dataclass
class Actor:
    role: str
    user: User
    token: ApiToken
    clear: str


@dataclass
class Side:
    """One tenant of the two-tenant world, with one actor per role."""

    tenant: Tenant
    actors: dict[str, Actor]


@dataclass
class World:
    mine: Side
    other: Side
    counter: list[int] = field(default_factory=lambda: [0])

    def unique(self, stem: str) -> str:
        self.counter[0] += 1
        return f"{stem}{self.counter[0]}"


def make_side(slug: str) -> Side:
    tenant = Tenant.objects.create(slug=slug, name=slug.title())
    actors = {}
    for role in ROLES:
        user = User.objects.create_user(email=f"{role}@{slug}.example")
        Membership.objects.create(tenant=tenant, user=user, role=role)
        issued = token_create(tenant=tenant, name=f"{role} token", role=role, user=user)
        actors[role] = Actor(role=role, user=user, token=issued.token, clear=issued.clear)
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return Side(tenant=tenant, actors=actors)


# make_object(world, side, role) -> the object's pk, made in ``side``'s tenant so that the actor of
# ``role`` in that tenant may see it (for tokens: that actor's own token).
ObjectMaker = Callable[[World, Side, str], Any]
Payload = Callable[[World, Side, str], Any]  # a dict is sent as JSON, bytes as a raw body
Check = Callable[[Any, World], None]


@dataclass
class Endpoint:
    route: str  # namespaced route name, e.g. "v1:member-detail"
    method: str
    roles: frozenset[str]
    success: int
    make_object: ObjectMaker | None = None
    payload: Payload | None = None
    check_scope: Check | None = None
    # Extra refusals that depend on the request, not only on the role: (role, payload, status, code)
    refusals: list[tuple[str, dict[str, Any], int, str]] = field(default_factory=list)
    # Whether the object still exists unchanged after another tenant's failed attempt.
    still_there: Callable[[Any], bool] | None = None
    # Further URL arguments besides the object's pk.
    url_kwargs: dict[str, Any] = field(default_factory=dict)
    # Data to create before the calls (for lists: something in each tenant to find or not).
    prepare: Callable[[World], Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}"


def api_routes() -> set[tuple[str, str]]:
    """Every (namespaced route name, HTTP method) served under /api/v1/."""
    found: set[tuple[str, str]] = set()

    def walk(patterns: list[Any], prefix: str, namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                ns = namespace
                if entry.namespace:
                    ns = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
                walk(entry.url_patterns, prefix + str(entry.pattern), ns)
            elif isinstance(entry, URLPattern):
                route = prefix + str(entry.pattern)
                if not route.lstrip("^").startswith("api/v1/"):
                    continue
                name = f"{namespace}:{entry.name}" if namespace else str(entry.name)
                for method in _methods(entry.callback):
                    found.add((name, method))

    walk(get_resolver().url_patterns, "", "")
    return found


def _methods(callback: Any) -> list[str]:
    actions = getattr(callback, "actions", None)
    if actions:
        return sorted(m.upper() for m in actions if m not in ("head", "options"))
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is None:
        return ["GET"]
    return sorted(
        m.upper()
        for m in view_class.http_method_names
        if m not in ("head", "options") and hasattr(view_class, m)
    )
