"""LOG-001 to LOG-008 (PCI-DSS 10.2 to 10.7): the audit log's coverage, completeness, read
access, integrity, retention and fail-closed writing, judged from the vault's own data."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from compliance.checks import Check, Context, Outcome
from compliance.checks.logs import (
    ApiView,
    AuditFailClosed,
    AuditLogIntegrity,
    AuditLogReadAccess,
    AuditLogRetention,
    EventCompleteness,
    EventCoverage,
    expected_triggers,
)
from compliance.engine import compliance_run
from compliance.models import CheckResult
from tests.audit.test_log import _audit_rejected_for, _sql
from tests.factories import make_membership
from tests.objects.test_objects import _client, _create, _put
from vault.api.permissions import READERS
from vault.audit.api.views import AuditCheckpointView, AuditEventViewSet
from vault.audit.context import Actor
from vault.audit.events import EVENT_TYPES
from vault.audit.models import AuditEvent, AuditLeaf, AuditPrune
from vault.audit.services import audit_integrate, audit_prune, audit_record, log_of
from vault.keys.models import KeyBinding, KeyRole
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_create
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


def _run(check: Check, tenant: Tenant, now: datetime | None = None) -> list[Outcome]:
    return list(check.run(Context(tenant, now or timezone.now())))


def _one(outcomes: list[Outcome], resource_type: str, resource_id: str) -> Outcome:
    found = [
        o for o in outcomes if (o.resource_type, o.resource_id) == (resource_type, resource_id)
    ]
    assert len(found) == 1, outcomes
    return found[0]


def _active_tenant() -> tuple[Tenant, Any, Any]:
    """A tenant made by the product's services, with an owner who stores an object and an
    auditor who reads the log and tries to write."""
    tenant = tenant_create(slug="acme", name="Acme")  # tenant.create, audit.log.start
    owner = _client(role=Role.OWNER, tenant=tenant)  # key.create, token.create
    obj = _create(owner)["id"]
    assert _put(owner, obj, b"content").status_code == 201
    auditor = _client(role=Role.AUDITOR, tenant=tenant)
    assert auditor.get("/api/v1/audit/events/").status_code == 200  # audit.read
    assert auditor.post("/api/v1/objects/", {"name": "x"}, format="json").status_code == 403
    return tenant, owner, auditor


# --- LOG-001 --------------------------------------------------------------------------------------


def test_log_001_passes_when_every_category_was_recorded_in_the_period() -> None:
    tenant, _, _ = _active_tenant()
    outcomes = _run(EventCoverage(), tenant)
    assert {o.resource_id: o.status for o in outcomes} == {
        f"10.2.1.{n}": "PASS" for n in range(1, 8)
    }
    assert "10.2.1.6" in _one(outcomes, "event_category", "10.2.1.6").detail


def test_log_001_asks_for_review_of_a_category_with_no_event_in_the_period() -> None:
    client = _client()  # a tenant made without tenant_create: no audit.log.start
    outcome = _one(_run(EventCoverage(), client.tenant), "event_category", "10.2.1.6")
    assert outcome.status == "MANUAL"
    assert outcome.observed == {"events": 0}
    assert "none was recorded" in outcome.detail


def test_log_001_does_not_count_events_older_than_a_year() -> None:
    tenant, _, _ = _active_tenant()
    Tenant.objects.filter(pk=tenant.pk).update(created_at=timezone.now() - timedelta(days=900))
    tenant.refresh_from_db()
    later = timezone.now() + timedelta(days=400)
    outcomes = _run(EventCoverage(), tenant, now=later)
    assert {o.status for o in outcomes} == {"MANUAL"}


def test_log_001_fails_when_a_category_has_no_event_type() -> None:
    class WithoutLogStart(EventCoverage):
        event_types = {k: v for k, v in EVENT_TYPES.items() if "10.2.1.6" not in v}

    tenant, _, _ = _active_tenant()
    outcome = _one(_run(WithoutLogStart(), tenant), "event_category", "10.2.1.6")
    assert outcome.status == "FAIL"
    assert outcome.detail.startswith("No audit event type records category 10.2.1.6")


# --- LOG-002 --------------------------------------------------------------------------------------


def test_log_002_passes_when_every_event_is_complete() -> None:
    tenant, _, _ = _active_tenant()
    outcomes = _run(EventCompleteness(), tenant)
    mine = _one(outcomes, "audit_log", "acme")
    assert mine.status == "PASS", mine.detail
    assert mine.observed["events"] == AuditEvent.objects.filter(log=log_of(tenant)).count()
    assert _one(outcomes, "audit_log", "platform").status == "PASS"  # tenant.create


def test_log_002_fails_when_an_events_user_was_blanked_in_the_database() -> None:
    tenant, _, _ = _active_tenant()
    event = AuditEvent.objects.get(log=log_of(tenant), type="object.create")
    _sql("UPDATE audit_auditevent SET actor_id = '' WHERE id = %s", event.pk)
    outcome = _one(_run(EventCompleteness(), tenant), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert "1 without user" in outcome.detail
    assert outcome.observed["missing"] == {"user": 1}


def test_log_002_fails_on_an_event_without_origin_or_resource() -> None:
    tenant, _, _ = _active_tenant()
    event = AuditEvent.objects.get(log=log_of(tenant), type="object.write")
    _sql(
        "UPDATE audit_auditevent SET ip = '', resource_type = '' WHERE id = %s",
        event.pk,
    )
    outcome = _one(_run(EventCompleteness(), tenant), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert outcome.observed["missing"] == {"origin": 1, "resource": 1}


# --- LOG-003 --------------------------------------------------------------------------------------


def test_log_003_passes_for_the_audit_api_and_readers_with_read_roles() -> None:
    tenant, _, _ = _active_tenant()
    outcomes = _run(AuditLogReadAccess(), tenant)
    views = [o for o in outcomes if o.resource_type == "api_view"]
    assert {o.resource_id for o in views} >= {"audit/events/", "audit/checkpoint/", "audit/export/"}
    assert {o.status for o in views} == {"PASS"}, [o.detail for o in views]
    readers = _one(outcomes, "tenant", "acme")
    assert readers.status == "PASS", readers.detail
    assert readers.observed == {"reads": 1}


class _Widened(AuditEventViewSet):
    allowed_roles = {**AuditEventViewSet.allowed_roles, "list": READERS | {Role.MEMBER}}


class _Silent(AuditCheckpointView):
    def get(self, request: Request) -> Response:
        return Response({})


class _WithOtherViews(AuditLogReadAccess):
    def audit_views(self) -> list[ApiView]:
        return [
            ApiView("audit/events/", _Widened, ("list", "proof", "retrieve")),
            ApiView("audit/checkpoint/", _Silent, ("get",)),
        ]


def test_log_003_fails_for_a_view_that_lets_members_read_or_does_not_record_the_read() -> None:
    tenant, _, _ = _active_tenant()
    outcomes = _run(_WithOtherViews(), tenant)
    widened = _one(outcomes, "api_view", "audit/events/")
    assert widened.status == "FAIL"
    assert "lets role(s) member read the log" in widened.detail
    silent = _one(outcomes, "api_view", "audit/checkpoint/")
    assert silent.status == "FAIL"
    assert "action(s) get do not record the read" in silent.detail


def test_log_003_fails_when_a_member_token_read_the_log() -> None:
    tenant, _, _ = _active_tenant()
    member = make_membership(tenant=tenant, role=Role.MEMBER)
    issued = token_create(tenant=tenant, name="m", role=Role.MEMBER, user=member.user)
    # What a widened view would have left in the log: a member's token reading it.
    audit_record(
        "audit.read",
        tenant=tenant,
        actor=Actor("user", member.user.email, f"token:{issued.token.prefix}"),
        details={"view": "events"},
    )
    outcome = _one(_run(AuditLogReadAccess(), tenant), "tenant", "acme")
    assert outcome.status == "FAIL"
    assert f"{issued.token.prefix} (member, 1 read(s))" in outcome.detail


# --- LOG-004 --------------------------------------------------------------------------------------


def _integrated() -> tuple[Tenant, str]:
    tenant, _, _ = _active_tenant()
    log = log_of(tenant)
    audit_integrate(log)
    return tenant, log


def test_log_004_passes_and_gives_the_run_its_integrity_statement() -> None:
    tenant, log = _integrated()
    ctx = Context(tenant, timezone.now())
    outcomes = list(AuditLogIntegrity().run(ctx))
    mine = _one(outcomes, "audit_log", "acme")
    assert mine.status == "PASS", mine.detail
    leaves = AuditLeaf.objects.filter(log=log).count()
    assert mine.observed == {"leaves": leaves, "checkpoints": 1}
    # The platform log's tenant.create was never integrated: nothing signed to check yet.
    assert _one(outcomes, "audit_log", "platform").status == "NOT_APPLICABLE"
    triggers = _one(outcomes, "platform", "platform")
    assert triggers.status == "PASS", triggers.detail
    assert f"All {len(expected_triggers(connection.vendor))} append-only triggers" in (
        triggers.detail
    )
    assert ctx.shared["audit_verify"] == {
        "ok": True,
        "leaves": leaves,
        "checkpoints": 1,
        "problems": [],
    }


def test_log_004_through_the_engine_fills_the_runs_integrity() -> None:
    tenant, _, _ = _active_tenant()
    run = compliance_run(tenant, checks=[AuditLogIntegrity])
    assert run.integrity["ok"] is True
    # The engine integrated the log before the checks; its own events came after.
    assert run.integrity["leaves"] > 0
    assert run.integrity["problems"] == []
    result = CheckResult.objects.get(run=run, check_id="LOG-004", resource_id="acme")
    assert result.status == "PASS"


def test_log_004_fails_when_an_integrated_events_bytes_are_edited() -> None:
    tenant, log = _integrated()
    entry = AuditLeaf.objects.select_related("event").get(log=log, index=2)
    assert entry.event is not None
    forged = bytes(entry.event.leaf).replace(b'"success"', b'"failure"')
    _sql("UPDATE audit_auditevent SET leaf = %s WHERE id = %s", forged, entry.event_id)
    ctx = Context(tenant, timezone.now())
    outcome = _one(list(AuditLogIntegrity().run(ctx)), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert "leaf 2: the event's bytes do not match its leaf hash" in outcome.detail
    assert ctx.shared["audit_verify"]["ok"] is False
    assert (
        "acme: leaf 2: the event's bytes do not match its leaf hash"
        in (ctx.shared["audit_verify"]["problems"])
    )


def test_log_004_fails_when_a_column_is_edited_or_a_leaf_deleted() -> None:
    tenant, log = _integrated()
    entry = AuditLeaf.objects.get(log=log, index=1)
    _sql("UPDATE audit_auditevent SET type = 'object.read' WHERE id = %s", entry.event_id)
    _sql('DELETE FROM audit_auditleaf WHERE log = %s AND "index" = 3', log)
    outcome = _one(_run(AuditLogIntegrity(), tenant), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert "leaf 1: column type disagrees with the signed event" in outcome.detail
    assert "leaf 3: missing (the next leaf is 4)" in outcome.detail


def test_log_004_fails_when_a_trigger_is_gone() -> None:
    tenant, _ = _integrated()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending foreign-key checks
            cursor.execute(
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only"
            )
            gone = "disabled (audit_auditevent_append_only)"
        else:
            cursor.execute("DROP TRIGGER audit_auditevent_no_update")
            gone = "missing (audit_auditevent_no_update)"
    outcome = _one(_run(AuditLogIntegrity(), tenant), "platform", "platform")
    assert outcome.status == "FAIL"
    assert gone in outcome.detail


def test_log_004_reports_error_not_fail_when_the_log_cannot_be_verified() -> None:
    tenant, _ = _integrated()
    # The signing key was suspended (a suspected substitution): its signatures prove nothing.
    KeyBinding.objects.filter(tenant=tenant, role=KeyRole.SIGNING).update(
        suspended_at=timezone.now()
    )
    ctx = Context(tenant, timezone.now())
    outcome = _one(list(AuditLogIntegrity().run(ctx)), "audit_log", "acme")
    assert outcome.status == "ERROR"
    assert outcome.detail == "The acme audit log could not be verified (KeySuspended)."
    assert ctx.shared["audit_verify"]["ok"] is False
    assert ctx.shared["audit_verify"]["problems"] == ["acme: not verified (KeySuspended)"]


@pytest.mark.postgres
def test_log_004_reads_the_triggers_from_postgresql_catalogue() -> None:
    tenant, _ = _integrated()
    outcome = _one(_run(AuditLogIntegrity(), tenant), "platform", "platform")
    assert outcome.status == "PASS"
    assert "(postgresql)" in outcome.detail
    assert "audit_auditleaf_no_truncate" in expected_triggers("postgresql")


def test_log_004_and_log_006_verify_each_log_once() -> None:
    tenant, log = _integrated()
    ctx = Context(tenant, timezone.now())
    list(AuditLogIntegrity().run(ctx))
    report = ctx.shared["logs.verify_reports"][log]
    list(AuditLogRetention().run(ctx))
    assert ctx.shared["logs.verify_reports"][log] is report


# --- LOG-006 --------------------------------------------------------------------------------------


def test_log_006_passes_with_the_default_retention_and_a_whole_log() -> None:
    tenant, _ = _integrated()
    outcomes = _run(AuditLogRetention(), tenant)
    assert _one(outcomes, "platform", "platform").status == "PASS"
    mine = _one(outcomes, "audit_log", "acme")
    assert mine.status == "PASS", mine.detail


def test_log_006_passes_after_archiving_and_pruning_a_year_old_history(tmp_path) -> None:
    tenant, log = _integrated()
    call_command(
        "audit_export",
        "--tenant",
        "acme",
        "--output",
        str(tmp_path / "archive.json"),
        "--archive",
        stdout=StringIO(),
    )
    later = timezone.now() + timedelta(days=401)
    assert audit_prune(log, now=later) > 0
    audit_integrate(log)
    outcome = _one(_run(AuditLogRetention(), tenant, now=later), "audit_log", "acme")
    assert outcome.status == "PASS", outcome.detail
    assert "older leaves archived" in outcome.detail


def test_log_006_fails_when_the_deployment_keeps_less_than_a_year(settings) -> None:
    tenant, _ = _integrated()
    settings.VAULT_AUDIT_RETENTION_DAYS = 30  # settings parsing refuses this: a broken deployment
    outcome = _one(_run(AuditLogRetention(), tenant), "platform", "platform")
    assert outcome.status == "FAIL"
    assert outcome.detail.startswith("VAULT_AUDIT_RETENTION_DAYS is 30")


def test_log_006_fails_on_a_pruning_record_of_recent_events() -> None:
    tenant, log = _integrated()
    AuditPrune.objects.create(log=log, below_index=2, cutoff=timezone.now() - timedelta(days=10))
    outcome = _one(_run(AuditLogRetention(), tenant), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert "some may be younger than 365 days" in outcome.detail
    assert "events below leaf 2 were removed but the archive covers only 0" in outcome.detail


def test_log_006_fails_on_a_gap_in_the_log() -> None:
    tenant, log = _integrated()
    entry = AuditLeaf.objects.get(log=log, index=2)
    _sql("DELETE FROM audit_auditevent WHERE id = %s", entry.event_id)
    outcome = _one(_run(AuditLogRetention(), tenant), "audit_log", "acme")
    assert outcome.status == "FAIL"
    assert "leaf 2: its event is missing" in outcome.detail


# --- LOG-008 --------------------------------------------------------------------------------------


def test_log_008_passes_when_writes_are_transactional_and_the_integrator_keeps_up() -> None:
    client = _client()
    _create(client)
    log = log_of(client.tenant)
    audit_integrate(log)
    before = AuditEvent.objects.count()
    outcomes = _run(AuditFailClosed(), client.tenant, now=timezone.now() + timedelta(hours=1))
    mine = _one(outcomes, "audit_log", client.tenant.slug)
    assert mine.status == "PASS", mine.detail
    assert mine.observed == {"pending": 0}
    assert _one(outcomes, "audit_log", "platform").status == "PASS"
    assert AuditEvent.objects.count() == before, "the probe leaves nothing behind"


def test_log_008_fails_when_events_wait_for_the_integrator() -> None:
    client = _client()
    _create(client)  # recorded; the integrator never runs
    pending = AuditEvent.objects.filter(log=log_of(client.tenant)).count()
    an_hour_later = timezone.now() + timedelta(hours=1)
    slug = client.tenant.slug
    outcome = _one(_run(AuditFailClosed(), client.tenant, now=an_hour_later), "audit_log", slug)
    assert outcome.status == "FAIL"
    assert f"{pending} event(s) of the {slug} audit log wait for a checkpoint" in outcome.detail


def test_log_008_fails_when_the_audit_log_refuses_writes() -> None:
    client = _client()
    with _audit_rejected_for(client.tenant.pk):
        outcomes = _run(AuditFailClosed(), client.tenant)
    outcome = _one(outcomes, "audit_log", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "refuses to record events (audit_unavailable)" in outcome.detail
    assert _one(outcomes, "audit_log", "platform").status == "PASS"
