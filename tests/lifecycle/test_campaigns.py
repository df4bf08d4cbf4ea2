"""Key rotation and rewrap campaigns: every stored data key moves to the new key version once,
the ciphertext is untouched, and a campaign continues after its worker is gone."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import os
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.utils import timezone

from kms_plugins.local import LocalKeyBackend
from kms_plugins.types import Capability
from tests.objects.test_dedup import _dedup_client
from tests.objects.test_objects import _client, _create, _get, _put
from vault.crypto import envelope
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.models import Campaign, CampaignSlice, CampaignState
from vault.lifecycle.services import (
    campaign_status,
    campaign_step,
    campaigns_run,
    key_mark_compromised,
    key_rotate,
    keys_rotate_due,
)
from vault.objects.models import Blob, DedupKey, HeaderHistory, ObjectVersion
from vault.tenants.models import Role

pytestmark = pytest.mark.django_db


def _primary(tenant) -> KeyBinding:
    return KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)


def _stanza_versions(raw: bytes, key_id: str) -> list[int]:
    header = envelope.parse_header(raw)
    return [s.key.version for s in header.stanzas if s.key.key_id == key_id]


def _stored_bodies(tenant) -> dict[str, bytes]:
    root = storages["default"].path(str(tenant.pk))
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                found[os.path.join(directory, name)] = handle.read()
    return found


def test_a_rotation_rewraps_every_gateway_data_key_once_and_touches_no_ciphertext() -> None:
    client = _client()
    contents = {}
    for index in range(7):
        obj = _create(client, f"o{index}")["id"]
        contents[obj] = os.urandom(1000 + index)
        assert _put(client, obj, contents[obj]).status_code == 201
    client_side = _create(client, "mine", mode="client")["id"]
    bodies = _stored_bodies(client.tenant)
    binding = _primary(client.tenant)
    campaign = key_rotate(tenant=client.tenant)
    assert campaign.target_version == 2
    assert campaign.total == 7
    assert campaigns_run(worker="w1") == campaign.slices
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETE
    assert campaign_status(campaign)["rewrapped"] == 7
    for version in ObjectVersion.objects.filter(object__tenant=client.tenant):
        assert _stanza_versions(bytes(version.header), binding.key_id) == [2]
        assert HeaderHistory.objects.filter(version=version).count() == 1, "rewrapped once"
    assert _stored_bodies(client.tenant) == bodies, "only headers changed"
    for obj, data in contents.items():
        assert _get(client, obj)[1] == data
    assert not ObjectVersion.objects.filter(object_id=client_side).exists()
    # Running again finds nothing to do.
    assert campaigns_run(worker="w2") == 0


def test_after_the_campaign_the_old_version_can_be_deactivated_and_everything_still_reads() -> None:
    from kms_plugins.types import KeyRef, KeyState

    client = _client()
    obj = _create(client)["id"]
    _put(client, obj, b"before the rotation")
    binding = _primary(client.tenant)
    key_rotate(tenant=client.tenant)
    campaigns_run(worker="w")
    key_backend("local").set_state(KeyRef(binding.key_id, 1), KeyState.DEACTIVATED)
    assert _get(client, obj)[1] == b"before the rotation"
    _put(client, obj, b"after")
    assert _get(client, obj)[1] == b"after"


def test_blobs_and_the_deduplication_key_are_rewrapped_too() -> None:
    client = _dedup_client()
    first, second = _create(client, "a")["id"], _create(client, "b")["id"]
    _put(client, first, b"same content")
    _put(client, second, b"same content")
    binding = _primary(client.tenant)
    key_rotate(tenant=client.tenant)
    campaigns_run(worker="w")
    assert _stanza_versions(bytes(Blob.objects.get().header), binding.key_id) == [2]
    assert _stanza_versions(bytes(DedupKey.objects.get().header), binding.key_id) == [2]
    assert _get(client, second)[1] == b"same content"
    third = _create(client, "c")["id"]
    _put(client, third, b"same content")
    assert Blob.objects.count() == 1, "deduplication still finds the blob after the rotation"


def test_recovery_stanzas_stay_as_they_are(settings, tmp_path) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "escrow": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "e.json"), "KEY_FILE": str(tmp_path / "e.key")},
        },
    }
    member = _client(bind=False)
    call_command(
        "tenant_bind_backend",
        "--tenant",
        member.tenant.slug,
        "--backend",
        "local",
        "--recovery",
        "escrow",
        stdout=StringIO(),
    )
    obj = _create(member)["id"]
    _put(member, obj, b"data")
    recovery = KeyBinding.objects.get(tenant=member.tenant, role=KeyRole.RECOVERY)
    before = bytes(ObjectVersion.objects.get(object_id=obj).header)
    key_rotate(tenant=member.tenant)
    campaigns_run(worker="w")
    after = envelope.parse_header(bytes(ObjectVersion.objects.get(object_id=obj).header))
    old = envelope.parse_header(before)
    assert [s for s in after.stanzas if s.key.key_id == recovery.key_id] == [
        s for s in old.stanzas if s.key.key_id == recovery.key_id
    ]
    assert after.fixed == old.fixed


def test_a_live_lease_keeps_other_workers_off_and_an_expired_one_does_not(settings) -> None:
    settings.VAULT_REWRAP_BATCH = 2
    settings.VAULT_CAMPAIGN_SLICES = 1
    client = _client()
    for index in range(5):
        _put(client, _create(client, f"o{index}")["id"], b"x")
    campaign = key_rotate(tenant=client.tenant)
    assert campaign_step(campaign.pk, "first") is True
    assert campaign_step(campaign.pk, "second") is False, "the first worker holds the lease"
    CampaignSlice.objects.filter(campaign=campaign).update(
        lease_until=timezone.now() - timedelta(1)
    )
    assert campaign_step(campaign.pk, "second") is True, "an expired lease is taken over"
    while campaign_step(campaign.pk, "second"):
        pass
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETE
    assert campaign_status(campaign)["rewrapped"] == 5
    for version in ObjectVersion.objects.filter(object__tenant=client.tenant):
        assert HeaderHistory.objects.filter(version=version).count() == 1


def test_a_second_rotation_supersedes_the_running_campaign() -> None:
    client = _client()
    _put(client, _create(client)["id"], b"x")
    first = key_rotate(tenant=client.tenant)
    second = key_rotate(tenant=client.tenant)
    first.refresh_from_db()
    assert first.state == CampaignState.SUPERSEDED
    campaigns_run(worker="w")
    binding = _primary(client.tenant)
    version = ObjectVersion.objects.get(object__tenant=client.tenant)
    assert _stanza_versions(bytes(version.header), binding.key_id) == [second.target_version]


def test_a_compromised_key_stops_wrapping_and_its_campaign_runs_first() -> None:
    from kms_plugins.types import KeyState

    calm, hit = _client(), _client()
    for client in (calm, hit):
        _put(client, _create(client)["id"], b"x")
    routine = key_rotate(tenant=calm.tenant)
    urgent = key_mark_compromised(tenant=hit.tenant)
    assert urgent.priority < routine.priority
    assert list(Campaign.objects.filter(state=CampaignState.RUNNING)) == [urgent, routine]
    binding = _primary(hit.tenant)
    info = key_backend("local").describe(binding.key_id).version(1)
    assert info is not None
    assert info.state == KeyState.COMPROMISED
    campaigns_run(worker="w")
    obj = _create(hit, "new")["id"]
    assert _put(hit, obj, b"fresh").status_code == 201
    assert _stanza_versions(
        bytes(ObjectVersion.objects.get(object_id=obj).header), binding.key_id
    ) == [2]


def test_keys_past_their_cryptoperiod_are_rotated(settings) -> None:
    client = _client()
    _put(client, _create(client)["id"], b"x")
    assert keys_rotate_due() == 0
    later = timezone.now() + timedelta(days=settings.VAULT_KEK_CRYPTOPERIOD_DAYS + 1)
    assert keys_rotate_due(now=later) == 1
    campaign = Campaign.objects.get(tenant=client.tenant)
    assert campaign.reason == "cryptoperiod"


def test_rotation_over_the_api_and_the_status_command() -> None:
    custodian = _client(role=Role.CUSTODIAN)
    member = _client(role=Role.MEMBER, tenant=custodian.tenant)
    _put(member, _create(member)["id"], b"x")
    response = custodian.post("/api/v1/keys/campaigns/", {"role": "primary"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["target_version"] == 2
    assert member.post("/api/v1/keys/campaigns/", {}, format="json").status_code == 403
    campaigns_run(worker="w")
    listed = custodian.get("/api/v1/keys/campaigns/").json()["results"]
    assert listed[0]["state"] == "complete"
    assert listed[0]["progress"] == 1.0
    out = StringIO()
    call_command("key_rotation_status", "--tenant", custodian.tenant.slug, stdout=out)
    assert "complete, 100.0% (1 rewrapped" in out.getvalue()


class NoRotate(LocalKeyBackend):
    """A backend that cannot rotate keys."""

    capabilities = LocalKeyBackend.capabilities & ~Capability.ROTATE


def test_a_backend_that_cannot_rotate_answers_409(settings, tmp_path) -> None:
    owner = _client(role=Role.OWNER, bind=False)
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "norotate": {
            "BACKEND": "tests.lifecycle.test_campaigns.NoRotate",
            "OPTIONS": {"PATH": str(tmp_path / "n.json"), "PASSPHRASE": "no rotation passphrase"},
        },
    }
    call_command(
        "tenant_bind_backend",
        "--tenant",
        owner.tenant.slug,
        "--backend",
        "norotate",
        stdout=StringIO(),
    )
    response = owner.post("/api/v1/keys/campaigns/", {}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "key_cannot_rotate")
    assert not Campaign.objects.exists()


def test_a_key_that_wrapped_its_bound_of_data_keys_is_rotated(settings) -> None:
    client = _client()
    obj = _create(client)["id"]
    settings.VAULT_KEK_MAX_WRAPS = 3
    _put(client, obj, b"1")
    _put(client, obj, b"2")
    assert keys_rotate_due() == 0
    _put(client, obj, b"3")
    assert keys_rotate_due() == 1
    assert Campaign.objects.get(tenant=client.tenant).reason == "usage"


def test_two_workers_share_a_campaign_slice_by_slice(settings) -> None:
    settings.VAULT_REWRAP_BATCH = 1
    settings.VAULT_CAMPAIGN_SLICES = 2
    client = _client()
    for index in range(6):
        _put(client, _create(client, f"o{index}")["id"], b"x")
    campaign = key_rotate(tenant=client.tenant)
    first, second = CampaignSlice.objects.filter(campaign=campaign).order_by("number")
    from vault.lifecycle.services import slice_step

    assert slice_step(first.pk, "a") is True
    assert slice_step(second.pk, "b") is True, "the other slice is free for another worker"
    assert slice_step(first.pk, "b") is False, "a slice has one worker at a time"
    while slice_step(first.pk, "a") or slice_step(second.pk, "b"):
        pass
    while slice_step(first.pk, "a") or slice_step(second.pk, "b"):
        pass
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETE
    shares = {p.number: p.rewrapped for p in CampaignSlice.objects.filter(campaign=campaign)}
    assert sum(shares.values()) == 6
    assert all(shares.values()), "both workers did part of the work"
    for version in ObjectVersion.objects.filter(object__tenant=client.tenant):
        assert HeaderHistory.objects.filter(version=version).count() == 1


def test_an_upload_that_was_streaming_during_a_rotation_ends_up_rewrapped() -> None:
    """Its data key was wrapped under v1 before the rotation; its row arrives after the
    campaign listed what to rewrap. It must not stay under v1."""
    from kms_plugins.types import KeyRef
    from vault.objects import services as object_services
    from vault.objects.models import StoredObject

    client = _client()
    _put(client, _create(client, "earlier")["id"], b"x")
    obj_id = _create(client, "big")["id"]
    obj = StoredObject.objects.select_related("tenant").get(pk=obj_id)
    binding = _primary(client.tenant)
    rotated = {}

    def body():
        rotated["campaign"] = key_rotate(tenant=obj.tenant)  # while the body streams
        yield b"y" * 1000

    version = object_services.gateway_store_plaintext(
        obj=obj, source=body(), content_type="application/octet-stream", token=None
    )
    assert _stanza_versions(bytes(version.header), binding.key_id) == [2]
    campaigns_run(worker="w")
    campaign = Campaign.objects.get(pk=rotated["campaign"].pk)
    assert campaign.state == CampaignState.COMPLETE
    key_backend("local").destroy(KeyRef(binding.key_id, 1))
    assert _get(client, obj_id)[1] == b"y" * 1000


def test_a_header_stored_under_the_old_version_after_the_start_is_swept_up() -> None:
    """Beyond the campaign's bounds, a header still under the old version is rewrapped before
    the campaign calls itself complete."""
    client = _client()
    _put(client, _create(client, "first")["id"], b"x")
    campaign = key_rotate(tenant=client.tenant)
    # Stored after the rotation with a header under v1 (as if the refresh on the way in had
    # raced): a copy of another version's v1 header, inserted directly.
    binding = _primary(client.tenant)
    late = _create(client, "late")["id"]
    version = ObjectVersion.objects.get(object__name="first", object__tenant=client.tenant)
    copied = bytes(version.header)
    from vault.objects.models import StoredObject

    obj = StoredObject.objects.get(pk=late)
    header = envelope.parse_header(copied)
    assert _stanza_versions(copied, binding.key_id) == [1]
    ObjectVersion.objects.create(
        object=obj,
        number=1,
        size=0,
        body_size=0,
        header=header.to_bytes(),
        storage_name="",
    )
    campaigns_run(worker="w")
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETE
    late_version = ObjectVersion.objects.get(object_id=late)
    # Its context does not match its header (it was copied), so it cannot be rewrapped: it is
    # counted as failed rather than holding the campaign back or passing as current.
    assert campaign_status(campaign)["failed"] == 1
    assert _stanza_versions(bytes(late_version.header), binding.key_id) == [1]


def test_one_bad_header_is_counted_and_skipped_not_retried_forever(settings) -> None:
    from dataclasses import replace

    settings.VAULT_CAMPAIGN_SLICES = 1
    client = _client()
    ids = [_create(client, f"o{i}")["id"] for i in range(5)]
    for obj in ids:
        _put(client, obj, os.urandom(100))
    broken = ObjectVersion.objects.get(object_id=ids[0])
    header = envelope.parse_header(bytes(broken.header))
    zeroed = replace(header.stanzas[0], ciphertext=bytes(len(header.stanzas[0].ciphertext)))
    ObjectVersion.objects.filter(pk=broken.pk).update(
        header=envelope.replace_stanzas(header, [zeroed])
    )
    campaign = key_rotate(tenant=client.tenant)
    campaigns_run(worker="w")
    campaign.refresh_from_db()
    status = campaign_status(campaign)
    assert campaign.state == CampaignState.COMPLETE
    assert (status["rewrapped"], status["failed"]) == (4, 1)
    for obj in ids[1:]:
        assert _get(client, obj)[0].status_code == 200


def test_a_suspended_key_is_neither_rotated_nor_rewrapped() -> None:
    client = _client()
    obj = _create(client)["id"]
    _put(client, obj, b"hello")
    campaign = key_rotate(tenant=client.tenant)
    binding = _primary(client.tenant)
    KeyBinding.objects.filter(pk=binding.pk).update(
        suspended_at=timezone.now(), suspended_reason="substituted"
    )
    campaigns_run(worker="w")
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.RUNNING, "its campaign is paused"
    assert campaign_status(campaign)["rewrapped"] == 0
    version = ObjectVersion.objects.get(object_id=obj)
    assert _stanza_versions(bytes(version.header), binding.key_id) == [1]
    from vault.lifecycle.services import KeyIsSuspended

    with pytest.raises(KeyIsSuspended):
        key_rotate(tenant=client.tenant)
    assert keys_rotate_due(now=timezone.now() + timedelta(days=3650)) == 0


def test_a_tenant_may_shorten_its_cryptoperiod_but_not_lengthen_it_alone(settings) -> None:
    owner = _client(role=Role.OWNER)
    member = _client(tenant=owner.tenant)
    _put(member, _create(member)["id"], b"x")
    assert owner.get("/api/v1/tenant/").json()["kek_cryptoperiod_days"] == 365
    shorter = owner.patch("/api/v1/tenant/", {"kek_cryptoperiod_days": 30}, format="json")
    assert shorter.status_code == 200
    assert shorter.json()["kek_cryptoperiod_days"] == 30
    longer = owner.patch("/api/v1/tenant/", {"kek_cryptoperiod_days": 90}, format="json")
    assert (longer.status_code, longer.json()["error"]["code"]) == (409, "dual_control_required")
    beyond = owner.patch("/api/v1/tenant/", {"kek_cryptoperiod_days": 10_000}, format="json")
    assert beyond.status_code in (400, 409)
    assert keys_rotate_due(now=timezone.now() + timedelta(days=31)) == 1, "its own period"
