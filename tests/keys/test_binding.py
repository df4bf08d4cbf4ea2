"""Binding tenants to key backends; the backends listing; start-up checks of the configuration."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import CommandError, call_command

from kms_plugins.local import LocalKeyBackend
from kms_plugins.types import Capability, KeyState
from tests.factories import make_tenant
from vault.core.bootstrap import demo_bootstrap
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.keys.services import NoSigningBackend, signing_binding_for

pytestmark = pytest.mark.django_db
CONTEXT = {"tenant": "t", "object": "1", "version": "1"}


def _check_ids(settings, **overrides) -> dict[str, str]:
    for name, value in overrides.items():
        setattr(settings, name, value)
    return {str(m.id): m.msg for m in run_checks(tags=["keys"])}


def test_binding_creates_the_tenants_keys_in_the_backend() -> None:
    tenant = make_tenant(slug="acme")
    out = StringIO()
    call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "local", stdout=out)
    primary = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    assert primary.backend_alias == "local"
    assert primary.backend_kind == "local"
    backend = key_backend("local")
    info = backend.describe(primary.key_id).primary
    assert info is not None
    assert info.state == KeyState.ACTIVE
    assert info.fingerprint == primary.fingerprint, "the fingerprint is pinned at creation"
    wrapped = backend.wrap(primary.key_id, b"k" * 32, CONTEXT)
    assert backend.unwrap(wrapped, CONTEXT) == b"k" * 32
    signing = signing_binding_for(tenant=tenant)
    assert signing.tenant == tenant, "local can sign, so the tenant signs with its own key"
    assert primary.key_id in out.getvalue()


def test_a_tenant_is_bound_once_and_to_configured_backends_only() -> None:
    make_tenant(slug="acme")
    with pytest.raises(CommandError, match="no key backend 'nope'"):
        call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "nope")
    with pytest.raises(CommandError, match="no tenant"):
        call_command("tenant_bind_backend", "--tenant", "ghost", "--backend", "local")
    call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "local", stdout=StringIO())
    with pytest.raises(CommandError, match="already bound"):
        call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "local")
    assert KeyBinding.objects.filter(role=KeyRole.PRIMARY).count() == 1


def test_a_recovery_key_lives_in_a_second_backend(settings, tmp_path) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "escrow": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "escrow.json"), "PASSPHRASE": "escrow passphrase"},
        },
    }
    tenant = make_tenant(slug="acme")
    call_command(
        "tenant_bind_backend",
        "--tenant",
        "acme",
        "--backend",
        "local",
        "--recovery-backend",
        "escrow",
        stdout=StringIO(),
    )
    recovery = KeyBinding.objects.get(tenant=tenant, role=KeyRole.RECOVERY)
    assert recovery.backend_alias == "escrow"
    assert key_backend("escrow").describe(recovery.key_id).primary is not None


def test_the_demo_tenant_is_bound_to_the_local_keystore() -> None:
    access = demo_bootstrap()
    binding = KeyBinding.objects.get(tenant=access.tenant, role=KeyRole.PRIMARY)
    assert binding.backend_alias == "local"
    demo_bootstrap()
    assert KeyBinding.objects.filter(tenant=access.tenant, role=KeyRole.PRIMARY).count() == 1


def test_key_backends_lists_each_backend_with_its_health(settings, tmp_path) -> None:
    out = StringIO()
    call_command("key_backends", stdout=out)
    assert "local: local, NOT production-safe, healthy" in out.getvalue()
    settings.VAULT_KEY_BACKENDS = {
        "gone": {
            "BACKEND": "local",
            "OPTIONS": {
                "PATH": str(tmp_path / "missing" / "keys.json"),
                "PASSPHRASE": "secret pass",
            },
        }
    }
    out = StringIO()
    with pytest.raises(CommandError, match="unhealthy"):
        call_command("key_backends", stdout=out)
    assert "gone: local, NOT production-safe, UNHEALTHY" in out.getvalue()
    assert "secret pass" not in out.getvalue()


def test_misconfiguration_is_caught_at_start_up(settings, tmp_path) -> None:
    local = {"PATH": str(tmp_path / "k.json"), "KEY_FILE": str(tmp_path / "k.key")}
    assert _check_ids(settings) == {}
    assert "keys.E001" in _check_ids(settings, VAULT_KEY_BACKENDS={"x": {"OPTIONS": {}}})
    assert "keys.E002" in _check_ids(
        settings, VAULT_KEY_BACKENDS={"x": {"BACKEND": "no.such.Backend"}}
    )
    found = _check_ids(
        settings,
        VAULT_KEY_BACKENDS={"x": {"BACKEND": "local", "OPTIONS": {**local, "COLOUR": "red"}}},
    )
    assert "keys.E003" in found
    assert "COLOUR" in found["keys.E003"]
    assert "keys.E005" in _check_ids(
        settings, PRODUCTION=True, VAULT_KEY_BACKENDS={"x": {"BACKEND": "local", "OPTIONS": local}}
    )
    settings.PRODUCTION = False
    assert "keys.E006" in _check_ids(settings, VAULT_SIGNING_BACKEND="nope")


@pytest.mark.softhsm
def test_an_unreadable_pin_file_or_a_missing_module_is_caught_at_start_up(
    settings, tmp_path
) -> None:
    settings.VAULT_SIGNING_BACKEND = ""  # the platform signs with "local" by default
    pin_file = tmp_path / "pin"
    options = {
        "MODULE": "/usr/lib/softhsm/libsofthsm2.so",
        "TOKEN_LABEL": "t",
        "PIN_FILE": str(pin_file),
    }
    found = _check_ids(
        settings, VAULT_KEY_BACKENDS={"hsm": {"BACKEND": "pkcs11", "OPTIONS": options}}
    )
    assert "PIN_FILE" in found["keys.E003"]
    pin_file.write_text("1234")
    assert _check_ids(settings) == {}
    options["MODULE"] = str(tmp_path / "no-such-module.so")
    found = _check_ids(
        settings, VAULT_KEY_BACKENDS={"hsm": {"BACKEND": "pkcs11", "OPTIONS": options}}
    )
    assert "MODULE" in found["keys.E003"]
    assert "1234" not in found["keys.E003"]


@pytest.fixture(scope="module")
def hsm(tmp_path_factory):
    from kms_plugins.testing import softhsm

    if softhsm.available() is not None:
        pytest.skip(f"[softhsm] {softhsm.available()}")
    with softhsm.session_harness(tmp_path_factory.mktemp("hsm")) as harness:
        yield harness


@pytest.mark.softhsm
def test_two_tenants_on_two_different_backends(settings, hsm) -> None:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "hsm": {"BACKEND": "pkcs11", "OPTIONS": dict(hsm.backend._options)},
    }
    soft, hard = make_tenant(slug="soft"), make_tenant(slug="hard")
    call_command("tenant_bind_backend", "--tenant", "soft", "--backend", "local", stdout=StringIO())
    call_command("tenant_bind_backend", "--tenant", "hard", "--backend", "hsm", stdout=StringIO())
    for tenant, kind in ((soft, "local"), (hard, "pkcs11")):
        binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
        assert binding.backend_kind == kind
        backend = key_backend(binding.backend_alias)
        wrapped = backend.wrap(binding.key_id, b"d" * 32, CONTEXT)
        assert wrapped.backend == kind
        assert backend.unwrap(wrapped, CONTEXT) == b"d" * 32


class WrapOnly(LocalKeyBackend):
    """A backend that cannot sign, as the KMIP backend cannot."""

    capabilities = LocalKeyBackend.capabilities & ~Capability.SIGN


def test_a_tenant_whose_backend_cannot_sign_signs_with_the_platform_key(settings, tmp_path) -> None:
    settings.VAULT_SIGNING_BACKEND = ""
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "wraponly": {
            "BACKEND": "tests.keys.test_binding.WrapOnly",
            "OPTIONS": {"PATH": str(tmp_path / "w.json"), "PASSPHRASE": "wrap only passphrase"},
        },
    }
    tenant = make_tenant(slug="acme")
    call_command(
        "tenant_bind_backend", "--tenant", "acme", "--backend", "wraponly", stdout=StringIO()
    )
    assert not KeyBinding.objects.filter(tenant=tenant, role=KeyRole.SIGNING).exists()
    with pytest.raises(NoSigningBackend):
        signing_binding_for(tenant=tenant)
    assert "keys.W001" in _check_ids(settings)
    settings.VAULT_SIGNING_BACKEND = "local"
    binding = signing_binding_for(tenant=tenant)
    assert binding.tenant is None
    assert binding.backend_alias == "local"
    assert signing_binding_for(tenant=tenant) == binding, "one platform key, made once"
    backend = key_backend("local")
    ref, signature = backend.sign(binding.key_id, b"checkpoint")
    assert backend.verify(ref, b"checkpoint", signature)


class FailsToSign(LocalKeyBackend):
    """Wraps, but fails when asked for a signing key (a backend failing half-way)."""

    def _create_key(self, purpose):
        if purpose == "sign":
            raise OSError("the device went away")
        return super()._create_key(purpose)


def test_a_bind_that_fails_half_way_leaves_nothing_behind(settings, tmp_path) -> None:
    settings.VAULT_KEY_BACKENDS = {
        "flaky": {
            "BACKEND": "tests.keys.test_binding.FailsToSign",
            "OPTIONS": {"PATH": str(tmp_path / "f.json"), "PASSPHRASE": "flaky passphrase"},
        }
    }
    make_tenant(slug="acme")
    with pytest.raises(CommandError, match="unreachable"):
        call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "flaky")
    assert not KeyBinding.objects.exists()
    store = json.loads((tmp_path / "f.json").read_text())
    (key,) = store["keys"].values()
    assert [v["state"] for v in key["versions"]] == ["destroyed"], "the unused KEK is destroyed"


def test_production_without_key_backends_is_warned_about(settings) -> None:
    assert "keys.W002" in _check_ids(settings, PRODUCTION=True, VAULT_KEY_BACKENDS={})
