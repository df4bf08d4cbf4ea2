"""The compliance pages of the console (contributed by the compliance app): runs, the requirement
matrix, evidence, exports, waivers and attestations, by role.

Owners, custodians and auditors read; owners and custodians act; members are refused (403, as
over the API); a person of another tenant gets 404 (PCI-DSS 7.2.1, 7.2.2). Every change goes
through the compliance services, which record it in the tenant's audit log (PCI-DSS 10.2.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from compliance import services
from compliance.console import findings_chart
from compliance.engine import compliance_run, run_start
from compliance.models import (
    Attestation,
    ComplianceRun,
    Evidence,
    RunState,
    Trigger,
    Waiver,
    WaiverState,
)
from tests.console.conftest import sign_in
from tests.console.test_templates import check_page
from tests.factories import make_membership, make_tenant, make_user
from vault.accounts.models import User
from vault.audit.models import AuditEvent
from vault.console.registry import nav_entries
from vault.tenants.models import Role, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _jobs_run_at_once() -> Iterator[None]:
    """The run's job runs in the request, as under the embedded default."""
    from vault.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


def _bound_tenant(slug: str = "acme") -> Tenant:
    tenant = make_tenant(slug=slug, name=slug.title())
    call_command("tenant_bind_backend", "--tenant", slug, "--backend", "local", stdout=StringIO())
    return tenant


@pytest.fixture
def acme() -> Tenant:
    return _bound_tenant("acme")


def _person(tenant: Tenant, role: str) -> User:
    user = make_user()
    TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    make_membership(tenant=tenant, user=user, role=role)
    return user


def _as(tenant: Tenant, role: str) -> tuple[Client, User]:
    user = _person(tenant, role)
    client = Client()
    assert sign_in(client, TOTPDevice.objects.get(user=user), email=user.email).status_code == 302
    return client, user


def _url(name: str, tenant: Tenant, **kwargs: object) -> str:
    return reverse(f"compliance:{name}", kwargs={"slug": tenant.slug, **kwargs})


def _events(tenant: Tenant, kind: str) -> int:
    return AuditEvent.objects.filter(tenant=tenant, type=kind).count()


# --- navigation ----------------------------------------------------------------------------------


def test_console_compliance_is_in_the_navigation_of_readers_only():
    entry = next(e for e in nav_entries() if e.url_name == "compliance:runs")
    assert entry.order == 60
    assert entry.roles == {Role.OWNER, Role.CUSTODIAN, Role.AUDITOR}


def test_console_compliance_pages_refuse_members_as_the_api_does(acme):
    run = compliance_run(acme)
    member, _ = _as(acme, Role.MEMBER)
    for url in (
        _url("runs", acme),
        _url("run", acme, run_id=run.pk),
        _url("waivers", acme),
        _url("attestations", acme),
    ):
        assert member.get(url).status_code == 403, url
    assert (
        'href="/console/t/acme/compliance/"'
        not in member.get(reverse("console:dashboard", kwargs={"slug": "acme"})).content.decode()
    )


# --- runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.CUSTODIAN])
def test_console_compliance_run_starts_from_the_button(acme, role):
    client, user = _as(acme, role)
    page = client.get(_url("runs", acme))
    check_page(page)
    assert "Run the checks now" in page.content.decode()
    response = client.post(_url("runs", acme))
    run = ComplianceRun.objects.get(tenant=acme)
    assert response.status_code == 302
    assert response["Location"] == _url("run", acme, run_id=run.pk)
    assert run.state == RunState.FINISHED
    assert run.trigger == Trigger.API
    assert run.requested_by == user.email
    assert _events(acme, "compliance.run") == 1
    detail = client.get(response["Location"])
    check_page(detail)
    content = detail.content.decode()
    assert "The checks ran." in content
    assert re.search(
        r"<th scope=\"row\">3\.6\.1\.2</th>\s*<td>[^<]+</td>\s*<td><span "
        r"class=\"finding finding-not_in_place\">Not in Place",
        content,
    )


def test_console_compliance_run_in_progress_is_shown_instead_of_a_second(acme):
    running = run_start(acme, trigger=Trigger.API)
    client, _ = _as(acme, Role.OWNER)
    page = client.get(_url("runs", acme)).content.decode()
    assert "Run the checks now" not in page
    assert _url("run", acme, run_id=running.pk) in page
    response = client.post(_url("runs", acme))
    assert response["Location"] == _url("run", acme, run_id=running.pk)
    assert ComplianceRun.objects.filter(tenant=acme).count() == 1


def test_console_compliance_auditor_reads_runs_but_cannot_start_one(acme):
    compliance_run(acme)
    auditor, _ = _as(acme, Role.AUDITOR)
    page = auditor.get(_url("runs", acme))
    parser = check_page(page)
    assert len(parser.forms) == 1  # the sign-out form of the top bar, nothing else
    assert "Run the checks now" not in page.content.decode()
    assert auditor.post(_url("runs", acme)).status_code == 403
    assert ComplianceRun.objects.filter(tenant=acme).count() == 1
    assert AuditEvent.objects.filter(type="access.denied", tenant=acme).exists()


def test_console_compliance_outsider_gets_404_and_starts_nothing(acme):
    run = compliance_run(acme)
    beta = _bound_tenant("beta")
    outsider, _ = _as(beta, Role.OWNER)
    for url in (
        _url("runs", acme),
        _url("run", acme, run_id=run.pk),
        _url("run_export", acme, run_id=run.pk) + "?type=json",
        _url("waivers", acme),
        _url("attestations", acme),
    ):
        assert outsider.get(url).status_code == 404, url
    assert outsider.post(_url("runs", acme)).status_code == 404
    assert ComplianceRun.objects.filter(tenant=acme).count() == 1
    # Another tenant's run through one's own tenant's URL: not found either.
    assert outsider.get(_url("run", beta, run_id=run.pk)).status_code == 404
    assert outsider.get(_url("run_export", beta, run_id=run.pk)).status_code == 404


def test_console_compliance_chart_stacks_the_findings_of_each_run(acme):
    first = compliance_run(acme)
    second = compliance_run(acme)
    chart = findings_chart([second, first])
    assert [bar.run for bar in chart["bars"]] == [first, second]
    for bar, run in zip(chart["bars"], (first, second), strict=True):
        assert bar.total == sum(run.summary["requirements"].values())
        heights = [segment[3] for segment in bar.segments]
        assert sum(heights) == pytest.approx(chart["height"], abs=4)
    client, _ = _as(acme, Role.AUDITOR)
    content = client.get(_url("runs", acme)).content.decode()
    assert content.count('<g class="chart-bar">') == 2
    assert 'class="finding-not-in-place"' in content
    assert 'id="chart-data"' in content


# --- run detail, evidence, exports ---------------------------------------------------------------


def test_console_compliance_run_detail_links_the_evidence_of_the_tenant(acme):
    run = compliance_run(acme)
    auditor, _ = _as(acme, Role.AUDITOR)
    content = auditor.get(_url("run", acme, run_id=run.pk)).content.decode()
    digest = next(d for r in run.results.all() for d in r.evidence)
    evidence_url = _url("evidence", acme, sha256=digest)
    assert evidence_url in content
    assert "Request a waiver" not in content  # the auditor asks for nothing
    page = auditor.get(evidence_url)
    check_page(page)
    assert digest in page.content.decode()
    # The same digest under another tenant's name is not found, even for its own owner.
    beta = _bound_tenant("beta")
    outsider, _ = _as(beta, Role.OWNER)
    assert outsider.get(_url("evidence", beta, sha256=digest)).status_code == 404
    assert not Evidence.objects.filter(tenant=beta, sha256=digest).exists()


def test_console_compliance_run_detail_offers_waivers_for_failing_findings(acme):
    run = compliance_run(acme)
    owner, _ = _as(acme, Role.OWNER)
    content = owner.get(_url("run", acme, run_id=run.pk)).content.decode()
    key001 = run.results.filter(check_id="KEY-001", status="FAIL").first()
    assert key001 is not None
    assert f"?check=KEY-001&amp;finding={key001.finding_id}" in content
    page = owner.get(_url("waivers", acme) + f"?check=KEY-001&finding={key001.finding_id}")
    check_page(page)
    assert f'value="{key001.finding_id}"' in page.content.decode()


@pytest.mark.parametrize(
    ("fmt", "magic"), [("json", b"{"), ("csv", b"framework,"), ("pdf", b"%PDF-")]
)
def test_console_compliance_exports_download_and_are_audited(acme, fmt, magic):
    run = compliance_run(acme)
    auditor, _ = _as(acme, Role.AUDITOR)
    response = auditor.get(_url("run_export", acme, run_id=run.pk) + f"?type={fmt}")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert "attachment;" in response["Content-Disposition"]
    assert response.content.startswith(magic)
    event = AuditEvent.objects.filter(tenant=acme, type="compliance.report.export").get()
    assert f'"format":"{fmt}"'.encode() in bytes(event.leaf)


def test_console_compliance_export_refusal_is_shown_with_its_code(acme):
    running = run_start(acme, trigger=Trigger.API)
    owner, _ = _as(acme, Role.OWNER)
    response = owner.get(_url("run_export", acme, run_id=running.pk) + "?type=pdf", follow=True)
    assert response.redirect_chain[-1][0] == _url("run", acme, run_id=running.pk)
    assert "(run_not_finished)" in response.content.decode()
    assert owner.get(_url("run_export", acme, run_id=running.pk) + "?type=xlsx").status_code == 404
    assert _events(acme, "compliance.report.export") == 0


# --- waivers -------------------------------------------------------------------------------------

WAIVER = {
    "action": "request",
    "check_id": "KEY-001",
    "finding_id": "",
    "justification": "the HSM arrives in March",
    "compensating_control": "keys in the local keystore on an encrypted disk",
    "days": "60",
}


def _waiver(tenant: Tenant, requester: User) -> Waiver:
    return services.waiver_request(
        tenant=tenant,
        user=requester,
        check_id="KEY-001",
        justification="the HSM arrives in March",
        days=60,
    )


@pytest.mark.parametrize("role", [Role.OWNER, Role.CUSTODIAN])
def test_console_compliance_waiver_request_by_owner_or_custodian(acme, role):
    client, user = _as(acme, role)
    check_page(client.get(_url("waivers", acme)))
    response = client.post(_url("waivers", acme), WAIVER)
    assert response.status_code == 302
    waiver = Waiver.objects.get(tenant=acme)
    assert (waiver.check_id, waiver.requested_by, waiver.state) == (
        "KEY-001",
        user,
        WaiverState.PENDING,
    )
    assert _events(acme, "compliance.waiver.request") == 1
    assert "waiting for 2 approvals" in client.get(response["Location"]).content.decode()


def test_console_compliance_waiver_request_refusals_keep_the_form(acme):
    client, _ = _as(acme, Role.OWNER)
    response = client.post(_url("waivers", acme), {**WAIVER, "check_id": "IAM-002"})
    assert response.status_code == 400  # a manual check is not among the choices
    response = client.post(_url("waivers", acme), {**WAIVER, "finding_id": "xyz"})
    assert response.status_code == 400
    assert "finding_id is a finding" in response.content.decode()
    assert not Waiver.objects.filter(tenant=acme).exists()


def test_console_compliance_waiver_needs_two_others_to_approve(acme):
    requester, asker = _as(acme, Role.CUSTODIAN)
    waiver = _waiver(acme, asker)
    decide = {"action": "decide", "waiver": str(waiver.pk), "decision": "approve"}
    # The requester sees no approve button, and the server refuses the post anyway.
    page = requester.get(_url("waivers", acme)).content.decode()
    assert f"Approve waiver {waiver.pk}" not in page
    response = requester.post(_url("waivers", acme), decide, follow=True)
    assert "(self_approval)" in response.content.decode()
    first, _ = _as(acme, Role.OWNER)
    assert f"Approve waiver {waiver.pk}" in first.get(_url("waivers", acme)).content.decode()
    first.post(_url("waivers", acme), decide)
    waiver.refresh_from_db()
    assert waiver.state == WaiverState.PENDING
    again = first.post(_url("waivers", acme), decide, follow=True)
    assert "(already_decided)" in again.content.decode()
    second, _ = _as(acme, Role.CUSTODIAN)
    second.post(_url("waivers", acme), {**decide, "reason": "key ceremony on record"})
    waiver.refresh_from_db()
    assert waiver.state == WaiverState.ACTIVE
    assert _events(acme, "compliance.waiver.approve") == 2


def test_console_compliance_waiver_reject_and_revoke(acme):
    _, asker = _as(acme, Role.CUSTODIAN)
    rejected = _waiver(acme, asker)
    revoked = _waiver(acme, asker)
    owner, _ = _as(acme, Role.OWNER)
    owner.post(
        _url("waivers", acme),
        {"action": "decide", "waiver": str(rejected.pk), "decision": "reject", "reason": "no"},
    )
    owner.post(_url("waivers", acme), {"action": "revoke", "waiver": str(revoked.pk)})
    rejected.refresh_from_db()
    revoked.refresh_from_db()
    assert (rejected.state, revoked.state) == (WaiverState.REJECTED, WaiverState.REVOKED)
    assert _events(acme, "compliance.waiver.reject") == 1
    assert _events(acme, "compliance.waiver.revoke") == 1


@pytest.mark.parametrize(
    "data",
    [
        WAIVER,
        {"action": "decide", "decision": "approve"},
        {"action": "revoke"},
    ],
    ids=["request", "decide", "revoke"],
)
def test_console_compliance_waiver_posts_of_auditor_and_outsider_change_nothing(acme, data):
    _, asker = _as(acme, Role.CUSTODIAN)
    waiver = _waiver(acme, asker)
    data = {**data, "waiver": str(waiver.pk)}
    auditor, _ = _as(acme, Role.AUDITOR)
    assert auditor.post(_url("waivers", acme), data).status_code == 403
    beta = _bound_tenant("beta")
    outsider, _ = _as(beta, Role.OWNER)
    assert outsider.post(_url("waivers", acme), data).status_code == 404
    if data["action"] != "request":
        # Another tenant's waiver through one's own tenant's page: not found.
        assert outsider.post(_url("waivers", beta), data).status_code == 404
    waiver.refresh_from_db()
    assert waiver.state == WaiverState.PENDING
    assert not waiver.approvals.exists()
    assert Waiver.objects.count() == 1


def test_console_compliance_waiver_page_shows_the_auditor_no_form(acme):
    _, asker = _as(acme, Role.CUSTODIAN)
    _waiver(acme, asker)
    auditor, _ = _as(acme, Role.AUDITOR)
    parser = check_page(auditor.get(_url("waivers", acme)))
    assert len(parser.forms) == 1  # sign-out only


# --- attestations --------------------------------------------------------------------------------

ATTESTATION = {
    "requirement": "7.2.4",
    "kind": "access_review",
    "statement": "Reviewed every account and its role on 1 March.",
    "valid_days": "180",
    "document_sha256": "",
}


@pytest.mark.parametrize("role", [Role.OWNER, Role.CUSTODIAN])
def test_console_compliance_attestation_is_signed_by_owner_or_custodian(acme, role):
    client, user = _as(acme, role)
    check_page(client.get(_url("attestations", acme)))
    response = client.post(_url("attestations", acme), ATTESTATION)
    assert response.status_code == 302
    item = Attestation.objects.get(tenant=acme)
    assert (item.requirement, item.signer) == ("7.2.4", user)
    assert services.attestation_verifies(item)
    assert _events(acme, "compliance.attest") == 1
    page = client.get(response["Location"]).content.decode()
    assert "Reviewed every account" in page


def test_console_compliance_attestation_refusals_and_other_roles(acme):
    owner, _ = _as(acme, Role.OWNER)
    bad = owner.post(_url("attestations", acme), {**ATTESTATION, "document_sha256": "ab"})
    assert bad.status_code == 400
    assert "document_sha256 is 64" in bad.content.decode()
    auditor, _ = _as(acme, Role.AUDITOR)
    parser = check_page(auditor.get(_url("attestations", acme)))
    assert len(parser.forms) == 1
    assert auditor.post(_url("attestations", acme), ATTESTATION).status_code == 403
    member, _ = _as(acme, Role.MEMBER)
    assert member.post(_url("attestations", acme), ATTESTATION).status_code == 403
    beta = _bound_tenant("beta")
    outsider, _ = _as(beta, Role.OWNER)
    assert outsider.post(_url("attestations", acme), ATTESTATION).status_code == 404
    assert not Attestation.objects.exists()
    assert _events(acme, "compliance.attest") == 0
