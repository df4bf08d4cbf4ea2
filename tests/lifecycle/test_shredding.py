"""Dual control and crypto-shredding: a destroy from request through two approvals to a signed
certificate, with keys that are really gone."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from kms_plugins.errors import KeyDestroyed
from kms_plugins.types import KeyState
from tests.objects.test_objects import _client, _create, _get, _put
from vault.audit.models import AuditEvent
from vault.audit.services import log_of, log_signer
from vault.crypto import envelope
from vault.crypto.checkpoint import CheckpointKey
from vault.crypto.merkle import root_from_leaves
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.approvals import approvals_due
from vault.lifecycle.models import ApprovalRequest, RequestState
from vault.objects.models import ObjectVersion
from vault.objects.services import version_context
from vault.tenants.models import Membership, Role

pytestmark = pytest.mark.django_db


def _team(recovery_alias: str | None = None, backend: str = "local"):
    member = _client(role=Role.MEMBER, bind=False)
    tenant = member.tenant
    args = ["tenant_bind_backend", "--tenant", tenant.slug, "--backend", backend]
    if recovery_alias:
        args += ["--recovery", recovery_alias]
    call_command(*args, stdout=StringIO())
    people = {name: _client(role=Role.CUSTODIAN, tenant=tenant) for name in ("c1", "c2", "c3")}
    people["owner"] = _client(role=Role.OWNER, tenant=tenant)
    people["member"] = member
    return tenant, people


def _request(client, reason: str = "customer offboarding") -> dict:
    response = client.post(
        "/api/v1/approvals/", {"action": "key.destroy", "reason": reason}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def _decide(client, request_id: int, verb: str = "approve"):
    return client.post(
        f"/api/v1/approvals/{request_id}/{verb}/", {"reason": "checked"}, format="json"
    )


def _escrow(settings, tmp_path) -> str:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "escrow": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "e.json"), "KEY_FILE": str(tmp_path / "e.key")},
        },
    }
    return "escrow"


def test_a_destroy_goes_from_request_through_two_approvals_to_a_certified_shred(
    settings, tmp_path
) -> None:
    settings.VAULT_SHRED_WAIT_DAYS = 0
    tenant, people = _team(recovery_alias=_escrow(settings, tmp_path))
    member = people["member"]
    ids = []
    for index in range(3):
        obj = _create(member, f"o{index}")["id"]
        assert _put(member, obj, f"secret {index}".encode()).status_code == 201
        ids.append(obj)
    version = ObjectVersion.objects.get(object_id=ids[0])
    header = envelope.parse_header(bytes(version.header))
    context = version_context(version.object, version.number)
    saved = {s.key.key_id: s for s in header.stanzas}  # a saved copy of each wrapped DEK
    primary = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    recovery = KeyBinding.objects.get(tenant=tenant, role=KeyRole.RECOVERY)
    assert set(saved) == {primary.key_id, recovery.key_id}

    request = _request(people["c3"])
    assert request["state"] == "pending"
    assert request["required"] == 2
    own = _decide(people["c3"], request["id"])
    assert (own.status_code, own.json()["error"]["code"]) == (403, "self_approval")
    first = _decide(people["c1"], request["id"])
    assert first.status_code == 200
    assert first.json()["state"] == "pending"
    twice = _decide(people["c1"], request["id"])
    assert (twice.status_code, twice.json()["error"]["code"]) == (409, "already_decided")
    assert _get(member, ids[0])[1] == b"secret 0", "nothing happens before the second approval"
    done = _decide(people["c2"], request["id"])
    assert done.status_code == 200, done.content
    assert done.json()["state"] == "executed"

    # Reads answer 410; nothing new is stored.
    response, _ = _get(member, ids[0])
    assert (response.status_code, response.json()["error"]["code"]) == (410, "object_shredded")
    refused = member.post("/api/v1/objects/", {"name": "new"}, format="json")
    assert (refused.status_code, refused.json()["error"]["code"]) == (410, "tenant_shredded")

    # The keys are really gone: the saved wrapped DEKs no longer unwrap, primary or recovery.
    for binding in (primary, recovery):
        backend = key_backend(binding.backend_alias)
        with pytest.raises(KeyDestroyed):
            backend.unwrap(saved[binding.key_id], context)
        states = {v.state for v in backend.describe(binding.key_id).versions}
        assert states == {KeyState.DESTROYED}

    # The certificate: signed by the tenant's signing key, with the right Merkle root.
    certificate = people["owner"].get(f"/api/v1/keys/certificates/{done.json()['certificate']}/")
    assert certificate.status_code == 200
    data = certificate.json()
    body = data["body"].encode()
    trusted = log_signer(log_of(tenant)).key
    assert trusted.vkey == data["signing_key"]
    assert trusted.verify(body, base64.b64decode(data["signature"]))
    assert not trusted.verify(
        body.replace(b'"objects_affected":3', b'"objects_affected":2'),
        base64.b64decode(data["signature"]),
    )
    assert CheckpointKey.from_vkey(data["signing_key"]).verify(
        body, base64.b64decode(data["signature"])
    )
    certified = json.loads(body)
    assert certified["objects_affected"] == 3
    expected_root = root_from_leaves(str(pk).encode() for pk in sorted(ids))
    assert base64.b64decode(certified["objects_root"]) == expected_root
    assert certified["approvers"] == [
        people["c1"].user_email,
        people["c2"].user_email,
    ]
    assert {k["role"] for k in certified["keys"]} == {"primary", "recovery"}
    assert all(k["destroy_assurance"] for k in certified["keys"])
    # Anchored in the audit log.
    anchored = AuditEvent.objects.filter(
        tenant=tenant, type="key.destroy", resource_type="destruction_certificate"
    ).get()
    assert hashlib.sha256(body).hexdigest() in bytes(anchored.leaf).decode()


def test_a_denial_ends_the_request_and_an_expired_request_cannot_be_approved(settings) -> None:
    settings.VAULT_SHRED_WAIT_DAYS = 0
    _, people = _team()
    denied = _request(people["c1"])
    assert _decide(people["c2"], denied["id"], "deny").json()["state"] == "denied"
    late = _decide(people["c3"], denied["id"])
    assert (late.status_code, late.json()["error"]["code"]) == (409, "not_pending")
    expiring = _request(people["c1"])
    ApprovalRequest.objects.filter(pk=expiring["id"]).update(expires_at=timezone.now())
    answer = _decide(people["c2"], expiring["id"])
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "not_pending")
    assert ApprovalRequest.objects.get(pk=expiring["id"]).state == RequestState.EXPIRED


def test_the_waiting_period_can_be_cancelled_and_otherwise_ends_in_the_shred(settings) -> None:
    _, people = _team()
    member = people["member"]
    obj = _create(member)["id"]
    _put(member, obj, b"kept")
    cancelled = _request(people["c1"])
    _decide(people["c2"], cancelled["id"])
    approved = _decide(people["c3"], cancelled["id"]).json()
    assert approved["state"] == "approved"
    assert approved["not_before"] is not None
    stop = people["owner"].post(f"/api/v1/approvals/{cancelled['id']}/cancel/")
    assert stop.json()["state"] == "cancelled"
    later = timezone.now() + timedelta(days=settings.VAULT_SHRED_WAIT_DAYS + 1)
    assert approvals_due(now=later) == 0
    assert _get(member, obj)[1] == b"kept"
    going = _request(people["c1"])
    _decide(people["c2"], going["id"])
    _decide(people["c3"], going["id"])
    assert approvals_due() == 0, "not before the waiting period ends"
    assert approvals_due(now=later) == 1
    assert _get(member, obj)[0].status_code == 410


def test_only_custodians_and_owners_acting_as_people_take_part() -> None:
    from rest_framework.test import APIClient

    from vault.tokens.services import token_create

    tenant, people = _team()
    assert people["member"].post("/api/v1/approvals/", {}, format="json").status_code == 403
    issued = token_create(tenant=tenant, name="robot", role=Role.CUSTODIAN)
    robot = APIClient()
    robot.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    answer = robot.post(
        "/api/v1/approvals/", {"action": "key.destroy", "reason": "x"}, format="json"
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "not_a_custodian")


def test_loosening_the_policy_and_adding_an_owner_need_two_approvals(settings) -> None:
    tenant, people = _team()
    owner = people["owner"]
    assert owner.patch("/api/v1/tenant/", {"deduplicate": True}, format="json").status_code == 409
    direct = owner.post(
        "/api/v1/members/", {"email": "boss@x.example", "role": "owner"}, format="json"
    )
    assert (direct.status_code, direct.json()["error"]["code"]) == (409, "dual_control_required")
    member_id = Membership.objects.get(user__email=people["member"].user_email).pk
    promote = owner.patch(f"/api/v1/members/{member_id}/", {"role": "owner"}, format="json")
    assert promote.status_code == 409

    loosen = owner.post(
        "/api/v1/approvals/",
        {
            "action": "tenant.policy.loosen",
            "reason": "storage costs",
            "params": {"deduplicate": True},
        },
        format="json",
    )
    assert loosen.status_code == 201, loosen.content
    _decide(people["c1"], loosen.json()["id"])
    tenant.refresh_from_db()
    assert tenant.deduplicate is False, "one approval is not enough"
    assert _decide(people["c2"], loosen.json()["id"]).json()["state"] == "executed"
    tenant.refresh_from_db()
    assert tenant.deduplicate is True

    add = people["c1"].post(
        "/api/v1/approvals/",
        {"action": "member.owner.add", "reason": "new CFO", "params": {"email": "boss@x.example"}},
        format="json",
    )
    assert add.status_code == 201
    _decide(people["owner"], add.json()["id"])
    _decide(people["c2"], add.json()["id"])
    assert Membership.objects.get(tenant=tenant, user__email="boss@x.example").role == Role.OWNER
    bad = owner.post(
        "/api/v1/approvals/",
        {"action": "member.owner.add", "reason": "x", "params": {}},
        format="json",
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_parameters")


def test_a_destruction_that_has_started_cannot_be_cancelled(settings, monkeypatch) -> None:
    from vault.lifecycle import approvals

    _, people = _team()
    request = _request(people["c3"])
    _decide(people["c1"], request["id"])
    _decide(people["c2"], request["id"])
    answers = []
    real = approvals.tenant_shred

    def cancel_meanwhile(**kwargs):
        # A custodian presses "cancel" while the scheduler is already destroying the keys.
        answers.append(people["c1"].post(f"/api/v1/approvals/{request['id']}/cancel/"))
        return real(**kwargs)

    monkeypatch.setattr(approvals, "tenant_shred", cancel_meanwhile)
    later = timezone.now() + timedelta(days=settings.VAULT_SHRED_WAIT_DAYS + 1)
    assert approvals_due(now=later) == 1
    assert (answers[0].status_code, answers[0].json()["error"]["code"]) == (409, "not_pending")
    assert ApprovalRequest.objects.get(pk=request["id"]).state == RequestState.EXECUTED


def test_a_destruction_interrupted_by_the_backend_is_finished_not_cancelled(
    settings, tmp_path
) -> None:
    tenant, people = _team()
    member = people["member"]
    obj = _create(member)["id"]
    _put(member, obj, b"doomed")
    request = _request(people["c3"])
    _decide(people["c1"], request["id"])
    _decide(people["c2"], request["id"])
    directory = key_backend("local")._path.parent
    directory.rename(tmp_path / "away")
    later = timezone.now() + timedelta(days=settings.VAULT_SHRED_WAIT_DAYS + 1)
    try:
        assert approvals_due(now=later) == 0
        stuck = ApprovalRequest.objects.get(pk=request["id"])
        assert stuck.state == RequestState.EXECUTING
        assert stuck.last_error
        refused = people["c1"].post(f"/api/v1/approvals/{request['id']}/cancel/")
        assert refused.status_code == 409
    finally:
        (tmp_path / "away").rename(directory)
    assert approvals_due(now=later) == 1
    assert ApprovalRequest.objects.get(pk=request["id"]).state == RequestState.EXECUTED
    assert _get(member, obj)[0].status_code == 410
    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    states = {v.state for v in key_backend("local").describe(binding.key_id).versions}
    assert states == {KeyState.DESTROYED}


def test_custodians_are_appointed_under_dual_control_and_votes_need_standing(settings) -> None:
    settings.VAULT_SHRED_WAIT_DAYS = 0
    _, people = _team()
    owner = people["owner"]
    direct = owner.post(
        "/api/v1/members/", {"email": "friend@x.example", "role": "custodian"}, format="json"
    )
    assert (direct.status_code, direct.json()["error"]["code"]) == (409, "dual_control_required")
    member_id = Membership.objects.get(user__email=people["member"].user_email).pk
    assert (
        owner.patch(f"/api/v1/members/{member_id}/", {"role": "custodian"}, format="json")
    ).status_code == 409
    # The person to be appointed may not approve their own appointment.
    appoint = _decide  # (readability)
    request = owner.post(
        "/api/v1/approvals/",
        {
            "action": "member.custodian.add",
            "reason": "new custodian",
            "params": {"email": people["c1"].user_email},
        },
        format="json",
    ).json()
    own = appoint(people["c1"], request["id"])
    assert (own.status_code, own.json()["error"]["code"]) == (403, "self_approval")
    # A vote from someone demoted since no longer counts.
    destroy = _request(people["c3"])
    assert _decide(people["c1"], destroy["id"]).status_code == 200
    c1 = Membership.objects.get(user__email=people["c1"].user_email)
    c1.role = Role.MEMBER
    c1.save(update_fields=["role"])
    still = _decide(people["c2"], destroy["id"])
    assert still.json()["state"] == "pending", "one standing approval is not two"
