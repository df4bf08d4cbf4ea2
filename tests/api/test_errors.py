"""One error shape, with a stable code and the request id, for every API error."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import make_membership
from vault.tenants.api import views as tenant_views
from vault.tenants.models import Role
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return make_membership(role=Role.OWNER)


@pytest.fixture
def client(owner):
    issued = token_create(tenant=owner.tenant, name="t", role=Role.OWNER, user=owner.user)
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    return api


def _assert_shape(response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]


def test_unknown_api_paths_answer_404_in_the_error_shape(client) -> None:
    _assert_shape(client.get("/api/v1/no-such-thing/"), 404, "not_found")
    _assert_shape(client.get("/api/v1/members/not-a-number/"), 404, "not_found")


def test_crashes_answer_500_in_the_error_shape(client, monkeypatch) -> None:
    def explode(self, request):
        raise RuntimeError("boom")

    monkeypatch.setattr(tenant_views.TenantView, "get", explode)
    response = client.get("/api/v1/tenant/")
    _assert_shape(response, 500, "server_error")
    assert "boom" not in response.content.decode()


def test_wrong_methods_and_bodies_answer_in_the_error_shape(client) -> None:
    _assert_shape(client.put("/api/v1/tenant/", {}, format="json"), 405, "method_not_allowed")
    response = client.generic(
        "POST", "/api/v1/members/", "{not json", content_type="application/json"
    )
    _assert_shape(response, 400, "parse_error")
    response = client.generic("POST", "/api/v1/members/", "a=b", content_type="text/plain")
    _assert_shape(response, 415, "unsupported_media_type")


def test_a_well_formed_incoming_request_id_is_kept(client) -> None:
    response = client.get("/api/v1/tenant/", HTTP_X_REQUEST_ID="abc-123-def")
    assert response["X-Request-ID"] == "abc-123-def"
    response = client.get("/api/v1/tenant/", HTTP_X_REQUEST_ID="<script>")
    assert response["X-Request-ID"] != "<script>"


def test_lists_are_paginated(client, owner) -> None:
    first = client.get("/api/v1/members/").json()
    assert {"count", "next", "previous", "results"} <= set(first)
    for _ in range(3):
        make_membership(tenant=owner.tenant)
    page = client.get("/api/v1/members/?page_size=2").json()
    assert page["count"] == 4
    assert len(page["results"]) == 2
    assert page["next"]
    _assert_shape(client.get("/api/v1/members/?page=99"), 404, "not_found")


def test_every_response_carries_the_security_headers(client) -> None:
    response = client.get("/api/v1/tenant/")
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_head_and_options_answer_any_member_of_the_tenant(owner) -> None:
    auditor = make_membership(tenant=owner.tenant, role=Role.AUDITOR)
    issued = token_create(tenant=owner.tenant, name="t", role=Role.AUDITOR, user=auditor.user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    assert api.head("/api/v1/tenant/").status_code == 200
    assert api.head("/api/v1/members/").status_code == 200
    assert api.options("/api/v1/tenant/").status_code == 200
    assert APIClient().options("/api/v1/tenant/").status_code == 401


def test_error_log_lines_carry_the_request_id(client, caplog) -> None:
    with caplog.at_level("WARNING", logger="django.request"):
        response = client.get("/api/v1/members/999999/")
    assert response.status_code == 404
    request_id = response["X-Request-ID"]
    records = [r for r in caplog.records if r.name == "django.request"]
    assert records
    assert all(getattr(r, "request_id", None) == request_id for r in records)
