"""GOV-001 (PCI-DSS 12.3.3): the crypto inventory, what makes it deprecated, and the signed
review that lets it pass; against the local backend and, where they run here, SoftHSM2 and a
real PyKMIP server."""

# mypy: disable-error-code="attr-defined"

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from compliance.checks import Context, Outcome, get_check
from compliance.engine import compliance_run
from compliance.models import Attestation, CheckResult, Evidence
from compliance.services import attestation_create
from kms_plugins.testing import BackendHarness
from tests.factories import make_membership, make_tenant
from vault.accounts.models import User
from vault.keys.models import KeyBinding
from vault.tenants.models import Role, Tenant

pytestmark = pytest.mark.django_db
STRONG_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
COMPONENTS = {
    "pkcs11": ("kms_plugins.testing.softhsm", "softhsm"),
    "kmip": ("kms_plugins.testing.kmip_server", "kmip"),
}


def bound_tenant(backend: str = "local") -> tuple[Tenant, User]:
    """A tenant bound to ``backend`` with one owner (who may attest)."""
    membership = make_membership(tenant=make_tenant(slug="acme"), role=Role.OWNER)
    call_command("tenant_bind_backend", "--tenant", "acme", "--backend", backend, stdout=StringIO())
    return membership.tenant, membership.user


def gov001(tenant: Tenant) -> tuple[Outcome, dict[str, Any]]:
    """GOV-001's one outcome and the inventory it kept as evidence."""
    ctx = Context(tenant, timezone.now())
    (outcome,) = get_check("GOV-001")().run(ctx)
    (digest,) = outcome.evidence
    _, body = ctx.evidence_bodies[digest]
    return outcome, json.loads(body)["data"]


def attest(tenant: Tenant, user: User) -> Attestation:
    return attestation_create(
        tenant=tenant,
        user=user,
        requirement="12.3.3",
        kind="crypto_inventory_review",
        statement="Reviewed the cipher and protocol inventory of this quarter's report.",
        valid_days=365,
    )


@override_settings(PASSWORD_HASHERS=STRONG_HASHERS)
def test_it_asks_for_a_review_of_a_clean_inventory() -> None:
    tenant, _ = bound_tenant()
    outcome, inventory = gov001(tenant)
    assert outcome.status == "MANUAL"
    assert outcome.resource_id == "acme"
    assert "review the inventory and attest it" in outcome.detail
    assert inventory["password_hashing"]["preferred"] == "pbkdf2_sha256"
    assert inventory["envelope"]["aead"].startswith("AES-256-GCM")
    uses = {row["key"].split(":")[1]: row["use"] for row in inventory["keys"]}
    assert uses["primary"] == "A256GCM"
    assert uses["signing"] == "ECDSA P-256/SHA-256 signatures"


@override_settings(PASSWORD_HASHERS=STRONG_HASHERS)
def test_it_passes_once_the_inventory_review_is_attested() -> None:
    tenant, owner = bound_tenant()
    review = attest(tenant, owner)
    outcome, _ = gov001(tenant)
    assert outcome.status == "PASS"
    assert f"reviewed by {owner.email}" in outcome.detail
    assert outcome.observed["attestation"] == review.pk


@override_settings(PASSWORD_HASHERS=STRONG_HASHERS)
def test_it_passes_through_the_engine_and_the_requirement_is_in_place() -> None:
    tenant, owner = bound_tenant()
    attest(tenant, owner)
    run = compliance_run(tenant, checks=[get_check("GOV-001")])
    result = CheckResult.objects.get(run=run, check_id="GOV-001")
    assert result.status == "PASS"
    assert run.requirements.get(ref="12.3.3").finding == "IN_PLACE"
    (digest,) = result.evidence
    assert Evidence.objects.filter(sha256=digest).exists()


@override_settings(PASSWORD_HASHERS=STRONG_HASHERS)
def test_a_review_edited_in_the_database_counts_for_nothing() -> None:
    tenant, owner = bound_tenant()
    review = attest(tenant, owner)
    body = bytes(review.body).replace(b"this quarter", b"last decade")
    Attestation.objects.filter(pk=review.pk).update(body=body)
    outcome, _ = gov001(tenant)
    assert outcome.status == "MANUAL"


@override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
def test_it_fails_a_deployment_that_hashes_passwords_with_md5() -> None:
    tenant, owner = bound_tenant()
    attest(tenant, owner)  # a review does not excuse a deprecated algorithm
    outcome, inventory = gov001(tenant)
    assert outcome.status == "FAIL"
    assert "passwords are hashed with md5" in outcome.detail
    assert inventory["deprecated"] == ["passwords are hashed with md5"]


@override_settings(PASSWORD_HASHERS=STRONG_HASHERS)
def test_it_reports_error_not_fail_when_a_key_cannot_be_read() -> None:
    tenant, _ = bound_tenant()
    # Out of band: the binding now names a backend this deployment does not configure.
    KeyBinding.objects.filter(tenant=tenant, role="primary").update(backend_alias="gone")
    outcome, _ = gov001(tenant)
    assert outcome.status == "ERROR"
    assert "could not read key acme:primary" in outcome.detail


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with contextlib.ExitStack() as stack:
        made: dict[str, BackendHarness] = {}

        def get(kind: str) -> BackendHarness:
            if kind not in made:
                module = importlib.import_module(COMPONENTS[kind][0])
                reason = module.available()
                if reason is not None:
                    pytest.skip(f"[{COMPONENTS[kind][1]}] {reason}")
                made[kind] = stack.enter_context(
                    module.session_harness(tmp_path_factory.mktemp(f"gov-{kind}"))
                )
            return made[kind]

        yield get


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=getattr(pytest.mark, marker), id=kind)
        for kind, (_, marker) in COMPONENTS.items()
    ],
)
def test_the_inventory_of_a_real_backend(kind, harnesses, settings) -> None:
    harness = harnesses(kind)
    settings.PASSWORD_HASHERS = STRONG_HASHERS
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "customer": {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }
    tenant, owner = bound_tenant("customer")
    outcome, inventory = gov001(tenant)
    assert outcome.status == "MANUAL", outcome.detail
    primary = next(row for row in inventory["keys"] if row["key"].startswith("acme:primary:"))
    assert (primary["kind"], primary["algorithm"], primary["bits"]) == (kind, "AES", 256)
    assert primary["use"] == {"pkcs11": "AES-256-GCM", "kmip": "kmip-aes256-gcm"}[kind]
    if kind == "kmip":
        (tls,) = inventory["kmip_tls"]
        assert tls["backend"] == "customer"
        assert tls["negotiated_version"] == "TLSv1.2"
        assert tls["negotiated_cipher"] in tls["policy_ciphers"]
    attest(tenant, owner)
    assert gov001(tenant)[0].status == "PASS"
