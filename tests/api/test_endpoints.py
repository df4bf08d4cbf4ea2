"""Every API endpoint: anonymous 401, other tenant 404, wrong role 403, success."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.api.endpoints import ENDPOINTS
from tests.api.harness import ROLES, Endpoint, World, api_routes, make_side
from vault.tenants.models import Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(request: pytest.FixtureRequest) -> World:
    made = World(mine=make_side("alpha"), other=make_side("beta"))
    callspec = getattr(request.node, "callspec", None)
    endpoint = callspec.params.get("endpoint") if callspec else None
    if endpoint is not None and endpoint.prepare is not None:
        endpoint.prepare(made)
    return made


def _url(endpoint: Endpoint, pk: Any = None) -> str:
    kwargs = {"pk": pk, **endpoint.url_kwargs} if pk is not None else None
    return reverse(endpoint.route, kwargs=kwargs)


def _call(
    endpoint: Endpoint, clear: str | None, url: str, payload: dict[str, Any] | None = None
) -> Any:
    client = APIClient()
    if clear is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {clear}")
    method = getattr(client, endpoint.method.lower())
    if payload is None:
        return method(url)
    if isinstance(payload, bytes):
        return method(url, payload, content_type="application/octet-stream")
    return method(url, payload, format="json")


def _payload(endpoint: Endpoint, world: World, role: str) -> dict[str, Any] | None:
    return endpoint.payload(world, world.mine, role) if endpoint.payload else None


def test_it_covers_every_api_route_and_method() -> None:
    served = api_routes()
    covered = {(e.route, e.method) for e in ENDPOINTS}
    missing = served - covered
    assert not missing, (
        f"endpoints without harness entries in tests/api/endpoints.py: {sorted(missing)}"
    )
    stale = covered - served
    assert not stale, f"harness entries for endpoints that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.id)
def test_it_answers_anonymous_callers_with_401(endpoint: Endpoint, world: World) -> None:
    pk = endpoint.make_object(world, world.mine, Role.OWNER) if endpoint.make_object else None
    response = _call(endpoint, None, _url(endpoint, pk), _payload(endpoint, world, Role.OWNER))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    if endpoint.still_there:
        assert endpoint.still_there(pk)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.id)
def test_it_answers_another_tenants_object_with_404(endpoint: Endpoint, world: World) -> None:
    for role in sorted(endpoint.roles):
        if endpoint.make_object is not None:
            foreign = endpoint.make_object(world, world.other, role)
            response = _call(
                endpoint,
                world.mine.actors[role].clear,
                _url(endpoint, foreign),
                _payload(endpoint, world, role),
            )
            assert response.status_code == 404, (role, response.content)
            assert response.json()["error"]["code"] == "not_found"
            assert endpoint.still_there is not None
            assert endpoint.still_there(foreign)
        else:
            assert endpoint.check_scope is not None, "each entry must check its tenant scope"
            clear = world.mine.actors[role].clear
            response = _call(endpoint, clear, _url(endpoint), _payload(endpoint, world, role))
            assert response.status_code == endpoint.success, (role, response.content)
            endpoint.check_scope(response, world)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.id)
def test_it_refuses_roles_without_permission_with_403(endpoint: Endpoint, world: World) -> None:
    denied = [role for role in ROLES if role not in endpoint.roles]
    for role in denied:
        pk = endpoint.make_object(world, world.mine, role) if endpoint.make_object else None
        response = _call(
            endpoint,
            world.mine.actors[role].clear,
            _url(endpoint, pk),
            _payload(endpoint, world, role),
        )
        assert response.status_code == 403, (role, response.content)
        assert response.json()["error"]["code"] == "role_forbidden"
        if endpoint.still_there:
            assert endpoint.still_there(pk)
    for role, payload, status, code in endpoint.refusals:
        response = _call(endpoint, world.mine.actors[role].clear, _url(endpoint), payload)
        assert response.status_code == status, (role, response.content)
        assert response.json()["error"]["code"] == code
    assert denied or endpoint.refusals or endpoint.roles == frozenset(ROLES)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.id)
def test_it_serves_each_allowed_role(endpoint: Endpoint, world: World) -> None:
    for role in sorted(endpoint.roles):
        pk = endpoint.make_object(world, world.mine, role) if endpoint.make_object else None
        response = _call(
            endpoint,
            world.mine.actors[role].clear,
            _url(endpoint, pk),
            _payload(endpoint, world, role),
        )
        assert response.status_code == endpoint.success, (role, response.content)
        if endpoint.check_scope is not None:
            endpoint.check_scope(response, world)


def test_it_scopes_every_api_view_through_the_one_tenant_filter() -> None:
    """Each view is tenant-scoped, and no viewset bypasses the shared ``get_queryset``."""
    from django.urls import get_resolver

    from vault.api.views import TenantScopedMixin, TenantScopedViewSet

    def views(patterns: list[Any], prefix: str = "") -> list[Any]:
        found = []
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if hasattr(entry, "url_patterns"):
                found += views(entry.url_patterns, route)
            elif route.startswith("api/v1/"):
                found.append(getattr(entry.callback, "cls", None) or entry.callback.view_class)
        return found

    classes = set(views(get_resolver().url_patterns))
    assert classes
    for cls in classes:
        assert issubclass(cls, TenantScopedMixin), cls
        if issubclass(cls, TenantScopedViewSet):
            assert cls.get_queryset is TenantScopedViewSet.get_queryset, cls
