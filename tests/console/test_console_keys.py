"""The keys page and the approvals inbox: each state change as the role that may make it (it
happens, with its audit event), as the auditor (403, nothing changes) and as a person of another
tenant (404, nothing changes). Dual control is the services' (PCI-DSS 3.6.1.2, 3.7.6): the
requester never approves their own request, and a destruction needs two other custodians."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from kms_plugins.errors import BackendUnavailable, KeyBackendError
from kms_plugins.local import LocalKeyBackend
from kms_plugins.types import KeyState
from tests.console.conftest import sign_in
from tests.console.test_templates import check_page
from tests.factories import make_membership, make_tenant, make_user
from vault.accounts.models import User
from vault.audit.models import AuditEvent
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.keys.services import tenant_bind_backend
from vault.lifecycle.approvals import approval_decide, approval_request
from vault.lifecycle.models import (
    Approval,
    ApprovalAction,
    ApprovalRequest,
    Campaign,
    CampaignReason,
    RequestState,
)
from vault.tenants.models import Role, Tenant

pytestmark = pytest.mark.django_db


def _person(tenant: Tenant, role: str) -> User:
    user = make_user()
    TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    make_membership(tenant=tenant, user=user, role=role)
    return user


def _client(user: User) -> Client:
    client = Client()
    response = sign_in(client, TOTPDevice.objects.get(user=user), email=user.email)
    assert response.status_code == 302, response.content
    return client


def _events(tenant: Tenant, kind: str) -> int:
    return AuditEvent.objects.filter(tenant=tenant, type=kind).count()


def _url(name: str, slug: str = "acme", **kwargs: object) -> str:
    return reverse(f"console:{name}", kwargs={"slug": slug, **kwargs})


def _post_forms(html: bytes) -> list[str]:
    """The addresses of the page's POST forms."""
    return re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', html.decode())


def _offered(html: bytes) -> set[str]:
    """The actions the page's POST forms offer: "rotate", "approve 7", "cancel 7", ..."""
    found = set()
    for form in re.findall(r'<form[^>]*method="post".*?</form>', html.decode(), re.S):
        request = re.search(r'name="request" value="(\d+)"', form)
        for action in re.findall(r'name="action" value="(\w+)"', form):
            found.add(f"{action} {request.group(1)}" if request else action)
    return found


def _act(client: Client, **data: object) -> Any:
    return client.post(_url("approvals"), data, follow=True)


@pytest.fixture
def acme() -> Tenant:
    tenant = make_tenant(slug="acme", name="Acme Payments")
    tenant_bind_backend(tenant=tenant, backend_alias="local")
    return tenant


@pytest.fixture
def beta() -> Tenant:
    return make_tenant(slug="beta", name="Beta Bank")


def _destroy_request(tenant: Tenant, requester: User) -> ApprovalRequest:
    return approval_request(
        tenant=tenant,
        user=requester,
        action=ApprovalAction.KEY_DESTROY,
        reason="customer offboarding",
        params={},
    )


# --- the keys page -------------------------------------------------------------------------------


def test_console_keys_page_shows_keys_versions_and_campaigns(acme):
    owner = _person(acme, Role.OWNER)
    client = _client(owner)
    binding = KeyBinding.objects.get(tenant=acme, role=KeyRole.PRIMARY)
    response = client.get(_url("keys"))
    assert response.status_code == 200
    text = response.content.decode()
    assert binding.key_id in text
    assert binding.fingerprint in text
    assert "Primary key-encryption key" in text
    assert "active" in text
    assert "No rotation yet." in text
    assert _offered(response.content) == {"rotate", "compromised", "destroy"}


def test_console_keys_and_approvals_pages_are_built_for_the_csp_with_labelled_inputs(acme):
    _destroy_request(acme, _person(acme, Role.CUSTODIAN))
    client = _client(_person(acme, Role.OWNER))
    for name in ("keys", "approvals"):
        parser = check_page(client.get(_url(name)))
        assert len(parser.forms) > 1


@pytest.mark.parametrize("role", [Role.AUDITOR])
def test_console_keys_page_offers_readers_no_form_that_changes_anything(acme, role):
    client = _client(_person(acme, role))
    for name in ("keys", "approvals"):
        response = client.get(_url(name))
        assert response.status_code == 200
        # The sign-out form is the only one.
        assert _post_forms(response.content) == [reverse("console:logout")]
        assert _offered(response.content) == set()


def test_console_keys_and_approvals_are_not_for_members(acme):
    """As in the API: members have no business with keys or dual control."""
    client = _client(_person(acme, Role.MEMBER))
    for name in ("keys", "approvals"):
        assert client.get(_url(name)).status_code == 403


def test_console_keys_owners_choose_only_the_backends_the_operator_listed(beta, settings):
    settings.VAULT_OWNER_BACKENDS = []
    client = _client(_person(beta, Role.OWNER))
    page = client.get(_url("keys", "beta"))
    assert _offered(page.content) == set()
    assert b"manage.py tenant_bind_backend" in page.content
    _create(client, backend="local")
    assert not KeyBinding.objects.filter(tenant=beta).exists()


def test_console_keys_page_tolerates_a_backend_that_is_down(acme):
    KeyBinding.objects.filter(tenant=acme, role=KeyRole.PRIMARY).update(backend_alias="gone")
    client = _client(_person(acme, Role.AUDITOR))
    response = client.get(_url("keys"))
    assert response.status_code == 200
    assert b"Backend unavailable" in response.content
    assert b"Versions: unavailable" in response.content


# --- rotate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.CUSTODIAN])
def test_console_key_rotate_rotates_and_starts_a_campaign(acme, role):
    client = _client(_person(acme, role))
    response = client.post(_url("keys"), {"action": "rotate", "role": "primary"}, follow=True)
    assert response.redirect_chain[-1][0] == _url("keys")
    binding = KeyBinding.objects.get(tenant=acme, role=KeyRole.PRIMARY)
    assert binding.current_version == 2
    campaign = Campaign.objects.get(tenant=acme)
    assert campaign.target_version == 2
    assert campaign.reason == CampaignReason.MANUAL
    assert _events(acme, "key.rotate") == 1
    text = response.content.decode()
    assert "Primary key-encryption key rotated to version 2" in text
    assert f"#{campaign.pk}" in text


@pytest.mark.parametrize("action", ["rotate", "compromised"])
@pytest.mark.parametrize("role", [Role.AUDITOR, Role.MEMBER])
def test_console_key_rotation_is_refused_to_readers(acme, action, role):
    client = _client(_person(acme, role))
    response = client.post(_url("keys"), {"action": action, "role": "primary", "confirm": "yes"})
    assert response.status_code == 403
    assert not Campaign.objects.exists()
    assert KeyBinding.objects.get(tenant=acme, role=KeyRole.PRIMARY).current_version == 1
    assert _events(acme, "key.rotate") == 0


@pytest.mark.parametrize("action", ["rotate", "compromised", "destroy"])
def test_console_key_actions_are_404_to_another_tenant(acme, beta, action):
    outsider = _client(_person(beta, Role.OWNER))
    data = {"action": action, "role": "primary", "confirm": "yes", "reason": "mine now"}
    assert outsider.post(_url("keys"), data).status_code == 404
    assert not Campaign.objects.exists()
    assert not ApprovalRequest.objects.exists()
    assert _events(acme, "key.rotate") == 0


def test_console_key_rotate_reports_what_the_service_refuses(acme):
    KeyBinding.objects.filter(tenant=acme, role=KeyRole.PRIMARY).update(
        suspended_at="2024-01-01T00:00:00Z", suspended_reason="fingerprint mismatch"
    )
    client = _client(_person(acme, Role.CUSTODIAN))
    response = client.post(_url("keys"), {"action": "rotate", "role": "primary"}, follow=True)
    assert b"The key is suspended" in response.content
    assert not Campaign.objects.exists()
    response = client.post(_url("keys"), {"action": "rotate", "role": "signing"}, follow=True)
    assert b"Choose the primary or the recovery key." in response.content


def test_console_key_compromised_marks_the_version_and_rotates(acme):
    client = _client(_person(acme, Role.OWNER))
    # Without the confirmation nothing happens.
    data = {"action": "compromised", "role": "primary"}
    response = client.post(_url("keys"), data, follow=True)
    assert b"Tick the box" in response.content
    assert not Campaign.objects.exists()

    response = client.post(_url("keys"), {**data, "confirm": "yes"})
    assert response.status_code == 302
    binding = KeyBinding.objects.get(tenant=acme, role=KeyRole.PRIMARY)
    description = key_backend("local").describe(binding.key_id)
    first = description.version(1)
    assert first is not None
    assert first.state == KeyState.COMPROMISED
    assert binding.current_version == 2
    assert Campaign.objects.get(tenant=acme).reason == CampaignReason.COMPROMISED
    assert _events(acme, "key.state.change") == 1
    assert _events(acme, "key.rotate") == 1


# --- create -------------------------------------------------------------------------------------


@pytest.fixture
def second_backend(settings: Any, tmp_path: Any) -> str:
    """A second local backend, "vault-b", for a recovery key."""
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        "vault-b": {
            "BACKEND": "local",
            "OPTIONS": {"PATH": str(tmp_path / "b.json"), "KEY_FILE": str(tmp_path / "b.key")},
        },
    }
    settings.VAULT_OWNER_BACKENDS = ["local", "vault-b"]
    return "vault-b"


def _create(client: Client, slug: str = "beta", **data: object) -> Any:
    return client.post(_url("keys", slug), {"action": "create", **data}, follow=True)


def test_console_keys_owner_creates_the_keys(beta, second_backend):
    client = _client(_person(beta, Role.OWNER))
    page = client.get(_url("keys", "beta"))
    assert _offered(page.content) == {"create"}
    check_page(page)
    response = _create(client, backend="local", recovery_backend=second_backend)
    assert response.redirect_chain[-1][0] == _url("keys", "beta")
    roles = dict(KeyBinding.objects.filter(tenant=beta).values_list("role", "backend_alias"))
    assert roles[KeyRole.PRIMARY] == "local"
    assert roles[KeyRole.RECOVERY] == second_backend
    assert _events(beta, "key.create") == len(roles)
    text = response.content.decode()
    assert "The tenant&#x27;s keys are created" in text
    primary = KeyBinding.objects.get(tenant=beta, role=KeyRole.PRIMARY)
    assert primary.key_id in text
    # Bound now: the form is gone.
    assert "create" not in _offered(response.content)


def test_console_keys_create_without_recovery(beta):
    client = _client(_person(beta, Role.OWNER))
    _create(client, backend="local", recovery_backend="")
    assert KeyBinding.objects.filter(tenant=beta, role=KeyRole.PRIMARY).exists()
    assert not KeyBinding.objects.filter(tenant=beta, role=KeyRole.RECOVERY).exists()


@pytest.mark.parametrize("role", [Role.CUSTODIAN])
def test_console_keys_create_is_for_owners_only(beta, role):
    client = _client(_person(beta, role))
    page = client.get(_url("keys", "beta"))
    assert _offered(page.content) == set()
    assert b"Only an owner of the tenant can create them" in page.content
    response = client.post(_url("keys", "beta"), {"action": "create", "backend": "local"})
    assert response.status_code == 403
    assert not KeyBinding.objects.filter(tenant=beta).exists()
    assert _events(beta, "key.create") == 0


def test_console_keys_create_is_refused_to_the_auditor(beta):
    client = _client(_person(beta, Role.AUDITOR))
    page = client.get(_url("keys", "beta"))
    assert _post_forms(page.content) == [reverse("console:logout")]
    response = client.post(_url("keys", "beta"), {"action": "create", "backend": "local"})
    assert response.status_code == 403
    assert not KeyBinding.objects.filter(tenant=beta).exists()
    assert _events(beta, "key.create") == 0


def test_console_keys_create_is_404_to_another_tenant(acme, beta):
    outsider = _client(_person(acme, Role.OWNER))
    response = outsider.post(_url("keys", "beta"), {"action": "create", "backend": "local"})
    assert response.status_code == 404
    assert not KeyBinding.objects.filter(tenant=beta).exists()
    assert _events(beta, "key.create") == 0


def test_console_keys_create_when_already_bound_changes_nothing(acme):
    client = _client(_person(acme, Role.OWNER))
    before = list(KeyBinding.objects.filter(tenant=acme).values_list("pk", "key_id"))
    events = _events(acme, "key.create")
    response = _create(client, "acme", backend="local")
    assert b"keys exist already; nothing was created" in response.content
    assert list(KeyBinding.objects.filter(tenant=acme).values_list("pk", "key_id")) == before
    assert _events(acme, "key.create") == events


@pytest.mark.parametrize(
    "data", [{"backend": "nowhere"}, {"backend": "local", "recovery_backend": "nowhere"}]
)
def test_console_keys_create_with_an_unknown_backend_changes_nothing(beta, data):
    client = _client(_person(beta, Role.OWNER))
    response = _create(client, **data)
    assert b"No key backend &#x27;nowhere&#x27; is open to owners here." in response.content
    assert not KeyBinding.objects.filter(tenant=beta).exists()
    assert _events(beta, "key.create") == 0


@pytest.mark.parametrize("transient", [True, False])
def test_console_keys_create_reports_a_backend_failure(beta, monkeypatch, transient):
    error = BackendUnavailable("down") if transient else KeyBackendError("refused")

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(LocalKeyBackend, "create_key", fail)
    client = _client(_person(beta, Role.OWNER))
    response = _create(client, backend="local")
    expected = b"unavailable; try again later" if transient else b"refused the new keys"
    assert expected in response.content
    assert b"Nothing was created." in response.content
    assert not KeyBinding.objects.filter(tenant=beta).exists()
    assert _events(beta, "key.create") == 0


# --- destroy requests ----------------------------------------------------------------------------


def test_console_key_destroy_request_asks_for_dual_control(acme):
    custodian = _person(acme, Role.CUSTODIAN)
    client = _client(custodian)
    response = client.post(_url("keys"), {"action": "destroy", "reason": "  "}, follow=True)
    assert b"Give a reason" in response.content
    assert not ApprovalRequest.objects.exists()

    data = {"action": "destroy", "reason": "offboarding"}
    response = client.post(_url("keys"), data, follow=True)
    assert response.redirect_chain[-1][0] == _url("approvals")
    made = ApprovalRequest.objects.get(tenant=acme)
    assert made.action == ApprovalAction.KEY_DESTROY
    assert made.requested_by == custodian
    assert made.reason == "offboarding"
    assert _events(acme, "approval.request") == 1
    assert f"Request #{made.pk}: Destroy the tenant" in response.content.decode()
    # The keys page now points to the open request instead of offering another.
    page = client.get(_url("keys"))
    assert "destroy" not in _offered(page.content)
    assert f"Request #{made.pk}" in page.content.decode()


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.MEMBER])
def test_console_key_destroy_request_is_refused_to_readers(acme, role):
    client = _client(_person(acme, role))
    data = {"action": "destroy", "reason": "x"}
    assert client.post(_url("keys"), data).status_code == 403
    assert not ApprovalRequest.objects.exists()
    assert _events(acme, "approval.request") == 0


# --- the approvals inbox -------------------------------------------------------------------------


def test_console_approvals_inbox_lets_two_other_custodians_approve(acme):
    requester = _person(acme, Role.CUSTODIAN)
    made = _destroy_request(acme, requester)
    a, b = _person(acme, Role.CUSTODIAN), _person(acme, Role.OWNER)
    pk = made.pk

    mine = _client(requester)
    # The requester may cancel but never approve their own request.
    assert _offered(mine.get(_url("approvals")).content) == {f"cancel {pk}"}
    response = _act(mine, request=pk, action="approve", reason="me")
    assert b"other than its requester" in response.content
    assert not Approval.objects.exists()

    first = _client(a)
    offered = _offered(first.get(_url("approvals")).content)
    assert offered == {f"approve {pk}", f"deny {pk}", f"cancel {pk}"}
    response = _act(first, request=pk, action="approve", reason="checked")
    assert response.redirect_chain[-1][0] == _url("approvals")
    made.refresh_from_db()
    assert made.state == RequestState.PENDING
    assert _offered(response.content) == {f"cancel {pk}"}
    assert b"You voted: Approve." in response.content
    # Nobody decides twice.
    response = _act(first, request=pk, action="approve", reason="again")
    assert b"already" in response.content
    assert Approval.objects.filter(request=made).count() == 1

    second = _client(b)
    response = _act(second, request=pk, action="approve", reason="confirmed with the customer")
    made.refresh_from_db()
    # VAULT_SHRED_WAIT_DAYS (7 by default) keeps the destruction waiting.
    assert made.state == RequestState.APPROVED
    assert _events(acme, "approval.approve") == 2
    assert _events(acme, "approval.granted") == 1
    text = response.content.decode()
    assert "Approved; waiting for the end of the waiting period" in text
    assert "confirmed with the customer" in text
    assert "Runs no earlier than" in text
    # Still open (and cancellable) during the waiting period.
    assert _offered(response.content) == {f"cancel {pk}"}


def test_console_approvals_deny_ends_the_request(acme):
    made = _destroy_request(acme, _person(acme, Role.CUSTODIAN))
    client = _client(_person(acme, Role.OWNER))
    response = _act(client, request=made.pk, action="deny", reason="")
    assert b"Give a reason" in response.content
    made.refresh_from_db()
    assert made.state == RequestState.PENDING
    response = _act(client, request=made.pk, action="deny", reason="not agreed")
    made.refresh_from_db()
    assert made.state == RequestState.DENIED
    assert _events(acme, "approval.deny") == 1
    assert b"not agreed" in response.content
    assert b"No request is waiting." in response.content
    assert _offered(response.content) == set()


def test_console_approvals_cancel_during_the_waiting_period(acme):
    requester = _person(acme, Role.CUSTODIAN)
    made = _destroy_request(acme, requester)
    for approver in (_person(acme, Role.CUSTODIAN), _person(acme, Role.OWNER)):
        approval_decide(request=made, user=approver, approve=True, reason="ok")
    made.refresh_from_db()
    assert made.state == RequestState.APPROVED
    client = _client(requester)
    response = _act(client, request=made.pk, action="cancel")
    made.refresh_from_db()
    assert made.state == RequestState.CANCELLED
    assert made.finished_by == requester
    assert _events(acme, "approval.cancel") == 1
    assert f"Request #{made.pk} is cancelled." in response.content.decode()


@pytest.mark.parametrize("action", ["approve", "deny", "cancel"])
@pytest.mark.parametrize("role", [Role.AUDITOR, Role.MEMBER])
def test_console_approval_actions_are_refused_to_readers(acme, action, role):
    made = _destroy_request(acme, _person(acme, Role.CUSTODIAN))
    client = _client(_person(acme, role))
    data = {"request": made.pk, "action": action, "reason": "x"}
    assert client.post(_url("approvals"), data).status_code == 403
    made.refresh_from_db()
    assert made.state == RequestState.PENDING
    assert not Approval.objects.exists()


@pytest.mark.parametrize("action", ["approve", "deny", "cancel"])
def test_console_approval_actions_are_404_to_another_tenant(acme, beta, action):
    made = _destroy_request(acme, _person(acme, Role.CUSTODIAN))
    outsider = _client(_person(beta, Role.CUSTODIAN))
    data = {"request": made.pk, "action": action, "reason": "x"}
    # Through the other tenant's address, and through the outsider's own tenant with the id.
    assert outsider.post(_url("approvals"), data).status_code == 404
    assert outsider.post(_url("approvals", slug="beta"), data).status_code == 404
    made.refresh_from_db()
    assert made.state == RequestState.PENDING
    assert not Approval.objects.exists()
    for kind in ("approval.approve", "approval.deny", "approval.cancel"):
        assert _events(acme, kind) == 0


def test_console_approvals_inbox_shows_an_expired_request_as_expired(acme):
    made = _destroy_request(acme, _person(acme, Role.CUSTODIAN))
    ApprovalRequest.objects.filter(pk=made.pk).update(expires_at="2000-01-01T00:00:00Z")
    client = _client(_person(acme, Role.OWNER))
    response = client.get(_url("approvals"))
    assert b"Expired before enough approvals" in response.content
    assert _offered(response.content) == set()
    response = _act(client, request=made.pk, action="approve", reason="late")
    assert b"can no longer be decided" in response.content
    made.refresh_from_db()
    assert made.state == RequestState.EXPIRED
