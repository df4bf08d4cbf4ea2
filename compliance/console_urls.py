"""The compliance pages of the console, under ``console/t/<slug>/compliance/``.

Wired into the root URLconf (``vault.urls``) under the ``compliance`` namespace; every view is a
``vault.console.tenancy.tenant_page``.
"""

from __future__ import annotations

from django.urls import path

from compliance import console

app_name = "compliance"

PREFIX = "console/t/<slug:slug>/compliance/"

urlpatterns = [
    path(PREFIX, console.runs, name="runs"),
    path(f"{PREFIX}runs/<uuid:run_id>/", console.run_detail, name="run"),
    path(f"{PREFIX}runs/<uuid:run_id>/export/", console.run_export, name="run_export"),
    path(f"{PREFIX}evidence/<str:sha256>/", console.evidence, name="evidence"),
    path(f"{PREFIX}waivers/", console.waivers, name="waivers"),
    path(f"{PREFIX}attestations/", console.attestations, name="attestations"),
]
