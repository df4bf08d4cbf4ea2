"""The OpenAPI schema: generated without warnings, committed up to date, served with its UI."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.yaml"


def test_the_schema_has_no_warnings_and_the_committed_copy_is_current(tmp_path) -> None:
    generated = tmp_path / "openapi.yaml"
    call_command(
        "spectacular", "--fail-on-warn", "--validate", "--file", str(generated), stderr=StringIO()
    )
    assert COMMITTED.read_text() == generated.read_text(), (
        "docs/openapi.yaml is stale; regenerate it with `make schema`"
    )


@pytest.mark.django_db
def test_the_schema_is_served_without_authentication(client) -> None:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/tenant/" in schema["paths"]
    assert "bearerToken" in schema["components"]["securitySchemes"]
    yaml = client.get("/api/schema/")
    assert yaml.status_code == 200
    assert b"openapi: 3" in yaml.content


@pytest.mark.django_db
def test_the_swagger_ui_is_served_by_the_project_not_a_cdn(client) -> None:
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn" not in html.lower()
    assert "<script>" not in html, "inline scripts would break the Content-Security-Policy"
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200
