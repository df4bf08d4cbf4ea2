"""The compliance engine: results, findings, waivers, attestations, evidence and its anchor."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from django.utils import timezone

from compliance import engine, services
from compliance.checks import Check, Context, Outcome, all_checks
from compliance.engine import aggregate, compliance_run
from compliance.models import (
    Attestation,
    CheckResult,
    ComplianceRun,
    Evidence,
    ImmutableRecord,
    RequirementResult,
)
from compliance.report import SCHEMA_PATH, neutralise, report_csv, report_document, report_json
from kms_plugins.errors import BackendUnavailable
from tests.factories import make_tenant
from vault.accounts.models import User
from vault.audit.models import AuditEvent, AuditLeaf
from vault.audit.services import latest_checkpoint, log_of, log_tree
from vault.crypto.auditbundle import parse_leaf
from vault.crypto.merkle import leaf_hash, verify_consistency, verify_inclusion
from vault.objects.services import object_create
from vault.tenants.models import Membership, Role

pytestmark = pytest.mark.django_db


def _tenant(slug: str = "acme"):
    tenant = make_tenant(slug=slug, name=slug.title())
    call_command("tenant_bind_backend", "--tenant", slug, "--backend", "local")
    return tenant


def _person(tenant, name: str, role: str = Role.CUSTODIAN) -> User:
    user = User.objects.create_user(email=f"{name}@{tenant.slug}.example")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


class _Base(Check):
    version = "1.0.0"
    description = "A check made by the tests."
    risk = "None; it is a test."
    remediation = "None."
    severity = "high"


class PassesFor834(_Base):
    id = "TST-001"
    title = "Lockout is configured"
    requirements = ("8.3.4",)

    def run(self, ctx: Context) -> Iterator[Outcome]:
        digest = ctx.evidence("settings", {"threshold": ctx.setting("VAULT_LOCKOUT_THRESHOLD")})
        yield self.passed("platform", "platform", "Lockout is configured.", digest)


class FailsEachObject(_Base):
    id = "TST-002"
    title = "No object is bad"
    requirements = ("3.5.1",)

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for name in ctx.tenant.stored_objects.values_list("name", flat=True).order_by("name"):
            yield self.failed("object", name, f"Object {name} is bad.")


class BackendDown(_Base):
    id = "TST-003"
    title = "The backend answers"
    requirements = ("3.6.1.2",)

    def run(self, ctx: Context) -> Iterator[Outcome]:
        raise BackendUnavailable("the HSM is unplugged")
        yield  # pragma: no cover


class Crashes(_Base):
    id = "TST-004"
    title = "It does not crash"
    requirements = ("3.7.1",)

    def run(self, ctx: Context) -> Iterator[Outcome]:
        raise RuntimeError("bug")
        yield  # pragma: no cover


class NeedsPeople(_Base):
    id = "TST-005"
    title = "Accounts were reviewed"
    kind = "manual"
    requirements = ("7.2.4",)


def _finding(run: ComplianceRun, ref: str) -> RequirementResult:
    return run.requirements.get(ref=ref)


# --- results and findings ------------------------------------------------------------------------


def test_results_are_immutable_once_written() -> None:
    run = compliance_run(_tenant(), checks=[PassesFor834])
    result = CheckResult.objects.get(run=run)
    result.status = "FAIL"
    with pytest.raises(ImmutableRecord):
        result.save()
    with pytest.raises(ImmutableRecord):
        result.delete()
    with pytest.raises(ImmutableRecord):
        _finding(run, "8.3.4").delete()
    assert CheckResult.objects.get(run=run).status == "PASS"


def test_finding_ids_are_stable_across_runs_and_differ_per_resource() -> None:
    tenant = _tenant()
    for name in ("a.txt", "b.txt"):
        object_create(tenant=tenant, name=name, mode="gateway", content_type="x/y", token=None)
    first = compliance_run(tenant, checks=[FailsEachObject])
    second = compliance_run(tenant, checks=[FailsEachObject])
    ids = [set(r.results.values_list("finding_id", flat=True)) for r in (first, second)]
    assert ids[0] == ids[1]
    assert len(ids[0]) == 2
    expected = hashlib.sha256(b"TST-002|acme|object|a.txt").hexdigest()
    assert expected in ids[0]


def test_a_check_that_cannot_read_its_data_reports_error_never_fail() -> None:
    run = compliance_run(_tenant(), checks=[BackendDown, Crashes])
    statuses = dict(run.results.values_list("check_id", "status"))
    assert statuses == {"TST-003": "ERROR", "TST-004": "ERROR"}
    details = dict(run.results.values_list("check_id", "detail"))
    assert "did not answer" in details["TST-003"]
    assert _finding(run, "3.6.1.2").finding == "NOT_TESTED"
    assert _finding(run, "3.7.1").finding == "NOT_TESTED"


def test_aggregation_follows_the_assessors_rules() -> None:
    loose = [{"setting": "x", "operator": "lte", "value": 1, "actual": 2, "violated": True}]
    assert aggregate("1", ["PASS"], [], False)[0] == "IN_PLACE"
    assert aggregate("1", ["PASS", "FAIL"], [], False)[0] == "NOT_IN_PLACE"
    assert aggregate("1", ["PASS"], loose, False)[0] == "NOT_IN_PLACE"
    assert aggregate("1", ["PASS", "ERROR"], [], False)[0] == "NOT_TESTED"
    assert aggregate("1", ["MANUAL"], [], False)[0] == "NOT_TESTED"
    assert aggregate("1", ["MANUAL"], [], True)[0] == "IN_PLACE"
    assert aggregate("1", ["NOT_APPLICABLE"], [], False)[0] == "NOT_APPLICABLE"
    assert aggregate("1", [], [], False)[0] == "NOT_TESTED"
    finding, narrative, compensating = aggregate("1", ["PASS", "WAIVED"], [], False)
    assert (finding, compensating) == ("IN_PLACE", True)
    assert "waived" in narrative


def test_a_looser_setting_forces_not_in_place_although_the_check_passed(settings) -> None:
    tenant = _tenant()
    assert _finding(compliance_run(tenant, checks=[PassesFor834]), "8.3.4").finding == "IN_PLACE"
    # A broken deployment: the settings parser refuses this, so it is set behind its back.
    settings.VAULT_LOCKOUT_THRESHOLD = 20
    run = compliance_run(tenant, checks=[PassesFor834])
    assert run.results.get().status == "PASS"
    requirement = _finding(run, "8.3.4")
    assert requirement.finding == "NOT_IN_PLACE"
    assert "VAULT_LOCKOUT_THRESHOLD is 20" in requirement.narrative
    assert [g["violated"] for g in requirement.guardrails if g["setting"].endswith("THRESHOLD")]


def test_a_tenant_cryptoperiod_loosened_out_of_band_forces_3_7_4_not_in_place() -> None:
    tenant = _tenant()
    type(tenant).objects.filter(pk=tenant.pk).update(kek_cryptoperiod_days=1000)
    tenant.refresh_from_db()
    run = compliance_run(tenant, checks=[])
    requirement = _finding(run, "3.7.4")
    assert requirement.finding == "NOT_IN_PLACE"
    assert "tenant.kek_cryptoperiod_days is 1000" in requirement.narrative


def test_every_requirement_a_check_names_is_in_the_catalogue() -> None:
    from compliance.catalog import REQUIREMENTS

    for check in all_checks():
        assert set(check.requirements) <= set(REQUIREMENTS), check.id


# --- waivers -------------------------------------------------------------------------------------


def _waiver(tenant, check_id: str = "TST-002", **kwargs):
    asker = _person(tenant, f"asker{services.Waiver.objects.count()}")
    # The service refuses unknown checks: the test check stands in for a registered one.
    kwargs.setdefault("days", 30)
    from compliance import checks as registry

    registry._REGISTRY.setdefault(check_id, FailsEachObject)
    try:
        return services.waiver_request(
            tenant=tenant,
            user=asker,
            check_id=check_id,
            justification="a replacement HSM is on order",
            **kwargs,
        )
    finally:
        registry._REGISTRY.pop(check_id, None)


def test_a_waiver_needs_two_approvers_who_are_not_the_requester() -> None:
    tenant = _tenant()
    object_create(tenant=tenant, name="a.txt", mode="gateway", content_type="x/y", token=None)
    waiver = _waiver(tenant)
    with pytest.raises(services.ComplianceError) as refused:
        services.waiver_decide(waiver=waiver, user=waiver.requested_by, approve=True)
    assert refused.value.code == "self_approval"
    first = _person(tenant, "first")
    services.waiver_decide(waiver=waiver, user=first, approve=True)
    with pytest.raises(services.ComplianceError) as twice:
        services.waiver_decide(waiver=waiver, user=first, approve=True)
    assert twice.value.code == "already_decided"
    outsider = User.objects.create_user(email="auditor@acme.example")
    Membership.objects.create(tenant=tenant, user=outsider, role=Role.AUDITOR)
    with pytest.raises(services.ComplianceError) as role:
        services.waiver_decide(waiver=waiver, user=outsider, approve=True)
    assert role.value.code == "role_forbidden"
    waiver.refresh_from_db()
    assert waiver.state == "pending"
    # One approval is not enough: the finding still fails.
    run = compliance_run(tenant, checks=[FailsEachObject])
    assert run.results.get().status == "FAIL"
    services.waiver_decide(waiver=waiver, user=_person(tenant, "second"), approve=True)
    waiver.refresh_from_db()
    assert waiver.state == "active"
    run = compliance_run(tenant, checks=[FailsEachObject])
    result = run.results.get()
    assert (result.status, result.waiver_id) == ("WAIVED", waiver.pk)
    requirement = _finding(run, "3.5.1")
    assert requirement.finding == "IN_PLACE"
    assert requirement.compensating_control_used


def test_an_expired_or_rejected_waiver_waives_nothing() -> None:
    tenant = _tenant()
    object_create(tenant=tenant, name="a.txt", mode="gateway", content_type="x/y", token=None)
    waiver = _waiver(tenant)
    for name in ("first", "second"):
        services.waiver_decide(waiver=waiver, user=_person(tenant, name), approve=True)
    type(waiver).objects.filter(pk=waiver.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert compliance_run(tenant, checks=[FailsEachObject]).results.get().status == "FAIL"
    rejected = _waiver(tenant)
    services.waiver_decide(waiver=rejected, user=_person(tenant, "third"), approve=False)
    rejected.refresh_from_db()
    assert rejected.state == "rejected"
    assert compliance_run(tenant, checks=[FailsEachObject]).results.get().status == "FAIL"


def test_a_waiver_for_one_finding_leaves_the_others_failing() -> None:
    tenant = _tenant()
    for name in ("a.txt", "b.txt"):
        object_create(tenant=tenant, name=name, mode="gateway", content_type="x/y", token=None)
    target = engine.finding_id("TST-002", tenant, "object", "a.txt")
    waiver = _waiver(tenant, finding_id=target)
    for name in ("first", "second"):
        services.waiver_decide(waiver=waiver, user=_person(tenant, name), approve=True)
    run = compliance_run(tenant, checks=[FailsEachObject])
    assert dict(run.results.values_list("resource_id", "status")) == {
        "a.txt": "WAIVED",
        "b.txt": "FAIL",
    }
    assert _finding(run, "3.5.1").finding == "NOT_IN_PLACE"


def test_waivers_refuse_bad_requests() -> None:
    from compliance import checks as registry

    tenant = _tenant()
    user = _person(tenant, "asker")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"check_id": "NOPE-001"}, "unknown_check"),
        ({"check_id": "KEY-015"}, "check_is_manual"),  # attested, not waived
        ({"justification": "short"}, "compliance_invalid"),
        ({"days": 400}, "compliance_invalid"),
        ({"days": 0}, "compliance_invalid"),
        ({"finding_id": "not-hex"}, "compliance_invalid"),
    ]
    registry._REGISTRY["TST-002"] = FailsEachObject
    try:
        for override, code in bad:
            kwargs: dict[str, Any] = {
                "check_id": "TST-002",
                "justification": "a good reason for this",
                "days": 30,
                **override,
            }
            with pytest.raises(services.ComplianceError) as refused:
                services.waiver_request(tenant=tenant, user=user, **kwargs)
            assert refused.value.code == code, override
    finally:
        registry._REGISTRY.pop("TST-002", None)
    assert not services.Waiver.objects.exists()


# --- attestations --------------------------------------------------------------------------------


def test_a_manual_requirement_is_not_tested_until_someone_attests_it() -> None:
    tenant = _tenant()
    assert _finding(compliance_run(tenant, checks=[NeedsPeople]), "7.2.4").finding == "NOT_TESTED"
    owner = _person(tenant, "boss", Role.OWNER)
    item = services.attestation_create(
        tenant=tenant,
        user=owner,
        requirement="7.2.4",
        kind="access_review",
        statement="Reviewed every member and token; removed two.",
        valid_days=183,
    )
    assert services.attestation_verifies(item)
    body = json.loads(bytes(item.body))
    assert body["signer"] == owner.email
    assert body["requirement"] == "7.2.4"
    run = compliance_run(tenant, checks=[NeedsPeople])
    requirement = _finding(run, "7.2.4")
    assert requirement.finding == "IN_PLACE"
    assert requirement.attestations == [item.pk]
    event = AuditEvent.objects.filter(tenant=tenant, type="compliance.attest").get()
    assert (
        parse_leaf(bytes(event.leaf))["details"]["body_sha256"]
        == hashlib.sha256(bytes(item.body)).hexdigest()
    )


def test_an_attestation_edited_in_the_database_or_expired_counts_for_nothing() -> None:
    tenant = _tenant()
    owner = _person(tenant, "boss", Role.OWNER)
    item = services.attestation_create(
        tenant=tenant,
        user=owner,
        requirement="7.2.4",
        kind="access_review",
        statement="Reviewed every member and token.",
        valid_days=183,
    )
    forged = bytes(item.body).replace(b"7.2.4", b"7.2.4", 1).replace(b"Reviewed", b"Skipped!")
    Attestation.objects.filter(pk=item.pk).update(body=forged)
    assert _finding(compliance_run(tenant, checks=[NeedsPeople]), "7.2.4").finding == "NOT_TESTED"
    second = services.attestation_create(
        tenant=tenant,
        user=owner,
        requirement="7.2.4",
        kind="access_review",
        statement="Reviewed every member and token.",
        valid_days=1,
    )
    Attestation.objects.filter(pk=second.pk).update(valid_until=timezone.now())
    assert _finding(compliance_run(tenant, checks=[NeedsPeople]), "7.2.4").finding == "NOT_TESTED"


def test_an_attestation_whose_columns_were_edited_or_that_another_key_signed_counts_for_nothing(
    settings,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from vault.crypto.checkpoint import CheckpointKey

    tenant = _tenant()
    owner = _person(tenant, "boss", Role.OWNER)
    item = services.attestation_create(
        tenant=tenant,
        user=owner,
        requirement="7.2.4",
        kind="access_review",
        statement="Reviewed every member and token.",
        valid_days=1,
    )
    # The columns the engine filters on, moved behind the signature's back.
    Attestation.objects.filter(pk=item.pk).update(
        requirement="3.7.8", valid_until=timezone.now() + timedelta(days=1800)
    )
    run = compliance_run(tenant, checks=[NeedsPeople, Acknowledged])
    assert _finding(run, "3.7.8").finding == "NOT_TESTED"
    # A whole row forged and signed with the forger's own key, named in the row.
    forger = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes, serialization

    pem = forger.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = CheckpointKey.from_pem("forger", pem)
    body = bytes(item.body).replace(b"7.2.4", b"3.7.8")
    Attestation.objects.filter(pk=item.pk).update(
        body=body,
        signature=base64.b64encode(forger.sign(body, ec.ECDSA(hashes.SHA256()))).decode(),
        signing_key=key.vkey,
        valid_until=item.valid_until,
    )
    assert not services.attestation_verifies(Attestation.objects.get(pk=item.pk))
    run = compliance_run(tenant, checks=[NeedsPeople, Acknowledged])
    assert _finding(run, "3.7.8").finding == "NOT_TESTED"


class Acknowledged(_Base):
    id = "TST-006"
    title = "Custodians acknowledged"
    kind = "manual"
    requirements = ("3.7.8",)


def test_a_waiver_made_active_in_the_database_waives_nothing() -> None:
    tenant = _tenant()
    object_create(tenant=tenant, name="a.txt", mode="gateway", content_type="x/y", token=None)
    asker = _person(tenant, "asker")
    forged = services.Waiver.objects.create(
        tenant=tenant,
        check_id="TST-002",
        justification="nobody approved this",
        requested_by=asker,
        expires_at=timezone.now() + timedelta(days=3650),
        state="active",
    )
    assert compliance_run(tenant, checks=[FailsEachObject]).results.get().status == "FAIL"
    # Approval rows inserted too, but the audit log never recorded the approvals.
    from compliance.models import WaiverApproval

    services.Waiver.objects.filter(pk=forged.pk).update(
        expires_at=timezone.now() + timedelta(days=30)
    )
    for name in ("first", "second"):
        WaiverApproval.objects.create(waiver=forged, approver=_person(tenant, name), approve=True)
    assert compliance_run(tenant, checks=[FailsEachObject]).results.get().status == "FAIL"


def test_log_008_judges_the_lag_the_run_found_before_it_integrated_the_log() -> None:
    from compliance.checks import get_check
    from vault.audit.services import audit_record

    tenant = _tenant()
    compliance_run(tenant, checks=[])  # everything so far integrated
    event = audit_record("tenant.update", tenant=tenant, details={"note": "late"})
    from tests.audit.test_log import _sql

    # Forty minutes of a stalled integrator, made by moving the event's time back (past the
    # append-only triggers, as only a broken deployment's clock or a database edit would).
    _sql(
        "UPDATE audit_auditevent SET time = %s WHERE id = %s",
        timezone.now() - timedelta(minutes=40),
        event.pk,
    )
    run = compliance_run(tenant, checks=[get_check("LOG-008")])
    result = run.results.get(resource_id=tenant.slug)
    assert result.status == "FAIL"
    assert result.observed["pending"] == 1
    # The run integrated it, so the next run finds the pipeline caught up.
    run = compliance_run(tenant, checks=[get_check("LOG-008")])
    assert run.results.get(resource_id=tenant.slug).status == "PASS"


def test_only_owners_and_custodians_attest_known_requirements() -> None:
    tenant = _tenant()
    member = _person(tenant, "member", Role.MEMBER)
    owner = _person(tenant, "boss", Role.OWNER)
    base = {
        "tenant": tenant,
        "kind": "access_review",
        "statement": "Reviewed all of it.",
        "valid_days": 30,
    }
    with pytest.raises(services.ComplianceError) as role:
        services.attestation_create(user=member, requirement="7.2.4", **base)
    assert role.value.code == "role_forbidden"
    with pytest.raises(services.ComplianceError) as unknown:
        services.attestation_create(user=owner, requirement="99.1", **base)
    assert unknown.value.code == "unknown_requirement"
    assert not Attestation.objects.exists()


# --- evidence, anchoring and checkpoints ---------------------------------------------------------


def test_a_run_anchors_its_evidence_and_results_in_the_audit_log() -> None:
    tenant = _tenant()
    run = compliance_run(tenant, checks=[PassesFor834])
    log = log_of(tenant)
    start, end = run.checkpoint_start, run.checkpoint_end
    assert 0 < start["size"] < end["size"]
    tree = log_tree(log)
    # The end checkpoint extends the start one.
    verify_consistency(
        old_size=start["size"],
        new_size=end["size"],
        proof=tree.consistency_proof(start["size"], end["size"]),
        old_root=base64.b64decode(start["root"]),
        new_root=base64.b64decode(end["root"]),
    )
    assert run.anchor_event is not None
    event = AuditEvent.objects.get(uuid=run.anchor_event)
    index = AuditLeaf.objects.get(event=event).index
    assert index < end["size"]
    verify_inclusion(
        index=index,
        tree_size=end["size"],
        leaf_hash=leaf_hash(bytes(event.leaf)),
        proof=tree.inclusion_proof(index, end["size"]),
        root=base64.b64decode(end["root"]),
    )
    details = parse_leaf(bytes(event.leaf))["details"]
    assert details["results_sha256"] == run.summary["results_sha256"]
    digests = set(details["evidence"])
    result = run.results.get()
    assert set(result.evidence) <= digests
    for row in Evidence.objects.filter(tenant=tenant):
        assert hashlib.sha256(bytes(row.body)).hexdigest() == row.sha256
        assert row.sha256 in digests
    newest = latest_checkpoint(log)
    assert newest is not None
    assert newest.size == end["size"]


def test_the_same_evidence_is_stored_once() -> None:
    tenant = _tenant()
    compliance_run(tenant, checks=[PassesFor834])
    compliance_run(tenant, checks=[PassesFor834])
    kinds = list(Evidence.objects.filter(tenant=tenant, kind="settings").values_list("sha256"))
    assert len(kinds) == 1


def test_a_run_whose_anchor_cannot_be_written_keeps_no_results(monkeypatch) -> None:
    tenant = _tenant()
    from vault.audit import services as audit_services

    real = audit_services.AuditEvent.objects.create

    def refuse(**fields):
        if fields.get("type") == "compliance.evidence":
            from django.db import DatabaseError

            raise DatabaseError("disk full")
        return real(**fields)

    monkeypatch.setattr(audit_services.AuditEvent.objects, "create", refuse)
    with pytest.raises(audit_services.AuditUnavailable):
        compliance_run(tenant, checks=[PassesFor834])
    run = ComplianceRun.objects.get(tenant=tenant)
    assert run.state == "failed"
    assert not CheckResult.objects.filter(run=run).exists()
    assert not Evidence.objects.filter(tenant=tenant).exists()


# --- reports -------------------------------------------------------------------------------------


def test_the_json_report_follows_its_published_schema() -> None:
    tenant = _tenant()
    run = compliance_run(tenant, checks=[PassesFor834, NeedsPeople, BackendDown])
    document = json.loads(report_json(report_document(run)))
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(document, schema)
    assert {r["check"]: r["status"] for r in document["results"]} == {
        "TST-001": "PASS",
        "TST-003": "ERROR",
        "TST-005": "MANUAL",
    }
    assert document["populations"]["keys"], "the key inventory is part of the report"
    refs = {e["ref"] for e in document["evidence"]}
    assert all(set(r["evidence"]) <= refs for r in document["results"])


def test_csv_cells_cannot_run_as_spreadsheet_formulas() -> None:
    tenant = _tenant()
    names = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "ok"]
    for name in names:
        object_create(tenant=tenant, name=name, mode="gateway", content_type="x/y", token=None)
    run = compliance_run(tenant, checks=[FailsEachObject])
    rows = list(csv.DictReader(io.StringIO(report_csv(report_document(run)).decode("utf-8"))))
    cells = {row["resource_id"] for row in rows}
    assert cells == {"'" + n for n in names[:-1]} | {"ok"}
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    assert neutralise("=1") == "'=1"
    assert neutralise("a=1") == "a=1"


# --- scheduling and commands ---------------------------------------------------------------------


def test_the_daily_job_runs_each_tenant_once_a_day(settings) -> None:
    from compliance.tasks import run_due
    from vault.celery import app

    assert settings.CELERY_BEAT_SCHEDULE["compliance.run_due"]["task"] == "compliance.run_due"
    app.loader.import_default_modules()
    assert "compliance.run_due" in app.tasks
    first, second = _tenant("acme"), _tenant("globex")
    inactive = _tenant("gone")
    type(inactive).objects.filter(pk=inactive.pk).update(is_active=False)
    assert run_due() == 2
    assert set(ComplianceRun.objects.values_list("tenant__slug", flat=True)) == {"acme", "globex"}
    assert run_due() == 0
    ComplianceRun.objects.filter(tenant=first).update(
        started_at=timezone.now() - timedelta(hours=25)
    )
    assert run_due() == 1
    assert ComplianceRun.objects.filter(tenant=first).count() == 2
    assert ComplianceRun.objects.filter(tenant=second).count() == 1


def test_compliance_run_command_prints_findings_and_summary(capsys) -> None:
    _tenant()
    call_command("compliance_run", "--tenant", "acme")
    out = capsys.readouterr()
    assert "Requirements:" in out.out
    assert "MANUAL" in out.out
    assert "KEY-015" in out.err  # progress, one line per check
    run = ComplianceRun.objects.get()
    assert run.trigger == "manual"
    assert run.state == "finished"


def test_compliance_report_command_writes_the_latest_run(tmp_path) -> None:
    from django.core.management.base import CommandError

    _tenant()
    with pytest.raises(CommandError, match="no finished compliance run"):
        call_command("compliance_report", "--tenant", "acme", "--format", "json", "--output", "x")
    call_command("compliance_run", "--tenant", "acme", "--quiet")
    target = tmp_path / "report.json"
    call_command("compliance_report", "--tenant", "acme", "--format", "json", "--output", target)
    document = json.loads(target.read_bytes())
    assert document["run"]["id"] == str(ComplianceRun.objects.get().pk)
    target = tmp_path / "report.csv"
    call_command("compliance_report", "--tenant", "acme", "--format", "csv", "--output", target)
    assert target.read_text().startswith("framework,framework_version,tenant")
    with pytest.raises(CommandError, match="no tenant"):
        call_command("compliance_report", "--tenant", "nope", "--format", "csv", "--output", "x")
