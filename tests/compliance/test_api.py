"""Compliance over the API: a run from start to export, waivers and attestations by people."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from compliance.models import ComplianceRun, Waiver
from tests.objects.test_objects import _client as _api_client
from vault.tenants.models import Role
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _jobs_run_at_once() -> Iterator[None]:
    """These tests are about the API, not the queue: the run's job runs in the request, as
    under the embedded default (with Redis, a worker would take it from the queue)."""
    from vault.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


def test_asking_again_while_a_run_is_in_progress_answers_with_that_run() -> None:
    from compliance.engine import run_start
    from compliance.models import Trigger

    owner = _client(Role.OWNER)
    running = run_start(owner.tenant, trigger=Trigger.API)
    response = owner.post("/api/v1/compliance/runs/")
    assert response.status_code == 202
    assert response.json()["id"] == str(running.pk)
    assert ComplianceRun.objects.filter(tenant=owner.tenant).count() == 1


def _client(role: str, tenant: Any = None) -> Any:
    """A client with a person's token of ``role`` (``.tenant``, ``.user_email`` attached)."""
    return _api_client(role, tenant=tenant)


def _same_tenant(client: Any, role: str) -> Any:
    return _client(role, tenant=client.tenant)


def test_a_run_started_over_the_api_finishes_and_exports_in_every_format() -> None:
    owner = _client(Role.OWNER)
    started = owner.post("/api/v1/compliance/runs/")
    assert started.status_code == 202, started.content
    run_id = started.json()["id"]
    # Without a broker the job runs at once; with one, a worker would (poll until finished).
    detail = owner.get(f"/api/v1/compliance/runs/{run_id}/").json()
    assert detail["state"] == "finished"
    assert detail["trigger"] == "api"
    statuses = {r["check_id"]: r["status"] for r in detail["results"]}
    assert statuses["KEY-001"] == "FAIL"  # the local keystore is no secure device
    findings = {r["ref"]: r["finding"] for r in detail["requirements"]}
    assert findings["3.6.1.2"] == "NOT_IN_PLACE"
    auditor = _same_tenant(owner, Role.AUDITOR)
    for fmt, media, magic in (
        ("json", "application/json", b"{"),
        ("csv", "text/csv; charset=utf-8", b"framework,"),
        ("pdf", "application/pdf", b"%PDF-"),
        ("pack", "application/zip", b"PK\x03\x04"),
    ):
        response = auditor.get(f"/api/v1/compliance/runs/{run_id}/export/?type={fmt}")
        assert response.status_code == 200, (fmt, response.content[:300])
        assert response["Content-Type"] == media
        assert response["Cache-Control"] == "no-store"
        assert response.content.startswith(magic), fmt
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert "manifest.sig" in names
    bad = auditor.get(f"/api/v1/compliance/runs/{run_id}/export/?type=xlsx")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_format"


def test_members_cannot_read_runs_and_other_tenants_runs_are_not_found() -> None:
    owner = _client(Role.OWNER)
    run_id = owner.post("/api/v1/compliance/runs/").json()["id"]
    member = _same_tenant(owner, Role.MEMBER)
    assert member.get(f"/api/v1/compliance/runs/{run_id}/").status_code == 403
    stranger = _client(Role.OWNER)
    response = stranger.get(f"/api/v1/compliance/runs/{run_id}/export/?type=json")
    assert response.status_code == 404
    assert ComplianceRun.objects.filter(tenant=stranger.tenant).count() == 0


def test_a_waiver_through_the_api_needs_two_other_people() -> None:
    requester = _client(Role.CUSTODIAN)
    asked = requester.post(
        "/api/v1/compliance/waivers/",
        {"check_id": "KEY-001", "justification": "the HSM arrives in March", "days": 60},
        format="json",
    )
    assert asked.status_code == 201, asked.content
    waiver = asked.json()
    assert waiver["state"] == "pending"
    url = f"/api/v1/compliance/waivers/{waiver['id']}/decide/"
    itself = requester.post(url, {"approve": True}, format="json")
    assert itself.status_code == 403
    assert itself.json()["error"]["code"] == "self_approval"
    first = _same_tenant(requester, Role.OWNER)
    assert first.post(url, {"approve": True}, format="json").json()["state"] == "pending"
    again = first.post(url, {"approve": True}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_decided"
    second = _same_tenant(requester, Role.CUSTODIAN)
    decided = second.post(
        url, {"approve": True, "reason": "compensating: key ceremony"}, format="json"
    )
    assert decided.json()["state"] == "active"
    assert len(decided.json()["approvals"]) == 2
    run_id = first.post("/api/v1/compliance/runs/").json()["id"]
    detail = first.get(f"/api/v1/compliance/runs/{run_id}/").json()
    key_001 = [r for r in detail["results"] if r["check_id"] == "KEY-001"]
    assert {r["status"] for r in key_001} == {"WAIVED"}
    assert {r["waiver"] for r in key_001} == {waiver["id"]}


def test_integration_tokens_cannot_waive_or_attest() -> None:
    owner = _client(Role.OWNER)
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.OWNER, user=None)
    robot = APIClient()
    robot.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    for url, body in (
        (
            "/api/v1/compliance/waivers/",
            {"check_id": "KEY-001", "justification": "a robot decided so", "days": 5},
        ),
        (
            "/api/v1/compliance/attestations/",
            {
                "requirement": "7.2.4",
                "kind": "access_review",
                "statement": "All fine, says the robot.",
                "valid_days": 30,
            },
        ),
    ):
        response = robot.post(url, body, format="json")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "person_required"
    assert not Waiver.objects.exists()


def test_an_attestation_over_the_api_is_signed_and_counts_in_the_next_run() -> None:
    owner = _client(Role.OWNER)
    made = owner.post(
        "/api/v1/compliance/attestations/",
        {
            "requirement": "7.2.4",
            "kind": "access_review",
            "statement": "Reviewed all members and tokens on 2026-11-27.",
            "valid_days": 183,
        },
        format="json",
    )
    assert made.status_code == 201, made.content
    body = json.loads(made.json()["body"])
    assert body["signer"] == owner.user_email
    assert made.json()["signing_key"]
    run_id = owner.post("/api/v1/compliance/runs/").json()["id"]
    detail = owner.get(f"/api/v1/compliance/runs/{run_id}/").json()
    findings = {r["ref"]: r for r in detail["requirements"]}
    assert findings["7.2.4"]["finding"] == "IN_PLACE"
    assert findings["7.2.4"]["attestations"] == [made.json()["id"]]
    unknown = owner.post(
        "/api/v1/compliance/attestations/",
        {"requirement": "99.9", "kind": "other", "statement": "Nothing at all.", "valid_days": 1},
        format="json",
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_requirement"


def test_the_report_ca_is_served_to_any_member() -> None:
    member = _client(Role.MEMBER)
    response = member.get("/api/v1/compliance/ca/")
    assert response.status_code == 200
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(response.json()["fingerprint"]) == 64
