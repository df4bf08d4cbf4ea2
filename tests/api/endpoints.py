"""The harness entries for every /api/v1/ endpoint. Add one when you add an endpoint."""

from __future__ import annotations

import base64
import io
from typing import Any

from tests.api.harness import ROLES, Endpoint, Side, World
from vault.accounts.models import User
from vault.objects.models import StoredObject
from vault.objects.services import object_create, version_store_gateway
from vault.tenants.models import Membership, Role
from vault.tokens.models import ApiToken
from vault.tokens.services import token_create

EVERYONE = frozenset(ROLES)
READERS = frozenset({Role.OWNER, Role.AUDITOR})
OWNERS = frozenset({Role.OWNER})


def _tenant_is_mine(response: Any, world: World) -> None:
    assert response.json()["slug"] == world.mine.tenant.slug


def _members_are_mine(response: Any, world: World) -> None:
    emails = {row["email"] for row in response.json()["results"]}
    assert emails, "the list must hold the caller's members"
    assert all(email.endswith(f"@{world.mine.tenant.slug}.example") for email in emails), emails


def _tokens_are_mine(response: Any, world: World) -> None:
    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's tokens"
    assert ids <= set(
        ApiToken.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    )


def _member_created_here(response: Any, world: World) -> None:
    assert Membership.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _token_created_here(response: Any, world: World) -> None:
    assert ApiToken.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _new_member(world: World, side: Side, role: str) -> int:
    user = User.objects.create_user(
        email=world.unique("new-member") + f"@{side.tenant.slug}.example"
    )
    return Membership.objects.create(tenant=side.tenant, user=user, role=Role.MEMBER).pk


def _own_token(world: World, side: Side, role: str) -> int:
    caller = side.actors[role]
    return token_create(
        tenant=side.tenant, name=world.unique("child"), role=role, parent=caller.token
    ).token.pk


def _new_member_payload(world: World, side: Side, role: str) -> dict[str, Any]:
    return {"email": world.unique("new") + "@elsewhere.example", "role": "member"}


def _token_payload(world: World, side: Side, role: str) -> dict[str, Any]:
    return {"name": world.unique("token"), "role": role}


OBJECT_READERS = frozenset({Role.OWNER, Role.MEMBER, Role.AUDITOR})
OBJECT_WRITERS = frozenset({Role.OWNER, Role.MEMBER})


def _new_object(world: World, side: Side, role: str) -> int:
    obj = object_create(
        tenant=side.tenant,
        name=world.unique("obj"),
        mode="gateway",
        content_type="text/plain",
        token=None,
    )
    version_store_gateway(
        obj=obj, stream=io.BytesIO(b"hello"), length=5, content_type="text/plain", token=None
    )
    return obj.pk


_CLIENT_HEADERS: dict[int, bytes] = {}


def _new_client_object(world: World, side: Side, role: str) -> int:
    from kms_plugins.types import KeyRef, WrappedKey
    from vault.crypto import envelope
    from vault.objects.services import version_context, version_store_client

    uploader = side.actors[role].token
    obj = object_create(
        tenant=side.tenant,
        name=world.unique("c-obj"),
        mode="client",
        content_type="x/y",
        token=None,
    )
    stanza = WrappedKey("local", KeyRef("k", 1), "A256GCM", b"w" * 60)
    made = envelope.encrypt(
        b"client", dek=b"d" * 32, context=version_context(obj, 1), stanzas=[stanza]
    )
    version_store_client(
        obj=obj, stream=io.BytesIO(made), length=len(made), content_type="x/y", token=uploader
    )
    _CLIENT_HEADERS[obj.pk] = _CLIENT_HEADERS[-1] = bytes(obj.versions.get().header)
    return obj.pk


def _same_header(world: World, side: Side, role: str) -> bytes:
    return _CLIENT_HEADERS[-1]  # the header of the object made just before the call


def _client_object_unchanged(pk: int) -> bool:
    obj = StoredObject.objects.get(pk=pk)
    return obj.versions.count() == 1 and bytes(obj.versions.get().header) == _CLIENT_HEADERS[pk]


def _objects_are_mine(response: Any, world: World) -> None:
    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's objects"
    assert ids <= set(
        StoredObject.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    )


def _object_created_here(response: Any, world: World) -> None:
    assert StoredObject.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _object_unchanged(pk: int) -> bool:
    obj = StoredObject.objects.get(pk=pk)
    return obj.deleted_at is None and obj.versions.count() == 1


def _new_upload(world: World, side: Side, role: str) -> Any:
    from vault.objects.uploads import upload_create

    obj = StoredObject.objects.get(pk=_new_object(world, side, role))
    return upload_create(
        obj=obj, length=20, content_type="text/plain", token=side.actors[role].token
    ).pk


def _upload_unchanged(pk: Any) -> bool:
    from vault.objects.models import UploadSession

    session = UploadSession.objects.filter(pk=pk).first()
    return session is not None and session.received == 0 and not session.parts.exists()


def _upload_payload(world: World, side: Side, role: str) -> dict[str, Any]:
    return {"object": _new_object(world, side, role), "length": 1000}


def _upload_created_here(response: Any, world: World) -> None:
    from vault.objects.models import UploadSession

    session = UploadSession.objects.get(pk=response.json()["id"])
    assert session.object.tenant == world.mine.tenant


def _tenant_unchanged_elsewhere(response: Any, world: World) -> None:
    _tenant_is_mine(response, world)
    world.other.tenant.refresh_from_db()
    assert not world.other.tenant.deduplicate
    assert response.json()["deduplicate"] is False


def _integrate(world: World) -> bool:
    from vault.audit.services import audit_integrate, log_of

    for side in (world.mine, world.other):
        audit_integrate(log_of(side.tenant))
    return True


def _new_event(world: World, side: Side, role: str) -> int:
    from vault.audit.services import audit_integrate, audit_record, log_of

    event = audit_record("tenant.update", tenant=side.tenant, details={"test": True})
    audit_integrate(log_of(side.tenant))
    return event.pk


def _event_unchanged(pk: int) -> bool:
    from vault.audit.models import AuditEvent

    return AuditEvent.objects.filter(pk=pk).exists()


def _my_origin(world: World) -> str:
    from vault.audit.services import log_of, origin_of_log

    return origin_of_log(log_of(world.mine.tenant), world.mine.tenant)


def _events_are_mine(response: Any, world: World) -> None:
    from vault.audit.models import AuditEvent

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's events"
    mine = {
        str(u)
        for u in AuditEvent.objects.filter(tenant=world.mine.tenant).values_list("uuid", flat=True)
    }
    assert ids <= mine


def _checkpoint_is_mine(response: Any, world: World) -> None:
    assert response.json()["origin"] == _my_origin(world)
    assert response.json()["note"].startswith(_my_origin(world) + "\n")


def _keys_are_mine(response: Any, world: World) -> None:
    assert response.json()["origin"] == _my_origin(world)
    assert response.json()["keys"]


def _proof_is_mine(response: Any, world: World) -> None:
    from vault.audit.services import latest_checkpoint, log_of, log_tree
    from vault.crypto.merkle import verify_consistency

    log = log_of(world.mine.tenant)
    body = response.json()
    tree = log_tree(log)
    proof = [base64.b64decode(h) for h in body["proof"]]
    latest = latest_checkpoint(log)
    assert latest is not None
    verify_consistency(
        old_size=body["from"],
        new_size=body["to"],
        old_root=tree.root(body["from"]),
        new_root=bytes(latest.root),
        proof=proof,
    )


def _export_is_mine(response: Any, world: World) -> None:
    import json

    assert json.loads(response.content)["origin"] == _my_origin(world)


KEY_READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})
KEY_PEOPLE = frozenset({Role.OWNER, Role.CUSTODIAN})


def _new_campaign(world: World, side: Side, role: str) -> int:
    from vault.lifecycle.services import key_rotate

    return key_rotate(tenant=side.tenant).pk


def _campaign_unchanged(pk: int) -> bool:
    from vault.lifecycle.models import Campaign

    return Campaign.objects.filter(pk=pk, state="running").exists()


def _campaigns_are_mine(response: Any, world: World) -> None:
    from vault.lifecycle.models import Campaign

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's campaigns"
    assert ids <= set(
        Campaign.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    )


def _campaign_created_here(response: Any, world: World) -> None:
    from vault.lifecycle.models import Campaign

    assert Campaign.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant
    assert not Campaign.objects.filter(tenant=world.other.tenant).exists()


def _new_request(world: World, side: Side, role: str) -> int:
    """A destroy request made by another custodian of ``side`` (so ``role`` may decide)."""
    from vault.lifecycle.approvals import approval_request

    requester = User.objects.create_user(email=world.unique("requester") + "@x.example")
    Membership.objects.create(tenant=side.tenant, user=requester, role=Role.CUSTODIAN)
    return approval_request(
        tenant=side.tenant, user=requester, action="key.destroy", reason="test", params={}
    ).pk


def _request_pending(pk: int) -> bool:
    from vault.lifecycle.models import ApprovalRequest

    found = ApprovalRequest.objects.filter(pk=pk).first()
    return found is not None and found.state == "pending" and not found.votes.exists()


def _requests_are_mine(response: Any, world: World) -> None:
    from vault.lifecycle.models import ApprovalRequest

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's requests"
    assert ids <= set(
        ApprovalRequest.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    )


def _request_created_here(response: Any, world: World) -> None:
    from vault.lifecycle.models import ApprovalRequest

    assert ApprovalRequest.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _new_certificate(world: World, side: Side, role: str) -> int:
    from vault.lifecycle.models import DestructionCertificate

    request = _new_request(world, side, role)
    return DestructionCertificate.objects.create(
        tenant=side.tenant, request_id=request, body=b"{}", signature="", signing_key=""
    ).pk


def _certificate_there(pk: int) -> bool:
    from vault.lifecycle.models import DestructionCertificate

    return DestructionCertificate.objects.filter(pk=pk).exists()


def _certificates_are_mine(response: Any, world: World) -> None:
    from vault.lifecycle.models import DestructionCertificate

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's certificates"
    mine = DestructionCertificate.objects.filter(tenant=world.mine.tenant)
    assert ids <= set(mine.values_list("id", flat=True))


def _mine_with_an_object(response: Any, world: World) -> None:
    _objects_are_mine(response, world)


ENDPOINTS = [
    Endpoint("v1:tenant", "GET", EVERYONE, 200, check_scope=_tenant_is_mine),
    Endpoint(
        "v1:tenant",
        "PATCH",
        OWNERS,
        200,
        payload=lambda w, s, r: {"deduplicate": False},
        check_scope=_tenant_unchanged_elsewhere,
    ),
    Endpoint("v1:member-list", "GET", READERS, 200, check_scope=_members_are_mine),
    Endpoint(
        "v1:member-list",
        "POST",
        OWNERS,
        201,
        payload=_new_member_payload,
        check_scope=_member_created_here,
    ),
    Endpoint(
        "v1:member-detail",
        "GET",
        READERS,
        200,
        make_object=_new_member,
        still_there=lambda pk: Membership.objects.filter(pk=pk).exists(),
    ),
    Endpoint(
        "v1:member-detail",
        "PATCH",
        OWNERS,
        200,
        make_object=_new_member,
        payload=lambda w, s, r: {"role": "auditor"},
        still_there=lambda pk: Membership.objects.filter(pk=pk, role=Role.MEMBER).exists(),
    ),
    Endpoint(
        "v1:member-detail",
        "DELETE",
        OWNERS,
        204,
        make_object=_new_member,
        still_there=lambda pk: Membership.objects.filter(pk=pk).exists(),
    ),
    Endpoint("v1:token-list", "GET", EVERYONE, 200, check_scope=_tokens_are_mine),
    Endpoint(
        "v1:token-list",
        "POST",
        EVERYONE,
        201,
        payload=_token_payload,
        check_scope=_token_created_here,
        refusals=[
            (role, {"name": "wider", "role": Role.OWNER}, 403, "role_not_allowed")
            for role in ROLES
            if role != Role.OWNER
        ],
    ),
    Endpoint(
        "v1:token-detail",
        "GET",
        EVERYONE,
        200,
        make_object=_own_token,
        still_there=lambda pk: ApiToken.objects.filter(pk=pk).exists(),
    ),
    Endpoint(
        "v1:object-list",
        "GET",
        OBJECT_READERS,
        200,
        check_scope=_objects_are_mine,
        prepare=lambda world: (
            _new_object(world, world.mine, Role.OWNER)
            and _new_object(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:object-list",
        "POST",
        OBJECT_WRITERS,
        201,
        payload=lambda w, s, r: {"name": w.unique("new-object")},
        check_scope=_object_created_here,
    ),
    Endpoint(
        "v1:object-detail",
        "GET",
        OBJECT_READERS,
        200,
        make_object=_new_object,
        still_there=_object_unchanged,
    ),
    Endpoint(
        "v1:object-detail",
        "DELETE",
        OBJECT_WRITERS,
        204,
        make_object=_new_object,
        still_there=_object_unchanged,
    ),
    Endpoint(
        "v1:object-versions",
        "GET",
        OBJECT_READERS,
        200,
        make_object=_new_object,
        still_there=_object_unchanged,
    ),
    Endpoint(
        "v1:object-content",
        "GET",
        OBJECT_WRITERS,
        200,
        make_object=_new_object,
        still_there=_object_unchanged,
    ),
    Endpoint(
        "v1:object-content",
        "PUT",
        OBJECT_WRITERS,
        201,
        make_object=_new_object,
        payload=lambda w, s, r: b"new content",
        still_there=_object_unchanged,
    ),
    Endpoint(
        "v1:object-header",
        "PUT",
        OBJECT_WRITERS,
        200,
        make_object=_new_client_object,
        payload=_same_header,
        object_payload=lambda pk: _CLIENT_HEADERS[pk],
        still_there=_client_object_unchanged,
        url_kwargs={"number": 1},
    ),
    Endpoint(
        "v1:upload-list",
        "POST",
        OBJECT_WRITERS,
        201,
        payload=_upload_payload,
        check_scope=_upload_created_here,
    ),
    Endpoint(
        "v1:upload-detail",
        "GET",
        OBJECT_WRITERS,
        200,
        make_object=_new_upload,
        still_there=_upload_unchanged,
    ),
    Endpoint(
        "v1:upload-detail",
        "DELETE",
        OBJECT_WRITERS,
        204,
        make_object=_new_upload,
        still_there=_upload_unchanged,
    ),
    Endpoint(
        "v1:upload-part",
        "PUT",
        OBJECT_WRITERS,
        200,
        make_object=_new_upload,
        payload=lambda w, s, r: b"first ten.",
        still_there=_upload_unchanged,
        url_kwargs={"offset": 0},
    ),
    Endpoint(
        "v1:audit-event-list",
        "GET",
        READERS,
        200,
        check_scope=_events_are_mine,
        prepare=_integrate,
    ),
    Endpoint(
        "v1:audit-event-detail",
        "GET",
        READERS,
        200,
        make_object=_new_event,
        still_there=_event_unchanged,
    ),
    Endpoint(
        "v1:audit-event-proof",
        "GET",
        READERS,
        200,
        make_object=_new_event,
        still_there=_event_unchanged,
    ),
    Endpoint(
        "v1:audit-checkpoint",
        "GET",
        READERS,
        200,
        check_scope=_checkpoint_is_mine,
        prepare=_integrate,
    ),
    Endpoint("v1:audit-keys", "GET", READERS, 200, check_scope=_keys_are_mine),
    Endpoint(
        "v1:audit-consistency-proof",
        "GET",
        READERS,
        200,
        payload=lambda w, s, r: {"from": 1},
        check_scope=_proof_is_mine,
        prepare=_integrate,
    ),
    Endpoint(
        "v1:audit-export",
        "GET",
        READERS,
        200,
        check_scope=_export_is_mine,
        prepare=_integrate,
    ),
    Endpoint(
        "v1:key-campaign-list",
        "GET",
        KEY_READERS,
        200,
        check_scope=_campaigns_are_mine,
        prepare=lambda world: (
            _new_campaign(world, world.mine, Role.OWNER)
            and _new_campaign(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:key-campaign-list",
        "POST",
        KEY_PEOPLE,
        202,
        payload=lambda w, s, r: {"role": "primary"},
        check_scope=_campaign_created_here,
    ),
    Endpoint(
        "v1:key-campaign-detail",
        "GET",
        KEY_READERS,
        200,
        make_object=_new_campaign,
        still_there=_campaign_unchanged,
    ),
    Endpoint(
        "v1:approval-list",
        "GET",
        KEY_READERS,
        200,
        check_scope=_requests_are_mine,
        prepare=lambda world: (
            _new_request(world, world.mine, Role.OWNER)
            and _new_request(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:approval-list",
        "POST",
        KEY_PEOPLE,
        201,
        payload=lambda w, s, r: {"action": "key.destroy", "reason": "offboarding"},
        check_scope=_request_created_here,
    ),
    Endpoint(
        "v1:approval-detail",
        "GET",
        KEY_READERS,
        200,
        make_object=_new_request,
        still_there=_request_pending,
    ),
    *(
        Endpoint(
            f"v1:approval-{verb}",
            "POST",
            KEY_PEOPLE,
            200,
            make_object=_new_request,
            payload=lambda w, s, r: {"reason": "checked"},
            still_there=_request_pending,
        )
        for verb in ("approve", "deny", "cancel")
    ),
    Endpoint(
        "v1:key-certificate-list",
        "GET",
        KEY_READERS,
        200,
        check_scope=_certificates_are_mine,
        prepare=lambda world: (
            _new_certificate(world, world.mine, Role.OWNER)
            and _new_certificate(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:key-certificate-detail",
        "GET",
        KEY_READERS,
        200,
        make_object=_new_certificate,
        still_there=_certificate_there,
    ),
    Endpoint(
        "v1:token-detail",
        "DELETE",
        EVERYONE,
        204,
        make_object=_own_token,
        still_there=lambda pk: ApiToken.objects.filter(pk=pk, revoked_at__isnull=True).exists(),
    ),
]


# --- compliance ----------------------------------------------------------------------------------

COMPLIANCE_READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})
COMPLIANCE_DECIDERS = frozenset({Role.OWNER, Role.CUSTODIAN})


def _new_run(world: World, side: Side, role: str) -> str:
    from compliance.engine import compliance_run

    return str(compliance_run(side.tenant, checks=[]).pk)


def _run_there(pk: Any) -> bool:
    from compliance.models import ComplianceRun

    return ComplianceRun.objects.filter(pk=pk, state="finished").exists()


def _runs_are_mine(response: Any, world: World) -> None:
    from compliance.models import ComplianceRun

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's runs"
    mine = ComplianceRun.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    assert ids <= {str(pk) for pk in mine}


def _run_created_here(response: Any, world: World) -> None:
    from compliance.models import ComplianceRun

    assert ComplianceRun.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _export_of_my_run(response: Any, world: World) -> None:
    import json

    assert json.loads(response.content)["tenant"]["slug"] == world.mine.tenant.slug


def _new_waiver(world: World, side: Side, role: str) -> int:
    """A waiver asked by another custodian of ``side`` (so ``role`` may decide it)."""
    from compliance.services import waiver_request

    requester = User.objects.create_user(email=world.unique("asker") + "@x.example")
    Membership.objects.create(tenant=side.tenant, user=requester, role=Role.CUSTODIAN)
    return waiver_request(
        tenant=side.tenant,
        user=requester,
        check_id="KEY-001",
        justification="hardware arrives next quarter",
        days=30,
    ).pk


def _waiver_pending(pk: int) -> bool:
    from compliance.models import Waiver

    found = Waiver.objects.filter(pk=pk).first()
    return found is not None and found.state == "pending" and not found.approvals.exists()


def _waivers_are_mine(response: Any, world: World) -> None:
    from compliance.models import Waiver

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's waivers"
    assert ids <= set(Waiver.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True))


def _waiver_created_here(response: Any, world: World) -> None:
    from compliance.models import Waiver

    assert Waiver.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _new_attestation(world: World, side: Side, role: str) -> int:
    from compliance.services import attestation_create

    signer = side.actors[Role.OWNER].user
    assert signer is not None, "an attestation is a person's act"
    return attestation_create(
        tenant=side.tenant,
        user=signer,
        requirement="7.2.4",
        kind="access_review",
        statement="Reviewed every member and token.",
        valid_days=183,
    ).pk


def _attestation_there(pk: int) -> bool:
    from compliance.models import Attestation

    return Attestation.objects.filter(pk=pk).exists()


def _attestations_are_mine(response: Any, world: World) -> None:
    from compliance.models import Attestation

    ids = {row["id"] for row in response.json()["results"]}
    assert ids, "the list must hold the caller's attestations"
    mine = Attestation.objects.filter(tenant=world.mine.tenant).values_list("id", flat=True)
    assert ids <= set(mine)


def _attestation_created_here(response: Any, world: World) -> None:
    from compliance.models import Attestation

    assert Attestation.objects.get(pk=response.json()["id"]).tenant == world.mine.tenant


def _ca_is_served(response: Any, world: World) -> None:
    assert response.json()["certificate"].startswith("-----BEGIN CERTIFICATE-----")


COMPLIANCE_ENDPOINTS = [
    Endpoint(
        "v1:compliance-run-list",
        "GET",
        COMPLIANCE_READERS,
        200,
        check_scope=_runs_are_mine,
        prepare=lambda world: (
            _new_run(world, world.mine, Role.OWNER) and _new_run(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:compliance-run-list",
        "POST",
        COMPLIANCE_READERS,
        202,
        check_scope=_run_created_here,
    ),
    Endpoint(
        "v1:compliance-run-detail",
        "GET",
        COMPLIANCE_READERS,
        200,
        make_object=_new_run,
        still_there=_run_there,
    ),
    Endpoint(
        "v1:compliance-run-export",
        "GET",
        COMPLIANCE_READERS,
        200,
        make_object=_new_run,
        still_there=_run_there,
    ),
    Endpoint(
        "v1:compliance-waiver-list",
        "GET",
        COMPLIANCE_READERS,
        200,
        check_scope=_waivers_are_mine,
        prepare=lambda world: (
            _new_waiver(world, world.mine, Role.OWNER)
            and _new_waiver(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:compliance-waiver-list",
        "POST",
        COMPLIANCE_DECIDERS,
        201,
        payload=lambda w, s, r: {
            "check_id": "KEY-001",
            "justification": "hardware arrives next quarter",
            "days": 30,
        },
        check_scope=_waiver_created_here,
    ),
    Endpoint(
        "v1:compliance-waiver-detail",
        "GET",
        COMPLIANCE_READERS,
        200,
        make_object=_new_waiver,
        still_there=_waiver_pending,
    ),
    Endpoint(
        "v1:compliance-waiver-decide",
        "POST",
        COMPLIANCE_DECIDERS,
        200,
        make_object=_new_waiver,
        payload=lambda w, s, r: {"approve": True, "reason": "checked"},
        still_there=_waiver_pending,
    ),
    Endpoint(
        "v1:compliance-waiver-revoke",
        "POST",
        COMPLIANCE_DECIDERS,
        200,
        make_object=_new_waiver,
        still_there=_waiver_pending,
    ),
    Endpoint(
        "v1:compliance-attestation-list",
        "GET",
        COMPLIANCE_READERS,
        200,
        check_scope=_attestations_are_mine,
        prepare=lambda world: (
            _new_attestation(world, world.mine, Role.OWNER)
            and _new_attestation(world, world.other, Role.OWNER)
        ),
    ),
    Endpoint(
        "v1:compliance-attestation-list",
        "POST",
        COMPLIANCE_DECIDERS,
        201,
        payload=lambda w, s, r: {
            "requirement": "7.2.4",
            "kind": "access_review",
            "statement": "Reviewed every member and token.",
            "valid_days": 183,
        },
        check_scope=_attestation_created_here,
    ),
    Endpoint(
        "v1:compliance-attestation-detail",
        "GET",
        COMPLIANCE_READERS,
        200,
        make_object=_new_attestation,
        still_there=_attestation_there,
    ),
    Endpoint("v1:compliance-ca", "GET", EVERYONE, 200, check_scope=_ca_is_served),
]

ENDPOINTS += COMPLIANCE_ENDPOINTS
