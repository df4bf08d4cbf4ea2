"""The members and API tokens pages: the API's rules, through the same services and audit events.

The cast: an owner, a custodian, a member and an auditor of Acme, and an owner of Beta (the
outsider). PCI-DSS 7.2.1, 7.2.2 (access by role, deny by default), 8.2.4 (adding, changing and
removing people is audited), 8.4.2 (MFA status is shown to owners).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.console.conftest import sign_in
from tests.console.test_templates import check_page
from tests.factories import make_membership, make_tenant, make_user
from vault.accounts.models import User
from vault.audit.models import AuditEvent
from vault.console import views_people
from vault.console.views_people import NEW_TOKEN_KEY
from vault.lifecycle.models import ApprovalRequest
from vault.tenants.models import Membership, Role, Tenant
from vault.tokens.models import ApiToken
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme() -> Tenant:
    return make_tenant(slug="acme", name="Acme Payments")


@pytest.fixture
def beta() -> Tenant:
    return make_tenant(slug="beta", name="Beta Bank")


def _person(tenant: Tenant, role: str, *, email: str = "", device: bool = True) -> User:
    user = make_user(**({"email": email} if email else {}))
    if device:
        TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    make_membership(tenant=tenant, user=user, role=role)
    return user


def _client(user: User) -> Client:
    client = Client()
    response = sign_in(client, TOTPDevice.objects.get(user=user), email=user.email)
    assert response.status_code == 302, response.content
    return client


def _members_url(tenant: Tenant) -> str:
    return reverse("console:members", kwargs={"slug": tenant.slug})


def _tokens_url(tenant: Tenant) -> str:
    return reverse("console:tokens", kwargs={"slug": tenant.slug})


def _messages(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _events(tenant: Tenant, type_: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(tenant=tenant, type=type_))


def _main_post_forms(content: str) -> int:
    """POST forms in the page's main area (the top bar's sign-out form is not one of them)."""
    main = content.split("<main", 1)[1]
    return main.count('method="post"')


# --- members: reading ----------------------------------------------------------------------------


def test_console_members_lists_roles_mfa_and_last_sign_in(acme):
    owner = _person(acme, Role.OWNER, email="owner@acme.example")
    _person(acme, Role.MEMBER, email="new@acme.example", device=False)
    client = _client(owner)
    response = client.get(_members_url(acme))
    check_page(response)
    content = response.content.decode()
    assert "owner@acme.example" in content
    assert "new@acme.example" in content
    assert "Enrolled" in content
    assert "Not enrolled" in content
    assert "Never" in content  # the new member has not signed in
    assert "(you)" in content
    # Links to the person's own account pages.
    assert reverse("console:recovery_codes") in content
    assert reverse("console:password_change") in content
    assert "set-password" not in content


def test_console_members_shows_the_auditor_the_list_and_no_forms(acme):
    _person(acme, Role.OWNER, email="owner@acme.example")
    auditor = _person(acme, Role.AUDITOR)
    response = _client(auditor).get(_members_url(acme))
    check_page(response)
    content = response.content.decode()
    assert "owner@acme.example" in content
    assert _main_post_forms(content) == 0
    assert "Add a member" not in content


@pytest.mark.parametrize("role", [Role.CUSTODIAN, Role.MEMBER])
def test_console_members_is_refused_to_custodians_and_members(acme, role):
    person = _person(acme, role)
    client = _client(person)
    assert client.get(_members_url(acme)).status_code == 403
    assert client.post(_members_url(acme), {"action": "add"}).status_code == 403
    dashboard = client.get(reverse("console:dashboard", kwargs={"slug": acme.slug}))
    assert _members_url(acme) not in dashboard.content.decode()


# --- members: changes by the owner ---------------------------------------------------------------


def test_console_members_lets_the_owner_add_a_member(acme):
    owner = _person(acme, Role.OWNER)
    client = _client(owner)
    response = client.post(
        _members_url(acme),
        {"action": "add", "add-email": "Carol@Acme.example", "add-role": Role.MEMBER},
    )
    assert response.status_code == 302
    assert response["Location"] == _members_url(acme)
    membership = Membership.objects.get(tenant=acme, user__email="carol@acme.example")
    assert membership.role == Role.MEMBER
    [event] = _events(acme, "member.add")
    assert (event.resource_id, event.actor_id) == ("carol@acme.example", owner.email)
    assert _messages(response) == ["carol@acme.example is now a member, as Member."]
    # No set-up link, on the answer or on the page after it.
    page = client.get(_members_url(acme)).content.decode()
    assert "set-password" not in page
    assert "carol@acme.example" in page


def test_console_members_says_when_the_person_is_already_a_member(acme):
    owner = _person(acme, Role.OWNER)
    other = _person(acme, Role.MEMBER, email="dave@acme.example")
    response = _client(owner).post(
        _members_url(acme),
        {"action": "add", "add-email": other.email, "add-role": Role.AUDITOR},
    )
    assert response.status_code == 302
    assert "already a member" in _messages(response)[0]
    assert Membership.objects.get(tenant=acme, user=other).role == Role.MEMBER


@pytest.mark.parametrize("role", [Role.OWNER, Role.CUSTODIAN])
def test_console_members_files_an_approval_request_to_add_an_owner_or_custodian(acme, role):
    owner = _person(acme, Role.OWNER)
    client = _client(owner)
    response = client.post(
        _members_url(acme),
        {
            "action": "add",
            "add-email": "erin@acme.example",
            "add-role": role,
            "add-reason": "Second key holder",
        },
    )
    assert response.status_code == 302
    assert not Membership.objects.filter(tenant=acme, user__email="erin@acme.example").exists()
    request = ApprovalRequest.objects.get(tenant=acme)
    assert request.action == f"member.{role}.add"
    assert request.params == {"email": "erin@acme.example"}
    assert request.reason == "Second key holder"
    assert request.requested_by == owner
    assert len(_events(acme, "approval.request")) == 1
    assert not _events(acme, "member.add")
    assert f"Request #{request.pk} is waiting" in _messages(response)[0]


def test_console_members_needs_a_reason_for_an_approval_request(acme):
    owner = _person(acme, Role.OWNER)
    response = _client(owner).post(
        _members_url(acme),
        {"action": "add", "add-email": "erin@acme.example", "add-role": Role.OWNER},
    )
    assert response.status_code == 200
    assert "Give a reason for the approvers." in response.content.decode()
    assert not ApprovalRequest.objects.exists()
    assert not Membership.objects.filter(user__email="erin@acme.example").exists()


def test_console_members_refuses_a_bad_address_with_the_form(acme):
    owner = _person(acme, Role.OWNER)
    response = _client(owner).post(
        _members_url(acme), {"action": "add", "add-email": "not-an-address", "add-role": "member"}
    )
    assert response.status_code == 200
    check_page(response)
    assert Membership.objects.filter(tenant=acme).count() == 1


def test_console_members_lets_the_owner_change_a_role(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER, email="dave@acme.example")
    membership = Membership.objects.get(tenant=acme, user=member)
    live = token_create(tenant=acme, name="dave's", role=Role.MEMBER, user=member).token
    response = _client(owner).post(
        _members_url(acme),
        {"action": "role", "change-membership": membership.pk, "change-role": Role.AUDITOR},
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.AUDITOR
    [event] = _events(acme, "member.role.change")
    assert event.resource_id == "dave@acme.example"
    assert _messages(response) == ["dave@acme.example now has the role Auditor."]
    live.refresh_from_db()
    assert live.revoked_at is not None  # the auditor role no longer covers a member token


def test_console_members_files_an_approval_request_to_promote_to_custodian(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER, email="dave@acme.example")
    membership = Membership.objects.get(tenant=acme, user=member)
    response = _client(owner).post(
        _members_url(acme),
        {
            "action": "role",
            "change-membership": membership.pk,
            "change-role": Role.CUSTODIAN,
            "change-reason": "Needs to rotate keys",
        },
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.MEMBER
    request = ApprovalRequest.objects.get(tenant=acme)
    assert (request.action, request.params) == (
        "member.custodian.add",
        {"email": "dave@acme.example"},
    )
    assert not _events(acme, "member.role.change")


def test_console_members_lets_an_owner_step_down_to_custodian_without_approvals(acme):
    owner = _person(acme, Role.OWNER)
    other_owner = _person(acme, Role.OWNER)
    membership = Membership.objects.get(tenant=acme, user=other_owner)
    response = _client(owner).post(
        _members_url(acme),
        {"action": "role", "change-membership": membership.pk, "change-role": Role.CUSTODIAN},
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.CUSTODIAN
    assert not ApprovalRequest.objects.exists()


def test_console_members_refuses_to_demote_or_remove_the_last_owner(acme):
    owner = _person(acme, Role.OWNER, email="owner@acme.example")
    membership = Membership.objects.get(tenant=acme, user=owner)
    client = _client(owner)
    response = client.post(
        _members_url(acme),
        {"action": "role", "change-membership": membership.pk, "change-role": Role.MEMBER},
    )
    assert response.status_code == 302
    assert "last owner" in _messages(response)[0]
    response = client.post(_members_url(acme), {"action": "remove", "membership": membership.pk})
    assert response.status_code == 302
    assert "last owner" in _messages(response)[0]
    membership.refresh_from_db()
    assert membership.role == Role.OWNER
    assert not _events(acme, "member.role.change")
    assert not _events(acme, "member.remove")
    page = client.get(_members_url(acme)).content.decode()
    # The refusals are shown as messages on the page the browser is sent back to.
    assert page.count("owner@acme.example is the tenant&#x27;s last owner") == 2


def test_console_members_lets_the_owner_remove_a_member(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER, email="dave@acme.example")
    membership = Membership.objects.get(tenant=acme, user=member)
    live = token_create(tenant=acme, name="dave's", role=Role.MEMBER, user=member).token
    response = _client(owner).post(
        _members_url(acme), {"action": "remove", "membership": membership.pk}
    )
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    [event] = _events(acme, "member.remove")
    assert event.resource_id == "dave@acme.example"
    live.refresh_from_db()
    assert live.revoked_at is not None


def test_console_members_answers_404_for_another_tenants_membership(acme, beta):
    owner = _person(acme, Role.OWNER)
    stranger = _person(beta, Role.MEMBER)
    _person(beta, Role.OWNER)
    theirs = Membership.objects.get(tenant=beta, user=stranger)
    client = _client(owner)
    assert (
        client.post(_members_url(acme), {"action": "remove", "membership": theirs.pk}).status_code
        == 404
    )
    response = client.post(
        _members_url(acme),
        {"action": "role", "change-membership": theirs.pk, "change-role": Role.AUDITOR},
    )
    assert response.status_code == 200  # not one of the choices: the form says so
    theirs.refresh_from_db()
    assert theirs.role == Role.MEMBER
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_console_members_refuses_the_auditors_changes(acme):
    _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER)
    membership = Membership.objects.get(tenant=acme, user=member)
    auditor = _person(acme, Role.AUDITOR)
    client = _client(auditor)
    for data in (
        {"action": "add", "add-email": "x@acme.example", "add-role": Role.MEMBER},
        {"action": "role", "change-membership": membership.pk, "change-role": Role.AUDITOR},
        {"action": "remove", "membership": membership.pk},
    ):
        assert client.post(_members_url(acme), data).status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.MEMBER
    assert Membership.objects.filter(tenant=acme).count() == 3
    assert len(_events(acme, "access.denied")) == 3
    assert not _events(acme, "member.add")


def test_console_members_answers_404_to_an_outsider(acme, beta):
    _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER)
    membership = Membership.objects.get(tenant=acme, user=member)
    outsider = _person(beta, Role.OWNER)
    client = _client(outsider)
    assert client.get(_members_url(acme)).status_code == 404
    for data in (
        {"action": "add", "add-email": "x@acme.example", "add-role": Role.MEMBER},
        {"action": "role", "change-membership": membership.pk, "change-role": Role.AUDITOR},
        {"action": "remove", "membership": membership.pk},
    ):
        assert client.post(_members_url(acme), data).status_code == 404
    assert Membership.objects.filter(tenant=acme).count() == 2
    assert not AuditEvent.objects.filter(tenant=acme, type__startswith="member.").exists()


# --- tokens --------------------------------------------------------------------------------------


def test_console_tokens_shows_a_new_token_once(acme):
    member = _person(acme, Role.MEMBER)
    client = _client(member)
    response = client.post(
        _tokens_url(acme),
        {
            "action": "create",
            "token-name": "CI",
            "token-role": Role.MEMBER,
            "token-lifetime_days": 30,
        },
    )
    assert response.status_code == 302
    assert response["Location"] == _tokens_url(acme)
    token = ApiToken.objects.get(tenant=acme)
    assert (token.name, token.role, token.user) == ("CI", Role.MEMBER, member)
    assert (token.expires_at - token.created_at).days == 30
    [event] = _events(acme, "token.create")
    assert event.resource_id == token.prefix

    shown = client.get(_tokens_url(acme))
    check_page(shown)
    content = shown.content.decode()
    clear = content.split('id="new-token">', 1)[1].split("<", 1)[0]
    assert clear.startswith(token.prefix + "_")
    assert NEW_TOKEN_KEY not in client.session
    again = client.get(_tokens_url(acme)).content.decode()
    assert clear not in again
    assert token.prefix in again  # still listed, without its secret


def _create_token(client: Client, tenant: Tenant) -> None:
    data = {"action": "create", "token-name": "CI", "token-role": Role.MEMBER}
    response = client.post(_tokens_url(tenant), {**data, "token-lifetime_days": 30})
    assert response.status_code == 302


def test_console_tokens_keep_no_clear_token_in_the_session_row(acme):
    client = _client(_person(acme, Role.MEMBER))
    _create_token(client, acme)
    row = Session.objects.get(session_key=client.session.session_key)
    decoded = row.get_decoded()
    assert set(decoded[NEW_TOKEN_KEY]) == {"ct", "nonce", "expires"}
    clear = client.get(_tokens_url(acme)).content.decode()
    clear = clear.split('id="new-token">', 1)[1].split("<", 1)[0]
    secret = clear.split("_", 2)[2]  # cvt_<key id>_<secret>; the secret may hold "_" too
    assert len(secret) >= 40
    for text in (row.session_data, repr(decoded)):
        assert clear not in text
        assert secret not in text


def test_console_tokens_show_nothing_for_an_expired_new_token(acme, monkeypatch):
    client = _client(_person(acme, Role.MEMBER))
    _create_token(client, acme)
    real = views_people.time.time
    monkeypatch.setattr(views_people.time, "time", lambda: real() + 121)
    content = client.get(_tokens_url(acme)).content.decode()
    assert 'id="new-token"' not in content
    assert NEW_TOKEN_KEY not in client.session
    assert "CI" in content  # the token is listed, its secret is not shown


def test_console_tokens_offers_only_roles_the_creator_covers(acme):
    member = _person(acme, Role.MEMBER)
    client = _client(member)
    content = client.get(_tokens_url(acme)).content.decode()
    assert 'value="member"' in content
    assert 'value="owner"' not in content
    response = client.post(
        _tokens_url(acme),
        {
            "action": "create",
            "token-name": "root",
            "token-role": Role.OWNER,
            "token-lifetime_days": 1,
        },
    )
    assert response.status_code == 200
    assert not ApiToken.objects.exists()
    assert NEW_TOKEN_KEY not in client.session


def test_console_tokens_shows_a_member_only_their_own_tokens(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER)
    token_create(tenant=acme, name="owners-token", role=Role.OWNER, user=owner)
    token_create(tenant=acme, name="owners-narrow", role=Role.MEMBER, user=owner)
    token_create(tenant=acme, name="members-token", role=Role.MEMBER, user=member)
    member_page = _client(member).get(_tokens_url(acme)).content.decode()
    assert "members-token" in member_page
    assert "owners-token" not in member_page
    assert "owners-narrow" not in member_page
    owner_page = _client(owner).get(_tokens_url(acme)).content.decode()
    for name in ("owners-token", "owners-narrow", "members-token"):
        assert name in owner_page


def test_console_tokens_shows_the_auditor_every_token_and_no_forms(acme):
    owner = _person(acme, Role.OWNER)
    token_create(tenant=acme, name="owners-token", role=Role.OWNER, user=owner)
    auditor = _person(acme, Role.AUDITOR)
    response = _client(auditor).get(_tokens_url(acme))
    check_page(response)
    content = response.content.decode()
    assert "owners-token" in content
    assert _main_post_forms(content) == 0


def test_console_tokens_lets_a_member_revoke_their_own_token_only(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER)
    own = token_create(tenant=acme, name="mine", role=Role.MEMBER, user=member).token
    others = token_create(tenant=acme, name="theirs", role=Role.MEMBER, user=owner).token
    client = _client(member)
    assert (
        client.post(_tokens_url(acme), {"action": "revoke", "token": others.pk}).status_code == 404
    )
    response = client.post(_tokens_url(acme), {"action": "revoke", "token": own.pk})
    assert response.status_code == 302
    own.refresh_from_db()
    others.refresh_from_db()
    assert own.revoked_at is not None
    assert others.revoked_at is None
    [event] = _events(acme, "token.revoke")
    assert event.resource_id == own.prefix


def test_console_tokens_lets_the_owner_revoke_anyones_token(acme):
    owner = _person(acme, Role.OWNER)
    member = _person(acme, Role.MEMBER)
    theirs = token_create(tenant=acme, name="theirs", role=Role.MEMBER, user=member).token
    response = _client(owner).post(_tokens_url(acme), {"action": "revoke", "token": theirs.pk})
    assert response.status_code == 302
    theirs.refresh_from_db()
    assert theirs.revoked_at is not None
    assert len(_events(acme, "token.revoke")) == 1


def test_console_tokens_refuses_the_auditor_and_the_outsider(acme, beta):
    owner = _person(acme, Role.OWNER)
    token = token_create(tenant=acme, name="t", role=Role.MEMBER, user=owner).token
    create = {
        "action": "create",
        "token-name": "x",
        "token-role": Role.AUDITOR,
        "token-lifetime_days": 1,
    }
    auditor = _client(_person(acme, Role.AUDITOR))
    assert auditor.post(_tokens_url(acme), create).status_code == 403
    assert (
        auditor.post(_tokens_url(acme), {"action": "revoke", "token": token.pk}).status_code == 403
    )
    outsider = _client(_person(beta, Role.OWNER))
    assert outsider.get(_tokens_url(acme)).status_code == 404
    assert outsider.post(_tokens_url(acme), create).status_code == 404
    assert (
        outsider.post(_tokens_url(acme), {"action": "revoke", "token": token.pk}).status_code == 404
    )
    # Beta's owner cannot reach Acme's token through Beta's page either.
    assert (
        outsider.post(_tokens_url(beta), {"action": "revoke", "token": token.pk}).status_code == 404
    )
    token.refresh_from_db()
    assert token.revoked_at is None
    assert ApiToken.objects.count() == 1
    assert not _events(acme, "token.revoke")
