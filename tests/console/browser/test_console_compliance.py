"""The compliance pages in a real browser: an owner runs the checks and downloads the signed PDF;
a custodian asks for a waiver and two others approve it; an auditor opens every page and finds no
form that changes anything; a person of another tenant finds nothing."""

from __future__ import annotations

from pathlib import Path

from compliance import services
from compliance.engine import compliance_run
from compliance.models import ComplianceRun, RunState, Waiver, WaiverState
from compliance.tasks import evaluate
from vault.keys.services import tenant_bind_backend
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create


def _tenant(slug: str = "acme", name: str = "Acme Payments") -> Tenant:
    tenant = tenant_create(slug=slug, name=name)
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return tenant


def _row(page, section: str, heading: str) -> str:
    """The text of the row headed ``heading`` in the table of section ``section``."""
    row = page.locator(f"#{section} tbody tr").filter(
        has=page.get_by_role("rowheader", name=heading, exact=True)
    )
    return " ".join(row.first.inner_text().split())


def _sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login/**")


def test_console_compliance_owner_runs_the_checks_and_downloads_the_pdf(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _tenant()
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    sign_in(page, owner)
    page.get_by_role("link", name="Compliance", exact=True).click()
    page.wait_for_url("**/console/t/acme/compliance/")
    assert page.get_by_text("No run has finished for this tenant yet.").is_visible()
    screenshot(page, "runs-empty")

    page.get_by_role("button", name="Run the checks now").click()
    page.wait_for_url("**/compliance/runs/*/")
    run = ComplianceRun.objects.get(tenant=tenant)
    assert run.requested_by == owner.email
    if run.state == RunState.RUNNING:
        # With a broker (Redis) the run is a queued job: the page says so, a worker runs it
        # (here the test, as the worker would), and a reload shows the findings.
        assert page.get_by_text("The checks are running.").is_visible()
        screenshot(page, "run-running")
        evaluate(str(run.pk))
        page.reload()
    else:
        assert page.get_by_text("The checks ran. Here are the findings.").is_visible()
    run.refresh_from_db()
    assert run.state == RunState.FINISHED
    screenshot(page, "run-detail")
    # KEY-001 fails on the local keystore, which is no secure cryptographic device.
    assert "Not in Place" in _row(page, "requirements", "3.6.1.2")
    assert _row(page, "results", "KEY-001 critical").startswith("KEY-001 critical Fail")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Signed PDF report").click()
    download = download_info.value
    assert download.suggested_filename == f"compliance-acme-{run.pk}.pdf"
    assert Path(download.path()).read_bytes().startswith(b"%PDF")

    evidence = (
        page.locator("#results tbody tr")
        .filter(has_text="KEY-001")
        .locator("a[href*='/evidence/']")
    )
    evidence.first.click()
    page.wait_for_url("**/compliance/evidence/*/")
    assert page.get_by_role("heading", level=1).inner_text() == "Evidence"
    screenshot(page, "evidence")

    page.get_by_role("link", name="Runs", exact=True).click()
    page.wait_for_url("**/console/t/acme/compliance/")
    chart = page.locator("#chart svg[role='img']")
    assert chart.is_visible()
    assert chart.locator("g.chart-bar").count() == 1
    assert page.locator("#chart-data tbody tr").count() == 1
    screenshot(page, "runs")
    assert page_errors == []


def test_console_compliance_custodian_requests_a_waiver_and_two_others_approve_it(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _tenant()
    custodian = make_person("custodian@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    owner = make_person("owner@acme.example", tenant=tenant, role=Role.OWNER)
    second = make_person("second@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    run = compliance_run(tenant)
    failing = run.results.filter(check_id="KEY-001", status="FAIL").first()
    assert failing is not None

    sign_in(page, custodian)
    page.goto(f"/console/t/acme/compliance/runs/{run.pk}/")
    screenshot(page, "run-detail")
    page.locator("#results tbody tr").filter(has_text=failing.resource_id).filter(
        has_text="KEY-001"
    ).get_by_role("link", name="Request a waiver").first.click()
    page.wait_for_url("**/compliance/waivers/?check=KEY-001*")
    assert page.get_by_label("Check", exact=True).input_value() == "KEY-001"
    finding_label = "Finding id (empty: every finding of the check)"
    assert page.get_by_label(finding_label).input_value() == failing.finding_id
    page.get_by_label("Why the risk is accepted").fill("The HSM is delivered in March.")
    page.get_by_label("Compensating control (optional)").fill("Encrypted disk, two-person access")
    page.get_by_label("Days until it expires").fill("60")
    screenshot(page, "waiver-form")
    page.get_by_role("button", name="Request the waiver").click()
    page.wait_for_url("**/compliance/waivers/")
    waiver = Waiver.objects.get(tenant=tenant)
    assert waiver.finding_id == failing.finding_id
    assert page.get_by_text("is waiting for 2 approvals").is_visible()
    # The requester cannot approve their own waiver: no button for it.
    assert page.get_by_role("button", name=f"Approve waiver {waiver.pk}").count() == 0
    screenshot(page, "waiver-requested")
    _sign_out(page)

    for number, approver in enumerate((owner, second), start=1):
        sign_in(page, approver)
        page.goto("/console/t/acme/compliance/waivers/")
        page.get_by_label(f"Reason for waiver {waiver.pk} (optional)").fill("Checked the plan")
        page.get_by_role("button", name=f"Approve waiver {waiver.pk}").click()
        page.wait_for_url("**/compliance/waivers/")
        assert page.get_by_text(f"You approved waiver {waiver.pk}").is_visible()
        screenshot(page, f"waiver-approved-{number}")
        waiver.refresh_from_db()
        assert waiver.state == (WaiverState.ACTIVE if number == 2 else WaiverState.PENDING)
        if number == 1:
            _sign_out(page)

    # The second approver stays signed in (a TOTP code works once) and signs an attestation.
    assert "Active" in page.locator(f"#waiver-{waiver.pk}").inner_text()
    screenshot(page, "waiver-active")
    page.get_by_role("link", name="Attestations", exact=True).click()
    page.wait_for_url("**/compliance/attestations/")
    page.get_by_label("PCI-DSS requirement").select_option("3.7.8")
    page.get_by_label("Kind", exact=True).select_option("custodian_ack")
    page.get_by_label("Statement: what was done").fill("I acknowledge my duties as key custodian.")
    page.get_by_label("Days it stays valid").fill("365")
    page.get_by_role("button", name="Sign the attestation").click()
    page.wait_for_url("**/compliance/attestations/")
    assert page.get_by_text("is signed and recorded").is_visible()
    assert "I acknowledge my duties" in page.locator("#attestation-list").inner_text()
    screenshot(page, "attestations")
    assert page_errors == []


def test_console_compliance_auditor_opens_every_page_and_finds_no_form(
    page, page_errors, make_person, sign_in, screenshot
):
    tenant = _tenant()
    custodian = make_person("custodian@acme.example", tenant=tenant, role=Role.CUSTODIAN)
    auditor = make_person("auditor@acme.example", tenant=tenant, role=Role.AUDITOR)
    run = compliance_run(tenant)
    services.waiver_request(
        tenant=tenant,
        user=custodian.user,
        check_id="KEY-001",
        justification="The HSM is delivered in March.",
        days=30,
    )
    services.attestation_create(
        tenant=tenant,
        user=custodian.user,
        requirement="3.7.8",
        kind="custodian_ack",
        statement="I acknowledge my duties as key custodian.",
        valid_days=365,
    )
    digest = next(d for r in run.results.all() for d in r.evidence)

    sign_in(page, auditor)
    pages = {
        "runs": "/console/t/acme/compliance/",
        "run-detail": f"/console/t/acme/compliance/runs/{run.pk}/",
        "evidence": f"/console/t/acme/compliance/evidence/{digest}/",
        "waivers": "/console/t/acme/compliance/waivers/",
        "attestations": "/console/t/acme/compliance/attestations/",
    }
    for name, url in pages.items():
        response = page.goto(url)
        assert response is not None
        assert response.status == 200, url
        screenshot(page, name)
        # Nothing to post: the only form on the page is the top bar's sign-out.
        assert page.locator("main form").count() == 0, url
        assert page.locator("form").count() == 1, url
        assert page.get_by_role("button", name="Run the checks now").count() == 0
        assert page.get_by_role("link", name="Request a waiver").count() == 0
    page.goto(pages["runs"])
    assert page.get_by_text("as an auditor you read the runs").is_visible()
    page.goto(pages["run-detail"])
    with page.expect_download() as download_info:
        page.get_by_role("link", name="CSV report").click()
    assert Path(download_info.value.path()).read_bytes().startswith(b"framework,")
    assert page_errors == []


def test_console_compliance_pages_are_not_found_for_another_tenant(
    page, page_errors, make_person, sign_in, screenshot
):
    acme = _tenant()
    run = compliance_run(acme)
    beta = _tenant("beta", "Beta Bank")
    outsider = make_person("owner@beta.example", tenant=beta, role=Role.OWNER)
    sign_in(page, outsider)
    for number, url in enumerate(
        (
            "/console/t/acme/compliance/",
            f"/console/t/acme/compliance/runs/{run.pk}/",
            f"/console/t/acme/compliance/runs/{run.pk}/export/?type=pdf",
            "/console/t/acme/compliance/waivers/",
            "/console/t/acme/compliance/attestations/",
            # Acme's run through Beta's own pages: still nothing.
            f"/console/t/beta/compliance/runs/{run.pk}/",
        )
    ):
        response = page.goto(url)
        assert response is not None
        assert response.status == 404, url
        screenshot(page, f"not-found-{number}")
        assert "Acme" not in page.content()
    # The browser logs each 404 answer itself; nothing else may show up.
    assert [e for e in page_errors if "status of 404 (Not Found)" not in e] == []
