"""The key-management checks (KEY-001 to KEY-020) against real backends and real rows.

Good states are made with the product's own services; bad states the product refuses to make
are made as an attacker or a broken deployment would: editing the keystore file, creating keys
in the backend behind the vault's back, ORM updates, or settings for a misconfigured deployment.
"""

# mypy: disable-error-code="attr-defined"
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from compliance.checks import Check, Context, Outcome, all_checks, get_check
from compliance.checks.keys import key_resource
from compliance.engine import compliance_run
from compliance.models import CheckResult, Finding, RequirementResult
from kms_plugins.local import FINGERPRINT_LABEL
from kms_plugins.types import WrappedKey
from tests.factories import make_membership, make_user
from vault.crypto import envelope
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.lifecycle.approvals import approval_decide, approval_request
from vault.lifecycle.models import Approval, ApprovalAction, ApprovalRequest, RequestState
from vault.lifecycle.services import key_rotate
from vault.objects.models import ObjectMode, ObjectVersion, StoredObject
from vault.objects.services import gateway_store_plaintext, object_create
from vault.tenants.models import Membership, Role, Tenant
from vault.tenants.services import member_add

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _policy(settings: Any) -> None:
    """The platform policy the expectations below are written for (the defaults)."""
    settings.VAULT_KEK_CRYPTOPERIOD_DAYS = 365
    settings.VAULT_APPROVALS_REQUIRED = 2
    settings.VAULT_MAX_CUSTODIANS = 5
    settings.PRODUCTION = False


# -- helpers ---------------------------------------------------------------------------------------


def _tenant(backend: str = "local") -> Tenant:
    """A tenant with a named owner, bound to ``backend`` through the management command."""
    membership = make_membership(role=Role.OWNER)
    call_command(
        "tenant_bind_backend",
        "--tenant",
        membership.tenant.slug,
        "--backend",
        backend,
        stdout=StringIO(),
    )
    return membership.tenant


def _binding(tenant: Tenant, role: str = KeyRole.PRIMARY) -> KeyBinding:
    return KeyBinding.objects.get(tenant=tenant, role=role)


def _run(check_id: str, tenant: Tenant) -> list[Outcome]:
    check: Check = get_check(check_id)()
    return list(check.run(Context(Tenant.objects.get(pk=tenant.pk), timezone.now())))


def _result(check_id: str, tenant: Tenant, resource_id: str) -> Outcome:
    found = [o for o in _run(check_id, tenant) if o.resource_id == resource_id]
    assert len(found) == 1, [(o.resource_id, o.status) for o in _run(check_id, tenant)]
    assert found[0].detail.endswith(".")
    return found[0]


def _key_result(check_id: str, tenant: Tenant, role: str = KeyRole.PRIMARY) -> Outcome:
    return _result(check_id, tenant, key_resource(_binding(tenant, role)))


def _store(tenant: Tenant, data: bytes = b"card data", name: str | None = None) -> ObjectVersion:
    obj = object_create(
        tenant=tenant,
        name=name or secrets.token_hex(4),
        mode=ObjectMode.GATEWAY,
        content_type="application/octet-stream",
        token=None,
    )
    return gateway_store_plaintext(
        obj=obj, source=data, content_type="application/octet-stream", token=None
    )


def _keystore() -> tuple[Path, Path]:
    options = settings.VAULT_KEY_BACKENDS["local"]["OPTIONS"]
    return Path(options["PATH"]), Path(options["KEY_FILE"])


def _edit_keystore(change: Callable[[dict[str, Any]], None]) -> None:
    """Change the local keystore file behind the vault's back (atomically, as an editor would)."""
    path, _ = _keystore()
    store = json.loads(path.read_text(encoding="utf-8"))
    change(store)
    temp = path.with_name(path.name + ".edit")
    temp.write_text(json.dumps(store), encoding="utf-8")
    os.replace(temp, path)


def _version(store: dict[str, Any], key_id: str, number: int) -> dict[str, Any]:
    return next(v for v in store["keys"][key_id]["versions"] if v["version"] == number)


def _substitute_local_key(key_id: str, number: int) -> None:
    """Replace a version's material in the keystore with a new key, sealed as the backend seals
    it: the backend serves the new key under the old name, with its true fingerprint."""
    _, key_file = _keystore()
    master = AESGCM(key_file.read_bytes())

    def change(store: dict[str, Any]) -> None:
        version = _version(store, key_id, number)
        material, nonce = os.urandom(32), os.urandom(12)
        aad = json.dumps([key_id, number, version["purpose"]]).encode()
        sealed = nonce + master.encrypt(nonce, material, aad)
        version["material"] = base64.b64encode(sealed).decode("ascii")
        version["fingerprint"] = hmac.new(material, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()

    _edit_keystore(change)


def _forge_header(version: ObjectVersion, **stanza: Any) -> bytes:
    """The version's header with its first stanza's fields replaced (ciphertext, mechanism)."""
    parsed = envelope.parse_header(bytes(version.header))
    first = parsed.stanzas[0]
    fields = {
        "backend": first.backend,
        "key": first.key,
        "mechanism": first.mechanism,
        "ciphertext": first.ciphertext,
    }
    forged = WrappedKey(**{**fields, **stanza})
    return parsed.with_stanzas([forged, *parsed.stanzas[1:]]).to_bytes()


# -- real PKCS#11 (SoftHSM2) and KMIP (PyKMIP) backends --------------------------------------------


@contextlib.contextmanager
def _harness(module_name: str, marker: str, base: Path) -> Iterator[Any]:
    module = importlib.import_module(module_name)
    reason = module.available()
    if reason is not None:
        pytest.skip(f"[{marker}] {reason}")
    with module.session_harness(base) as harness:
        yield harness


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _harness(
        "kms_plugins.testing.softhsm", "softhsm", tmp_path_factory.mktemp("keys-hsm")
    ) as harness:
        yield harness


@pytest.fixture(scope="module")
def kmip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _harness(
        "kms_plugins.testing.kmip_server", "kmip", tmp_path_factory.mktemp("keys-kmip")
    ) as harness:
        yield harness


def _configure(settings: Any, alias: str, kind: str, harness: Any) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        alias: {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }


def _kmip_key_behind_the_vaults_back(alias: str, algorithm: Any, length: int) -> tuple[str, str]:
    """Create a key on the KMIP server outside the vault, named as the backend names its keys
    (``cv-kek-...`` and ``.../v1``); returns its key id and the fingerprint the backend reports."""
    from kmip.core import enums
    from kmip.core import objects as kmip_objects
    from kmip.core.messages import payloads

    from kms_plugins.kmip import _uid_attribute
    from kms_plugins.testing.kmip_server import POLICY_NAME

    backend = key_backend(alias)
    key_id = f"cv-kek-{secrets.token_hex(16)}"
    attribute = backend._attributes.create_attribute
    usage = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]

    def create() -> None:
        template = [
            attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, algorithm),
            attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, length),
            attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, usage),
            attribute(enums.AttributeType.SENSITIVE, True),
            attribute(enums.AttributeType.OPERATION_POLICY_NAME, POLICY_NAME),
            backend._name(key_id, 0),
            backend._name(f"{key_id}/v1", 1),
        ]
        created = backend._request(
            enums.Operation.CREATE,
            payloads.CreateRequestPayload(
                object_type=enums.ObjectType.SYMMETRIC_KEY,
                template_attribute=kmip_objects.TemplateAttribute(attributes=template),
            ),
        )
        backend._request(
            enums.Operation.ACTIVATE,
            payloads.ActivateRequestPayload(
                unique_identifier=_uid_attribute(created.unique_identifier)
            ),
        )

    backend._call(backend._guard, create)
    (info,) = backend.describe(key_id).versions
    return key_id, info.fingerprint


def _point_primary_at(tenant: Tenant, key_id: str, fingerprint: str) -> None:
    """Out of band: the tenant's primary binding now names another key."""
    KeyBinding.objects.filter(tenant=tenant, role=KeyRole.PRIMARY).update(
        key_id=key_id, fingerprint=fingerprint, pins={}, current_version=1
    )


# -- KEY-001 key storage --------------------------------------------------------------------------


def test_it_fails_key_001_for_the_demo_tenant_in_the_local_keystore() -> None:
    from vault.core.bootstrap import demo_bootstrap

    access = demo_bootstrap()
    outcome = _key_result("KEY-001", access.tenant)
    assert outcome.status == "FAIL"
    assert "software keystore" in outcome.detail
    assert outcome.observed["production_safe"] is False
    assert outcome.evidence


@pytest.mark.softhsm
def test_it_passes_key_001_for_softhsm_only_outside_production(settings, softhsm) -> None:
    _configure(settings, "hsm", "pkcs11", softhsm)
    tenant = _tenant("hsm")
    settings.PRODUCTION = False
    outcome = _key_result("KEY-001", tenant)
    assert outcome.status == "PASS"
    assert "acceptable only outside production" in outcome.detail
    assert outcome.observed["software"] is True
    settings.PRODUCTION = True
    outcome = _key_result("KEY-001", tenant)
    assert outcome.status == "FAIL"
    assert "libsofthsm2.so is a software token" in outcome.detail
    assert "in production" in outcome.detail


# -- KEY-002 KEK strength -------------------------------------------------------------------------


def test_it_passes_key_002_for_an_aes_256_kek() -> None:
    outcome = _key_result("KEY-002", _tenant())
    assert outcome.status == "PASS"
    assert outcome.observed == {"weakest": 256, "required": 256}


@pytest.mark.kmip
def test_it_fails_key_002_for_an_aes_128_kek_made_behind_the_vaults_back(settings, kmip) -> None:
    from kmip.core import enums

    _configure(settings, "kms", "kmip", kmip)
    tenant = _tenant("kms")
    key_id, fingerprint = _kmip_key_behind_the_vaults_back(
        "kms", enums.CryptographicAlgorithm.AES, 128
    )
    _point_primary_at(tenant, key_id, fingerprint)
    outcome = _key_result("KEY-002", tenant)
    assert outcome.status == "FAIL"
    assert "v1 AES-128 (128 bits)" in outcome.detail
    assert outcome.observed == {"weakest": 128, "required": 256}
    # AES-128 is still an allowed algorithm: only the wrap graph is wrong.
    assert _key_result("KEY-007", tenant).status == "PASS"


# -- KEY-003 KEK separation -----------------------------------------------------------------------


def test_it_passes_key_003_when_the_keystore_is_apart_and_stanzas_are_wrapped() -> None:
    tenant = _tenant()
    _store(tenant)
    outcome = _key_result("KEY-003", tenant)
    assert outcome.status == "PASS"
    assert outcome.observed == {"stanzas": 1}


def test_it_fails_key_003_when_the_keystore_lies_in_the_object_storage(settings) -> None:
    storage = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    settings.VAULT_KEY_BACKENDS = {
        "local": {
            "BACKEND": "kms_plugins.local.LocalKeyBackend",
            "OPTIONS": {
                "PATH": str(storage / "keys" / "keys.json"),
                "KEY_FILE": str(storage / "keys" / "master.key"),
            },
        }
    }
    (storage / "keys").mkdir()
    tenant = _tenant()
    outcome = _key_result("KEY-003", tenant)
    assert outcome.status == "FAIL"
    assert "is inside the object storage" in outcome.detail
    assert outcome.observed["colocated"] == 2  # PATH and KEY_FILE


def test_it_fails_key_003_for_a_data_key_stored_unwrapped() -> None:
    tenant = _tenant()
    version = _store(tenant)
    ObjectVersion.objects.filter(pk=version.pk).update(
        header=_forge_header(version, ciphertext=os.urandom(envelope.DEK_SIZE))
    )
    outcome = _key_result("KEY-003", tenant)
    assert outcome.status == "FAIL"
    assert "1 of its 1 stanzas are too short to be wrapped" in outcome.detail


# -- KEY-004 location count -----------------------------------------------------------------------


def test_it_passes_key_004_for_versions_the_vault_made() -> None:
    tenant = _tenant()
    key_rotate(tenant=tenant)
    outcome = _key_result("KEY-004", tenant)
    assert outcome.status == "PASS"
    assert outcome.observed == {"live": 2}


def test_it_fails_key_004_for_a_version_made_in_the_backend_behind_the_vaults_back() -> None:
    tenant = _tenant()
    key_backend("local").rotate(_binding(tenant).key_id)
    outcome = _key_result("KEY-004", tenant)
    assert outcome.status == "FAIL"
    assert "version(s) 2 the vault did not make" in outcome.detail
    assert outcome.observed == {"unexpected": [2]}


# -- KEY-005 custodians ---------------------------------------------------------------------------


def test_it_passes_key_005_for_few_named_custodians() -> None:
    tenant = _tenant()
    member_add(tenant=tenant, email="alice.keys@example.com", role=Role.CUSTODIAN)
    outcome = _result("KEY-005", tenant, tenant.slug)
    assert outcome.status == "PASS"
    assert outcome.observed == {"custodians": 2, "maximum": 5}


def test_it_fails_key_005_for_a_shared_mailbox_and_too_many_custodians(settings) -> None:
    settings.VAULT_MAX_CUSTODIANS = 2
    tenant = _tenant()
    member_add(tenant=tenant, email="security+keys@corp.example", role=Role.CUSTODIAN)
    member_add(tenant=tenant, email="bob@corp.example", role=Role.CUSTODIAN)
    outcome = _result("KEY-005", tenant, tenant.slug)
    assert outcome.status == "FAIL"
    assert "3 principals hold key rights, more than the 2 allowed" in outcome.detail
    assert "security+keys@corp.example" in outcome.detail
    assert outcome.observed["generic"] == ["security+keys@corp.example"]


# -- KEY-006 generated in the backend -------------------------------------------------------------


def test_it_fails_key_006_for_keys_the_local_keystore_reports_extractable() -> None:
    outcome = _key_result("KEY-006", _tenant())
    assert outcome.status == "FAIL"
    assert "version 1 is extractable, not sensitive" in outcome.detail


@pytest.mark.softhsm
def test_it_passes_key_006_for_keys_generated_on_the_hsm(settings, softhsm) -> None:
    _configure(settings, "hsm", "pkcs11", softhsm)
    tenant = _tenant("hsm")
    for role in (KeyRole.PRIMARY, KeyRole.SIGNING):
        outcome = _key_result("KEY-006", tenant, role)
        assert outcome.status == "PASS", outcome.detail
        assert "cannot be extracted" in outcome.detail


def test_it_reports_key_006_as_error_not_fail_when_the_backend_is_gone() -> None:
    tenant = _tenant()
    path, _ = _keystore()
    path.rename(path.with_name("moved.json"))
    outcome = _key_result("KEY-006", tenant)
    assert outcome.status == "ERROR"
    assert "key_backend_unavailable" in outcome.detail


# -- KEY-007 allow-list ---------------------------------------------------------------------------


def test_it_passes_key_007_for_aes_256_and_p_256_keys() -> None:
    tenant = _tenant()
    _store(tenant)
    primary = _key_result("KEY-007", tenant)
    assert primary.status == "PASS"
    assert "AES-256 with A256GCM" in primary.detail
    signing = _key_result("KEY-007", tenant, KeyRole.SIGNING)
    assert signing.status == "PASS"
    assert "EC-256" in signing.detail


def test_it_fails_key_007_for_a_stanza_wrapped_in_ecb_mode() -> None:
    tenant = _tenant()
    version = _store(tenant)
    ObjectVersion.objects.filter(pk=version.pk).update(
        header=_forge_header(version, mechanism="AES-256-ECB")
    )
    outcome = _key_result("KEY-007", tenant)
    assert outcome.status == "FAIL"
    assert "mechanism(s) AES-256-ECB" in outcome.detail


@pytest.mark.kmip
def test_it_fails_key_007_for_a_triple_des_key_on_the_kms(settings, kmip) -> None:
    from kmip.core import enums

    _configure(settings, "kms", "kmip", kmip)
    tenant = _tenant("kms")
    key_id, fingerprint = _kmip_key_behind_the_vaults_back(
        "kms", enums.CryptographicAlgorithm.TRIPLE_DES, 192
    )
    _point_primary_at(tenant, key_id, fingerprint)
    outcome = _key_result("KEY-007", tenant)
    assert outcome.status == "FAIL"
    assert "version 1 is TRIPLE_DES-192, not AES-128/192/256" in outcome.detail
    assert _key_result("KEY-002", tenant).status == "FAIL"


# -- KEY-008 cryptoperiod honoured ----------------------------------------------------------------


def _backdate(key_id: str, number: int, days: int) -> None:
    moment = (datetime.now(UTC) - timedelta(days=days)).isoformat()

    def change(store: dict[str, Any]) -> None:
        version = _version(store, key_id, number)
        version["created"] = version["activated"] = moment

    _edit_keystore(change)


def test_it_passes_key_008_for_a_key_within_its_cryptoperiod() -> None:
    outcome = _key_result("KEY-008", _tenant())
    assert outcome.status == "PASS"
    assert outcome.observed == {"version": 1, "age_days": 0, "limit_days": 365}


def test_it_fails_key_008_for_a_key_activated_before_its_cryptoperiod() -> None:
    tenant = _tenant()
    _backdate(_binding(tenant).key_id, 1, 400)
    outcome = _key_result("KEY-008", tenant)
    assert outcome.status == "FAIL"
    assert "has wrapped for 400 days, past its cryptoperiod of 365 days" in outcome.detail


def test_it_applies_the_tenants_shorter_cryptoperiod_in_key_008() -> None:
    from vault.tenants.services import tenant_update

    tenant = _tenant()
    tenant_update(tenant=tenant, kek_cryptoperiod_days=30)
    _backdate(_binding(tenant).key_id, 1, 31)
    outcome = _key_result("KEY-008", tenant)
    assert outcome.status == "FAIL"
    assert outcome.observed["limit_days"] == 30


# -- KEY-009 cryptoperiod policy ------------------------------------------------------------------


def test_it_passes_key_009_for_the_platform_default() -> None:
    tenant = _tenant()
    outcome = _result("KEY-009", tenant, tenant.slug)
    assert outcome.status == "PASS"
    assert outcome.observed == {"configured": 365, "ceiling": 365}


def test_it_fails_key_009_for_a_cryptoperiod_loosened_in_the_database() -> None:
    tenant = _tenant()
    Tenant.objects.filter(pk=tenant.pk).update(kek_cryptoperiod_days=1000)
    outcome = _result("KEY-009", tenant, tenant.slug)
    assert outcome.status == "FAIL"
    assert "kek_cryptoperiod_days is 1000, more than the 365 allowed" in outcome.detail


def test_it_fails_key_009_for_a_platform_ceiling_above_nist(settings) -> None:
    settings.VAULT_KEK_CRYPTOPERIOD_DAYS = 1095
    tenant = _tenant()
    outcome = _result("KEY-009", tenant, tenant.slug)
    assert outcome.status == "FAIL"
    assert "VAULT_KEK_CRYPTOPERIOD_DAYS is 1095" in outcome.detail


def test_the_guardrail_puts_3_7_4_not_in_place_even_though_key_008_passes() -> None:
    # PCI-DSS 3.7.4: a loosened cryptoperiod fails the requirement before any key is old.
    tenant = _tenant()
    Tenant.objects.filter(pk=tenant.pk).update(kek_cryptoperiod_days=1000)
    tenant.refresh_from_db()
    run = compliance_run(tenant, checks=[get_check("KEY-008")])
    statuses = set(CheckResult.objects.filter(run=run, check_id="KEY-008").values_list("status"))
    assert statuses == {("PASS",)}
    requirement = RequirementResult.objects.get(run=run, ref="3.7.4")
    assert requirement.finding == Finding.NOT_IN_PLACE
    assert "tenant.kek_cryptoperiod_days is 1000" in requirement.narrative


# -- KEY-010 retired keys do not wrap -------------------------------------------------------------


def test_it_passes_key_010_when_only_current_versions_wrapped_after_a_rotation() -> None:
    tenant = _tenant()
    _store(tenant)  # under version 1, before the rotation: the campaign will rewrap it
    key_rotate(tenant=tenant)
    _store(tenant)  # under version 2
    outcome = _key_result("KEY-010", tenant)
    assert outcome.status == "PASS"
    assert "(2 stanzas, 1 retired version(s))" in outcome.detail


def test_it_fails_key_010_for_a_header_under_a_replaced_version_stored_later() -> None:
    tenant = _tenant()
    old = _store(tenant)
    key_rotate(tenant=tenant)
    # Out of band: an old header (version 1) copied onto an object stored after the rotation.
    obj = StoredObject.objects.create(tenant=tenant, name="forged", mode=ObjectMode.GATEWAY)
    ObjectVersion.objects.create(
        object=obj,
        number=1,
        size=old.size,
        body_size=old.body_size,
        header=bytes(old.header),
        storage_name=old.storage_name,
    )
    outcome = _key_result("KEY-010", tenant)
    assert outcome.status == "FAIL"
    assert "1 header(s) stored after version 1 was retired or replaced" in outcome.detail
    assert outcome.observed == {"late": 1}


def test_it_fails_key_010_when_the_backend_wraps_with_a_replaced_version() -> None:
    tenant = _tenant()
    key_rotate(tenant=tenant)
    key_id = _binding(tenant).key_id

    def deactivate_v2(store: dict[str, Any]) -> None:
        version = _version(store, key_id, 2)
        version["state"] = "deactivated"
        version["deactivated"] = datetime.now(UTC).isoformat()

    _edit_keystore(deactivate_v2)
    outcome = _key_result("KEY-010", tenant)
    assert outcome.status == "FAIL"
    assert "the backend wraps with version 1, replaced by version 2" in outcome.detail


# -- KEY-013 dual control -------------------------------------------------------------------------


def _custodians(tenant: Tenant, count: int) -> list[Any]:
    people = [make_user() for _ in range(count)]
    for person in people:
        Membership.objects.create(tenant=tenant, user=person, role=Role.CUSTODIAN)
    return people


def test_it_is_not_applicable_key_013_when_no_dual_control_action_ran() -> None:
    tenant = _tenant()
    outcome = _result("KEY-013", tenant, tenant.slug)
    assert outcome.status == "NOT_APPLICABLE"
    assert "No action under dual control has run" in outcome.detail


def test_it_passes_key_013_for_an_action_approved_by_two_others() -> None:
    tenant = _tenant()
    requester, first, second = _custodians(tenant, 3)
    request = approval_request(
        tenant=tenant,
        user=requester,
        action=ApprovalAction.POLICY_LOOSEN,
        reason="dedup",
        params={"deduplicate": True},
    )
    approval_decide(request=request, user=first, approve=True)
    approval_decide(request=request, user=second, approve=True)
    assert ApprovalRequest.objects.get(pk=request.pk).state == RequestState.EXECUTED
    outcome = _result("KEY-013", tenant, str(request.pk))
    assert outcome.status == "PASS"
    assert outcome.observed == {"action": "tenant.policy.loosen", "approvers": 2, "required": 2}


def test_it_fails_key_013_for_a_destruction_executed_on_the_requesters_own_approval() -> None:
    tenant = _tenant()
    (requester,) = _custodians(tenant, 1)
    forged = ApprovalRequest.objects.create(
        tenant=tenant,
        action=ApprovalAction.KEY_DESTROY,
        reason="forged",
        requested_by=requester,
        expires_at=timezone.now() + timedelta(hours=1),
        required=1,
        state=RequestState.EXECUTED,
    )
    Approval.objects.create(request=forged, approver=requester, decision="approve")
    outcome = _result("KEY-013", tenant, str(forged.pk))
    assert outcome.status == "FAIL"
    assert "0 independent approval(s) of the 2 required" in outcome.detail
    assert "the requester approved it" in outcome.detail


def test_it_fails_key_013_for_approvals_by_people_outside_the_tenant() -> None:
    tenant = _tenant()
    (requester,) = _custodians(tenant, 1)
    forged = ApprovalRequest.objects.create(
        tenant=tenant,
        action=ApprovalAction.KEY_DESTROY,
        reason="forged",
        requested_by=requester,
        expires_at=timezone.now() + timedelta(hours=1),
        required=2,
        state=RequestState.EXECUTED,
    )
    for _ in range(2):  # two accounts that never belonged to the tenant
        Approval.objects.create(request=forged, approver=make_user(), decision="approve")
    outcome = _result("KEY-013", tenant, str(forged.pk))
    assert outcome.status == "FAIL"
    assert "0 independent approval(s) of the 2 required" in outcome.detail


# -- KEY-014 substitution -------------------------------------------------------------------------


def test_it_passes_key_014_when_fingerprints_match_their_pins() -> None:
    tenant = _tenant()
    key_rotate(tenant=tenant)
    outcome = _key_result("KEY-014", tenant)
    assert outcome.status == "PASS"
    assert outcome.observed == {"checked": 2}


def test_it_fails_key_014_for_a_key_substituted_in_the_keystore() -> None:
    from vault.keys.services import keys_health_check

    tenant = _tenant()
    _substitute_local_key(_binding(tenant).key_id, 1)
    outcome = _key_result("KEY-014", tenant)
    assert outcome.status == "FAIL"
    assert "version(s) 1 report another fingerprint than the one pinned" in outcome.detail
    keys_health_check()  # the product notices too, and suspends the key
    outcome = _key_result("KEY-014", tenant)
    assert outcome.status == "FAIL"
    assert "it is suspended" in outcome.detail


# -- KEY-017 no shared keys -----------------------------------------------------------------------


def test_it_passes_key_017_for_keys_of_their_own() -> None:
    tenant = _tenant()
    _tenant()
    outcome = _key_result("KEY-017", tenant)
    assert outcome.status == "PASS"
    assert outcome.observed == {"shared_with": []}


def test_it_fails_key_017_when_two_tenants_point_at_one_key() -> None:
    production, test = _tenant(), _tenant()
    theirs, ours = _binding(production), _binding(test)
    _point_primary_at(test, theirs.key_id, theirs.fingerprint)
    outcome = _key_result("KEY-017", test)
    assert outcome.status == "FAIL"
    assert f"also the key of another tenant's primary key (binding {theirs.pk})" in outcome.detail
    assert production.slug not in outcome.detail, "another tenant is never named"
    assert _key_result("KEY-017", production).observed == {
        "shared_with": [f"another tenant's primary key (binding {ours.pk})"]
    }


# -- KEY-018 keys leave backends only wrapped -----------------------------------------------------


def test_it_fails_key_018_for_extractable_keys_in_the_local_keystore() -> None:
    outcome = _key_result("KEY-018", _tenant())
    assert outcome.status == "FAIL"
    assert "reports version(s) 1 extractable" in outcome.detail


@pytest.mark.softhsm
def test_it_passes_key_018_for_non_extractable_hsm_keys(settings, softhsm) -> None:
    _configure(settings, "hsm", "pkcs11", softhsm)
    outcome = _key_result("KEY-018", _tenant("hsm"))
    assert outcome.status == "PASS"
    assert outcome.observed == {"extractable": []}


# -- KEY-020 backend health -----------------------------------------------------------------------


def test_it_passes_key_020_when_the_backend_answers() -> None:
    outcome = _result("KEY-020", _tenant(), "local")
    assert outcome.status == "PASS"
    assert "keystore with" in outcome.detail


def test_it_fails_key_020_when_the_keystore_file_is_gone() -> None:
    tenant = _tenant()
    path, _ = _keystore()
    path.rename(path.with_name("moved.json"))
    outcome = _result("KEY-020", tenant, "local")
    assert outcome.status == "FAIL"
    assert "fails its health check: key_backend_unavailable" in outcome.detail


def test_it_reports_key_020_as_error_for_a_backend_that_is_not_configured() -> None:
    tenant = _tenant()
    KeyBinding.objects.filter(tenant=tenant, role=KeyRole.PRIMARY).update(backend_alias="gone")
    outcome = _result("KEY-020", tenant, "gone")
    assert outcome.status == "ERROR"
    assert "cannot be loaded (key_backend_misconfigured)" in outcome.detail


@pytest.mark.softhsm
def test_it_passes_then_fails_key_020_when_the_softhsm_token_goes_away(settings, softhsm) -> None:
    from kms_plugins.testing import OUTAGE_MOVE

    _configure(settings, "hsm", "pkcs11", softhsm)
    tenant = _tenant("hsm")
    assert _result("KEY-020", tenant, "hsm").status == "PASS"
    with softhsm.outage(OUTAGE_MOVE):
        outcome = _result("KEY-020", tenant, "hsm")
    assert outcome.status == "FAIL"
    assert "Key backend hsm (pkcs11) fails its health check" in outcome.detail


# -- the whole module through the engine ----------------------------------------------------------


def test_every_key_check_runs_through_the_engine_without_crashing() -> None:
    tenant = _tenant()
    _store(tenant)
    mine = [c for c in all_checks() if c.__module__ == "compliance.checks.keys"]
    assert len(mine) == 15
    run = compliance_run(tenant, checks=mine)
    results = list(CheckResult.objects.filter(run=run).values_list("check_id", "status", "detail"))
    assert {check_id for check_id, _, _ in results} == {c.id for c in mine}
    crashed = [r for r in results if "could not read its data (" in r[2]]
    assert crashed == []
    assert all(detail.endswith(".") for _, _, detail in results)
