"""DATA-001 and DATA-002 (PCI-DSS 3.5.1): no readable card number at rest; an envelope census."""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import io
import json
import os

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from compliance.checks import Check, Context, Outcome
from compliance.checks.data import (
    CHUNK,
    EnvelopeCensus,
    NoPlaintextCardNumbers,
    find_pans,
    luhn_valid,
    scan_stream,
)
from compliance.engine import compliance_run
from compliance.models import CheckResult, Evidence
from kms_plugins.types import KeyRef
from tests.objects.test_objects import _client, _client_envelope, _create, _put
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.objects.models import ObjectVersion

pytestmark = pytest.mark.django_db

PAN = b"4111 1111 1111 1111"  # the well-known Visa test number
REDACTED = "411111******1111"


def _run(check: type[Check], tenant) -> list[Outcome]:
    return list(check().run(Context(tenant, timezone.now())))


def _one(outcomes: list[Outcome], resource_type: str, resource_id: str) -> Outcome:
    found = [
        o for o in outcomes if (o.resource_type, o.resource_id) == (resource_type, resource_id)
    ]
    assert len(found) == 1, outcomes
    return found[0]


# --- the scanner ----------------------------------------------------------------------------------


def test_it_finds_card_numbers_with_or_without_separators_and_redacts_them() -> None:
    text = b"a 4111111111111111; b 5555-5555-5555-4444 c 3782 822463 10005."
    found = [digits for _, digits in find_pans(text)]
    assert found == [b"4111111111111111", b"5555555555554444", b"378282246310005"]


@pytest.mark.parametrize(
    "text",
    [
        b"4111111111111112",  # fails the Luhn check
        b"7111111111111114",  # no card brand starts with 7 (and Luhn-valid)
        b"x4111111111111111",  # part of a word
        b"41111111-1111-4111-8111-111111111111",  # a UUID
        b"411111111111",  # too short
        b"41111111111111111111113",  # too long
    ],
)
def test_it_ignores_what_is_not_a_card_number(text: bytes) -> None:
    assert list(find_pans(text)) == []


def test_luhn() -> None:
    assert luhn_valid(b"79927398713")
    assert not luhn_valid(b"79927398710")
    assert luhn_valid(b"7111111111111114")


def test_it_finds_a_number_that_straddles_two_chunks_once() -> None:
    data = b"x" * (CHUNK - 9) + b" " + PAN + b" " + b"y" * 100
    found: list[tuple[int, bytes]] = []
    stream = io.BytesIO(data)
    assert scan_stream(stream.read, lambda o, d: found.append((o, d))) == len(data)
    assert found == [(CHUNK - 8, b"4111111111111111")]


# --- DATA-001 -------------------------------------------------------------------------------------


def test_data_001_passes_when_the_card_number_is_only_inside_encrypted_content() -> None:
    client = _client()
    obj = _create(client, "statement.pdf")
    assert _put(client, obj["id"], b"card " + PAN + b" expires 12/30").status_code == 201
    outcome = _one(_run(NoPlaintextCardNumbers, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "PASS", outcome.detail
    assert outcome.observed["scanned"]["stored files"] == 1
    assert outcome.observed["scanned"]["object names"] == 1
    assert outcome.observed["scanned"]["audit events"] > 0
    assert "No card number was found" in outcome.detail


def test_data_001_fails_on_a_file_written_into_storage_behind_the_vaults_back() -> None:
    client = _client()
    obj = _create(client)
    assert _put(client, obj["id"], b"ciphertext only").status_code == 201
    storage = storages["default"]
    # Out of band: someone drops a plaintext export next to the ciphertext.
    storage.save(f"{client.tenant.pk}/exports/cards.csv", ContentFile(b"name,pan\nA," + PAN))
    tenant = client.tenant
    run = compliance_run(tenant, checks=[NoPlaintextCardNumbers])
    result = CheckResult.objects.get(run=run, check_id="DATA-001", resource_id=tenant.slug)
    assert result.status == "FAIL"
    assert REDACTED in result.detail
    assert f"storage {tenant.pk}/exports/cards.csv at byte 11" in result.detail
    assert result.observed["by_area"] == {"storage": 1}
    # Neither the result nor its evidence holds the number itself.
    evidence = Evidence.objects.get(sha256=result.evidence[0])
    body = json.loads(bytes(evidence.body))
    assert body["data"]["samples"][0]["sample"] == REDACTED
    for text in (result.detail, bytes(evidence.body).decode()):
        assert "4111111111111111" not in text
        assert PAN.decode() not in text


def test_data_001_fails_on_an_object_named_with_a_card_number_through_the_api() -> None:
    client = _client()
    obj = _create(client, "card 5555-5555-5555-4444 receipt.pdf")
    outcome = _one(_run(NoPlaintextCardNumbers, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert f"555555******4444 in object name {obj['id']}" in outcome.detail
    assert outcome.observed["hits"] == 1


# --- DATA-002 -------------------------------------------------------------------------------------


def _stored(client, name: str = "report.pdf", data: bytes = b"content") -> ObjectVersion:
    obj = _create(client, name)
    assert _put(client, obj["id"], data).status_code == 201
    return ObjectVersion.objects.get(object_id=obj["id"])


def _primary(tenant) -> KeyBinding:
    return KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)


def test_data_002_passes_for_gateway_and_client_side_envelopes() -> None:
    client = _client()
    _stored(client, "a", os.urandom(70_000))
    _stored(client, "b")
    side = _create(client, "opaque", mode="client")
    assert _put(client, side["id"], _client_envelope(client, side, b"data")).status_code == 201
    outcomes = _run(EnvelopeCensus, client.tenant)
    tenant = _one(outcomes, "tenant", client.tenant.slug)
    assert tenant.status == "PASS", tenant.detail
    assert tenant.observed["headers"] == {"version": 3}
    primary = _primary(client.tenant)
    key = _one(outcomes, "key", f"{client.tenant.slug}:primary:{primary.key_id}")
    assert key.status == "PASS"
    assert key.observed["stanzas"] == 2  # the client-side one is under the client's key
    wrapping = KeyBinding.objects.filter(tenant=client.tenant, role__in=["primary", "recovery"])
    assert len([o for o in outcomes if o.resource_type == "key"]) == wrapping.count()


def test_data_002_is_not_applicable_without_stored_objects() -> None:
    client = _client()
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "NOT_APPLICABLE"


def test_data_002_fails_on_a_truncated_header_in_the_database() -> None:
    client = _client()
    version = _stored(client)
    ObjectVersion.objects.filter(pk=version.pk).update(header=bytes(version.header)[:40])
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "not a valid envelope header: 1" in outcome.detail
    assert outcome.observed["problems"] == {"not a valid envelope header": 1}


def test_data_002_fails_on_a_header_for_another_algorithm() -> None:
    client = _client()
    version = _stored(client)
    forged = bytearray(version.header)
    forged[9] = 7  # the algorithm byte, after the magic and the format version
    ObjectVersion.objects.filter(pk=version.pk).update(header=bytes(forged))
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "unsupported format version or algorithm: 1" in outcome.detail


def test_data_002_fails_when_a_body_is_deleted_from_storage() -> None:
    client = _client()
    version = _stored(client)
    _stored(client, "kept")
    storages["default"].delete(version.storage_name)
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "stored body missing: 1" in outcome.detail


def test_data_002_fails_when_a_body_was_cut_short() -> None:
    client = _client()
    version = _stored(client, data=b"x" * 1000)
    path = storages["default"].path(version.storage_name)
    with open(path, "r+b") as handle:
        handle.truncate(100)
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "stored body length differs from the recorded one: 1" in outcome.detail


def test_data_002_fails_when_headers_name_a_destroyed_key_version() -> None:
    client = _client()
    _stored(client)
    primary = _primary(client.tenant)
    # Behind the vault's back: the backend destroys the version every header still names.
    key_backend(primary.backend_alias).destroy(KeyRef(primary.key_id, 1))
    outcomes = _run(EnvelopeCensus, client.tenant)
    key = _one(outcomes, "key", f"{client.tenant.slug}:primary:{primary.key_id}")
    assert key.status == "FAIL"
    assert "version 1 (destroyed, 1 headers)" in key.detail


def test_data_002_fails_on_a_stanza_under_a_key_that_is_not_the_tenants() -> None:
    client, other = _client(), _client()
    version = _stored(client)
    foreign = _stored(other)
    # A header copied from another tenant's object: its stanzas name that tenant's keys.
    ObjectVersion.objects.filter(pk=version.pk).update(header=bytes(foreign.header))
    outcome = _one(_run(EnvelopeCensus, client.tenant), "tenant", client.tenant.slug)
    assert outcome.status == "FAIL"
    assert "stanza names a key that is not the tenant's: 1" in outcome.detail
    assert "encryption context names another place: 1" in outcome.detail


def test_data_002_reports_error_not_fail_when_the_key_backend_is_not_there(settings) -> None:
    client = _client()
    _stored(client)
    primary = _primary(client.tenant)
    settings.VAULT_KEY_BACKENDS = {}  # a deployment that lost its backend configuration
    outcomes = _run(EnvelopeCensus, client.tenant)
    key = _one(outcomes, "key", f"{client.tenant.slug}:primary:{primary.key_id}")
    assert key.status == "ERROR"
    assert "could not be described by backend local (key_backend_misconfigured)" in key.detail
    assert _one(outcomes, "tenant", client.tenant.slug).status == "PASS"
