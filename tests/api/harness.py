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

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.apps import apps
from django.db.models import Model, QuerySet
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
    user: User | None
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
    # Put in front of every unique name while set: the isolation tests plant a marker in every
    # name made for the other tenant, then look for it in the answers the caller gets.
    prefix: str = ""

    def unique(self, stem: str) -> str:
        self.counter[0] += 1
        return f"{self.prefix}{stem}{self.counter[0]}"


def make_actor(*, tenant: Tenant, role: str, user: User | None) -> Actor:
    """A token of ``role`` in ``tenant``: a person's (already a member), or, with no user, an
    integration token that acts for nobody (as ``manage.py token_create`` makes)."""
    name = f"{role} token" if user is not None else f"{role} integration"
    issued = token_create(tenant=tenant, name=name, role=role, user=user)
    return Actor(role=role, user=user, token=issued.token, clear=issued.clear)


def make_side(slug: str) -> Side:
    tenant = Tenant.objects.create(slug=slug, name=slug.title())
    actors = {}
    for role in ROLES:
        user = User.objects.create_user(email=f"{role}@{slug}.example")
        Membership.objects.create(tenant=tenant, user=user, role=role)
        actors[role] = make_actor(tenant=tenant, role=role, user=user)
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return Side(tenant=tenant, actors=actors)


@functools.cache
def _tenant_path(model: type[Model], depth: int = 3) -> str | None:
    """The shortest lookup from ``model`` to the tenant it belongs to, through forward foreign
    keys (None for models that belong to no tenant)."""
    if model is Tenant:
        return "pk"
    found: list[str] = []
    for entry in model._meta.get_fields():
        if not (entry.is_relation and entry.concrete and (entry.many_to_one or entry.one_to_one)):
            continue
        related = entry.related_model
        if related is Tenant:
            return entry.name
        if depth > 1 and isinstance(related, type) and related is not model:
            rest = _tenant_path(related, depth - 1)
            if rest is not None:
                found.append(f"{entry.name}__{rest}")
    return min(found, key=lambda path: path.count("__")) if found else None


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def _tenant_rows(model: type[Model], tenant: Tenant) -> QuerySet[Any] | None:
    """The rows of ``model`` that belong to ``tenant`` (None: the model belongs to no tenant)."""
    path = _tenant_path(model)
    if path is not None:
        return model._default_manager.filter(**{path: tenant.pk})
    if model is User:
        return model._default_manager.filter(memberships__tenant=tenant)
    if any(f.name == "log" and not f.is_relation for f in model._meta.concrete_fields):
        return model._default_manager.filter(log=f"t{tenant.pk}")  # the tenant's audit log
    return None


def tenant_state(tenant: Tenant, *, full: bool = True) -> dict[str, Any]:
    """Everything that belongs to ``tenant``, to compare before and after another tenant's
    attempts: every row that leads to it by foreign keys (objects, versions, upload sessions and
    parts, keys, members, tokens, approvals and votes, campaigns, compliance records, ...), the
    rows of its audit log (so its event count too), its members' accounts, and its stored files
    (each with its SHA-256). With ``full=False``: only how many rows of each model and which
    files with what sizes, which is enough after a read and much cheaper."""
    from django.core.files.storage import storages

    state: dict[str, Any] = {}
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        rows = _tenant_rows(model, tenant)
        if rows is None:
            continue
        if not full:
            state[model._meta.label] = rows.count()
            continue
        state[model._meta.label] = [
            tuple(_plain(v) for v in row) for row in rows.order_by("pk").values_list()
        ]
    # Stored files: every name lives under the tenant's directory (``<tenant pk>/...``).
    root = Path(storages["default"].path("")) / str(tenant.pk)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    state["files"] = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if full
        else p.stat().st_size
        for p in files
    }
    return state


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
    # The body that would succeed on the object with this pk, where ``payload`` cannot know the
    # object (the isolation matrix sends it at another tenant's object).
    object_payload: Callable[[Any], Any] | None = None

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
