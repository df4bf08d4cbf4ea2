"""The audit log: events, integration, checkpoints, tamper detection, fail-closed writes."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from tests.objects.test_objects import MARKER, _client, _create, _get, _put
from vault.audit.events import EVENT_TYPES, PCI_CATEGORIES
from vault.audit.exports import export_bundle
from vault.audit.models import PLATFORM_LOG, AuditCheckpoint, AuditEvent, AuditLeaf
from vault.audit.services import (
    audit_integrate,
    audit_record,
    audit_verify,
    hmac_value,
    log_of,
    log_signer,
)
from vault.crypto.auditbundle import (
    BundleUnanchored,
    BundleVerificationFailed,
    InvalidBundleParameters,
    verify_bundle,
)
from vault.crypto.checkpoint import open_checkpoint
from vault.crypto.merkle import verify_consistency
from vault.objects.models import ObjectVersion
from vault.tenants.models import Role

pytestmark = pytest.mark.django_db


def test_every_pci_dss_10_2_1_category_has_event_types() -> None:
    covered = {category for categories in EVENT_TYPES.values() for category in categories}
    assert set(PCI_CATEGORIES) - covered == set()
    assert covered <= set(PCI_CATEGORIES)


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit event type"):
        audit_record("object.teleport")


def test_an_api_action_records_who_what_when_where_and_the_outcome() -> None:
    client = _client()
    obj = _create(client)
    event = AuditEvent.objects.get(type="object.create", tenant=client.tenant)
    body = json.loads(bytes(event.leaf))
    assert body["type"] == "object.create"
    assert body["outcome"] == "success"
    assert body["actor"]["kind"] == "user"
    assert body["actor"]["auth"].startswith("token:")
    assert body["origin"]["ip"] == "127.0.0.1"
    assert len(body["origin"]["request_id"]) == 32
    assert body["resource"] == {"type": "object", "id": str(obj["id"])}
    assert body["time"].endswith("Z")
    assert event.actor_id == body["actor"]["id"]


def test_object_reads_writes_and_the_key_operations_are_recorded() -> None:
    client = _client()
    obj = _create(client)["id"]
    _put(client, obj, b"content")
    _get(client, obj)
    types = list(
        AuditEvent.objects.filter(tenant=client.tenant)
        .order_by("pk")
        .values_list("type", flat=True)
    )
    for wanted in ("object.create", "key.wrap", "object.write", "object.read", "key.unwrap"):
        assert wanted in types


def test_a_failed_token_goes_to_the_platform_log_as_an_hmac_only() -> None:
    from rest_framework.test import APIClient

    wrong = "cvt_0123456789ab_" + "x" * 43
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {wrong}")
    assert client.get("/api/v1/tenant/").status_code == 401
    event = AuditEvent.objects.get(type="auth.token.failure")
    assert event.log == PLATFORM_LOG
    assert event.outcome == "failure"
    assert wrong.encode() not in bytes(event.leaf)
    details = json.loads(bytes(event.leaf))["details"]
    assert details["token"] == hmac_value(PLATFORM_LOG, wrong)


def test_a_denied_role_is_recorded_in_the_tenants_log() -> None:
    client = _client(role=Role.AUDITOR)
    response = client.post("/api/v1/objects/", {"name": "x"}, format="json")
    assert response.status_code == 403
    event = AuditEvent.objects.get(type="access.denied", tenant=client.tenant)
    assert event.outcome == "failure"


def test_reading_the_audit_log_is_itself_recorded() -> None:
    auditor = _client(role=Role.AUDITOR)
    assert auditor.get("/api/v1/audit/events/").status_code == 200
    assert AuditEvent.objects.filter(type="audit.read", tenant=auditor.tenant).exists()


def test_integration_gives_contiguous_indices_and_signs_consistent_checkpoints() -> None:
    client = _client()
    log = log_of(client.tenant)
    for name in ("a", "b", "c"):
        _create(client, name)
    first = audit_integrate(log)
    assert first is not None
    assert audit_integrate(log) is None, "nothing new, no new checkpoint"
    _create(client, "d")
    second = audit_integrate(log)
    assert second is not None
    assert second.size > first.size
    indices = list(
        AuditLeaf.objects.filter(log=log).order_by("index").values_list("index", flat=True)
    )
    assert indices == list(range(second.size))
    keys = log_signer(log).all_keys
    old = open_checkpoint(first.note.encode(), keys=keys)
    new = open_checkpoint(second.note.encode(), keys=keys)
    proof = client.get("/api/v1/audit/proofs/consistency/", {"from": first.size, "to": second.size})
    owner = _client(role=Role.OWNER, tenant=client.tenant)
    proof = owner.get("/api/v1/audit/proofs/consistency/", {"from": first.size, "to": second.size})
    assert proof.status_code == 200, proof.content
    verify_consistency(
        old_size=old.size,
        new_size=new.size,
        old_root=old.root_hash,
        new_root=new.root_hash,
        proof=[base64.b64decode(h) for h in proof.json()["proof"]],
    )
    assert audit_verify(log).ok


def test_an_events_inclusion_proof_is_served_against_the_latest_checkpoint() -> None:
    from vault.crypto.merkle import leaf_hash, verify_inclusion

    owner = _client(role=Role.OWNER)
    _create(owner)
    audit_integrate(log_of(owner.tenant))
    event = AuditEvent.objects.filter(tenant=owner.tenant, type="object.create").get()
    answer = owner.get(f"/api/v1/audit/events/{event.pk}/proof/").json()
    checkpoint = open_checkpoint(answer["checkpoint"].encode(), keys=log_signer(event.log).all_keys)
    verify_inclusion(
        index=answer["index"],
        tree_size=answer["size"],
        leaf_hash=leaf_hash(bytes(event.leaf)),
        proof=[base64.b64decode(h) for h in answer["proof"]],
        root=checkpoint.root_hash,
    )


# --- tampering ---------------------------------------------------------------------------------


@contextmanager
def _triggers_bypassed() -> Iterator[None]:
    """Write to the audit tables the way a superuser could, past the append-only triggers."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
            yield
            cursor.execute("SET LOCAL session_replication_role = origin")
        else:
            query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE %s"
            cursor.execute(query, ["audit_%"])
            sql = dict(cursor.fetchall())
            names = list(sql)
            for name in names:
                cursor.execute(f'DROP TRIGGER "{name}"')
            yield
            for name in names:
                cursor.execute(sql[name])


def _logged_tenant() -> tuple[Any, str]:
    owner = _client(role=Role.OWNER)
    for name in ("one", "two", "three", "four", "five"):
        _create(owner, name)
    log = log_of(owner.tenant)
    audit_integrate(log)
    assert audit_verify(log).ok
    return owner, log


def _exported(log: str) -> bytes:
    return export_bundle(log, start=None, end=None)


def _bundle_fails(log: str) -> None:
    """A fresh export of the damaged log fails verification (or cannot even be built: a log
    with fewer leaves than its checkpoint has no inclusion proofs to give)."""
    with pytest.raises((BundleVerificationFailed, InvalidBundleParameters)):
        verify_bundle(_exported(log), trusted=log_signer(log).all_keys)


def _sql(statement: str, *params: Any) -> None:
    with _triggers_bypassed(), connection.cursor() as cursor:
        cursor.execute(statement, list(params))


def _middle(log: str) -> Any:
    return AuditLeaf.objects.select_related("event").get(log=log, index=3)


def test_a_fresh_export_verifies_and_without_trust_is_unanchored() -> None:
    _, log = _logged_tenant()
    report = verify_bundle(_exported(log), trusted=log_signer(log).all_keys)
    assert report.leaves_checked == AuditLeaf.objects.filter(log=log).count()
    with pytest.raises(BundleUnanchored):
        verify_bundle(_exported(log), trusted=[])


def test_editing_an_events_bytes_is_detected() -> None:
    _, log = _logged_tenant()
    entry = _middle(log)
    forged = bytes(entry.event.leaf).replace(b'"success"', b'"failure"')
    _sql("UPDATE audit_auditevent SET leaf = %s WHERE id = %s", forged, entry.event_id)
    assert not audit_verify(log).ok
    _bundle_fails(log)


def test_editing_a_column_is_detected() -> None:
    _, log = _logged_tenant()
    entry = _middle(log)
    _sql("UPDATE audit_auditevent SET actor_id = %s WHERE id = %s", "someone else", entry.event_id)
    report = audit_verify(log)
    assert any("actor_id" in problem for problem in report.problems)
    _bundle_fails(log)


def test_editing_an_event_and_its_leaf_hash_together_is_detected() -> None:
    from vault.crypto.merkle import leaf_hash

    _, log = _logged_tenant()
    entry = _middle(log)
    forged = bytes(entry.event.leaf).replace(b'"success"', b'"failure"')
    _sql(
        "UPDATE audit_auditevent SET leaf = %s, outcome = 'failure' WHERE id = %s",
        forged,
        entry.event_id,
    )
    _sql("UPDATE audit_auditleaf SET hash = %s WHERE id = %s", leaf_hash(forged), entry.pk)
    report = audit_verify(log)
    assert any("root" in problem for problem in report.problems)
    _bundle_fails(log)


def test_deleting_an_event_is_detected() -> None:
    _, log = _logged_tenant()
    entry = _middle(log)
    _sql("DELETE FROM audit_auditleaf WHERE id = %s", entry.pk)
    _sql("DELETE FROM audit_auditevent WHERE id = %s", entry.event_id)
    assert not audit_verify(log).ok
    _bundle_fails(log)


def test_inserting_an_event_is_detected() -> None:
    _, log = _logged_tenant()
    last = AuditLeaf.objects.filter(log=log).order_by("-index").first()
    assert last is not None
    # Shift every later leaf up by one and put a forged event at index 3.
    _sql('UPDATE audit_auditleaf SET "index" = "index" + 1000 WHERE log = %s AND "index" >= 3', log)
    _sql(
        'UPDATE audit_auditleaf SET "index" = "index" - 999 WHERE log = %s AND "index" >= 1003', log
    )
    forged = audit_record("tenant.update", tenant=_middle_tenant(log), details={"forged": True})
    from vault.crypto.merkle import leaf_hash

    _sql(
        'INSERT INTO audit_auditleaf (log, "index", event_id, hash) VALUES (%s, 3, %s, %s)',
        log,
        forged.pk,
        leaf_hash(bytes(forged.leaf)),
    )
    assert not audit_verify(log).ok
    _bundle_fails(log)


def _middle_tenant(log: str) -> Any:
    from vault.audit.services import tenant_of_log

    return tenant_of_log(log)


def test_reordering_two_events_is_detected() -> None:
    _, log = _logged_tenant()
    a = AuditLeaf.objects.get(log=log, index=2)
    b = AuditLeaf.objects.get(log=log, index=3)
    _sql('UPDATE audit_auditleaf SET "index" = -1 WHERE id = %s', a.pk)
    _sql('UPDATE audit_auditleaf SET "index" = 2, hash = %s WHERE id = %s', bytes(b.hash), b.pk)
    _sql('UPDATE audit_auditleaf SET "index" = 3 WHERE id = %s', a.pk)
    assert not audit_verify(log).ok
    _bundle_fails(log)


def test_the_triggers_refuse_updates_deletes_and_truncation() -> None:
    _, log = _logged_tenant()
    entry = _middle(log)
    statements: list[tuple[str, list[Any]]] = [
        ("UPDATE audit_auditevent SET actor_id = 'x' WHERE id = %s", [entry.event_id]),
        ("DELETE FROM audit_auditleaf WHERE id = %s", [entry.pk]),
        ("UPDATE audit_auditcheckpoint SET size = 0 WHERE log = %s", [log]),
        ("DELETE FROM audit_auditcheckpoint WHERE log = %s", [log]),
    ]
    if connection.vendor == "postgresql":
        statements.append(("TRUNCATE audit_auditleaf CASCADE", []))
    for statement, params in statements:
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, params)
    assert audit_verify(log).ok
    assert AuditCheckpoint.objects.filter(log=log).exists()


# --- fail closed -------------------------------------------------------------------------------


@contextmanager
def _audit_rejected_for(tenant_id: int) -> Iterator[None]:
    """A trigger that makes the database refuse one tenant's audit inserts."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_reject_audit() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.tenant_id = {int(tenant_id)} THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER test_reject_audit BEFORE INSERT ON audit_auditevent "
                "FOR EACH ROW EXECUTE FUNCTION test_reject_audit()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_reject_audit BEFORE INSERT ON audit_auditevent "
                f"WHEN NEW.tenant_id = {int(tenant_id)} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("DROP TRIGGER test_reject_audit ON audit_auditevent")
                cursor.execute("DROP FUNCTION test_reject_audit()")
            else:
                cursor.execute("DROP TRIGGER test_reject_audit")


def test_a_tenant_whose_audit_writes_fail_cannot_read_or_write_and_others_go_on() -> None:
    broken, healthy = _client(), _client()
    obj = _create(broken)["id"]
    assert _put(broken, obj, MARKER).status_code == 201
    other = _create(healthy)["id"]
    with _audit_rejected_for(broken.tenant.pk):
        # Each request in a transaction of its own, as under a server (the test's own
        # transaction wraps everything here; a failed audit write dooms the one it is in).
        with transaction.atomic():
            upload = _put(broken, obj, b"new content")
        assert upload.status_code == 503
        assert upload.json()["error"]["code"] == "audit_unavailable"
        with transaction.atomic():
            response, body = _get(broken, obj)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "audit_unavailable"
        assert MARKER not in body
        with transaction.atomic():
            created = broken.post("/api/v1/objects/", {"name": "new"}, format="json")
        assert created.status_code == 503
        # The other tenant is not held up.
        with transaction.atomic():
            assert _put(healthy, other, b"fine").status_code == 201
        with transaction.atomic():
            assert _get(healthy, other)[1] == b"fine"
    assert ObjectVersion.objects.filter(object_id=obj).count() == 1
    assert not broken.get("/api/v1/objects/?prefix=new").json()["results"]
    assert _get(broken, obj)[1] == MARKER


# --- commands ----------------------------------------------------------------------------------


def test_the_management_commands_checkpoint_export_and_verify(tmp_path) -> None:
    owner, log = _logged_tenant()
    _create(owner, "more")
    out = StringIO()
    call_command("audit_checkpoint", "--tenant", owner.tenant.slug, stdout=out)
    assert "checkpoint at size" in out.getvalue()
    target = tmp_path / "export.json"
    call_command("audit_export", "--tenant", owner.tenant.slug, "--output", str(target), stdout=out)
    verify_bundle(target.read_bytes(), trusted=log_signer(log).all_keys)
    out = StringIO()
    call_command("audit_verify", "--tenant", owner.tenant.slug, stdout=out)
    assert "OK" in out.getvalue()
    entry = _middle(log)
    _sql("UPDATE audit_auditevent SET type = 'object.read' WHERE id = %s", entry.event_id)
    with pytest.raises(SystemExit) as exited:
        call_command("audit_verify", "--tenant", owner.tenant.slug, stdout=StringIO())
    assert exited.value.code == 1


def test_the_admin_shows_audit_rows_but_cannot_change_them(rf) -> None:
    from django.contrib import admin

    from vault.audit.admin import AuditEventAdmin

    event = audit_record("tenant.update", details={"x": 1})
    model_admin = AuditEventAdmin(AuditEvent, admin.site)
    request = rf.get("/admin/")
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, event)
    assert not model_admin.has_delete_permission(request, event)


# --- retention ---------------------------------------------------------------------------------


def test_retention_removes_only_archived_old_events_and_the_log_still_verifies(
    settings, tmp_path
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from vault.audit.models import AuditPrune
    from vault.audit.services import audit_prune, latest_checkpoint

    owner, log = _logged_tenant()
    later = timezone.now() + timedelta(days=settings.VAULT_AUDIT_RETENTION_DAYS + 1)
    assert audit_prune(log, now=later) == 0, "nothing is archived yet"
    target = tmp_path / "archive.json"
    call_command(
        "audit_export",
        "--tenant",
        owner.tenant.slug,
        "--output",
        str(target),
        "--archive",
        stdout=StringIO(),
    )
    archived = latest_checkpoint(log)
    assert archived is not None
    assert audit_prune(log, now=timezone.now()) == 0, "nothing is old enough yet"
    _create(owner, "after the archive")
    audit_integrate(log)
    removed = audit_prune(log, now=later)
    assert removed == archived.size
    assert AuditLeaf.objects.filter(log=log).count() > archived.size, "the leaves stay"
    assert AuditPrune.objects.get(log=log).below_index == archived.size
    # The archive still verifies offline; the live log still verifies too, and so does a fresh
    # export of what is left.
    verify_bundle(target.read_bytes(), trusted=log_signer(log).all_keys)
    audit_integrate(log)
    assert audit_verify(log, now=later).ok, audit_verify(log, now=later).problems
    # Today the pruned events would be too young to have been pruned: that is a finding.
    assert any("retention period" in p for p in audit_verify(log).problems)
    report = verify_bundle(_exported(log), trusted=log_signer(log).all_keys)
    assert report.first_index == archived.size
    # A deletion past the pruned range is still caught.
    entry = AuditLeaf.objects.filter(log=log, index__gt=archived.size).order_by("index").first()
    assert entry is not None
    _sql("DELETE FROM audit_auditevent WHERE id = %s", entry.event_id)
    assert any("missing" in problem for problem in audit_verify(log, now=later).problems)
    # Retention's own records, leaves and checkpoints cannot be deleted.
    for table in ("audit_auditprune", "audit_auditleaf", "audit_auditcheckpoint"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table}")  # noqa: S608


def test_a_forged_pruning_record_does_not_hide_recent_deletions() -> None:
    """Someone with the application's database access (triggers intact) inserts the guard row,
    deletes a recent event and records a 'prune' covering it: verification still reports it."""
    from django.utils import timezone

    from vault.audit.models import AuditPrune, AuditPruneGuard

    _, log = _logged_tenant()
    entry = _middle(log)
    with transaction.atomic():
        guard = AuditPruneGuard.objects.create()
        AuditEvent.objects.filter(pk=entry.event_id).delete()
        guard.delete()
        AuditPrune.objects.create(log=log, below_index=entry.index + 1, cutoff=timezone.now())
    problems = audit_verify(log).problems
    assert any("retention period" in p for p in problems)
    assert any("missing" in p for p in problems)
