"""Tenants and members: commands for operators, the members API for owners."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tests.factories import make_membership, make_user
from vault.tenants.models import Membership, Role, Tenant
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client():
    owner = make_membership(role=Role.OWNER)
    issued = token_create(tenant=owner.tenant, name="t", role=Role.OWNER, user=owner.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    return client, owner


def test_tenant_create_makes_a_tenant_and_refuses_bad_or_taken_slugs() -> None:
    out = StringIO()
    call_command("tenant_create", "acme", "--name", "Acme Corp", stdout=out)
    assert Tenant.objects.get(slug="acme").name == "Acme Corp"
    with pytest.raises(CommandError, match="already exists"):
        call_command("tenant_create", "acme")
    with pytest.raises(CommandError, match="lowercase"):
        call_command("tenant_create", "Not A Slug")
    assert Tenant.objects.count() == 1


def test_member_add_creates_the_person_and_prints_a_one_time_setup_link() -> None:
    call_command("tenant_create", "acme")
    out = StringIO()
    call_command(
        "member_add",
        "--tenant",
        "acme",
        "--email",
        "Ann@Example.com",
        "--role",
        "custodian",
        stdout=out,
    )
    membership = Membership.objects.get(tenant__slug="acme")
    assert membership.user.email == "ann@example.com"
    assert membership.role == Role.CUSTODIAN
    assert not membership.user.has_usable_password()
    assert "/console/set-password/" in out.getvalue()
    with pytest.raises(CommandError, match="already a member"):
        call_command(
            "member_add", "--tenant", "acme", "--email", "ann@example.com", "--role", "member"
        )
    with pytest.raises(CommandError, match="no tenant"):
        call_command(
            "member_add", "--tenant", "nope", "--email", "b@example.com", "--role", "member"
        )


def test_owners_add_members_through_the_api(owner_client) -> None:
    owner_client, _ = owner_client
    new = owner_client.post(
        "/api/v1/members/", {"email": "new@example.com", "role": "member"}, format="json"
    )
    assert new.status_code == 201
    assert Membership.objects.get(pk=new.json()["id"]).user.email == "new@example.com"
    existing = make_user()
    old = owner_client.post(
        "/api/v1/members/", {"email": existing.email, "role": "auditor"}, format="json"
    )
    assert old.status_code == 201
    # The same shape whether the person had an account or not, and no credential for the owner:
    # a set-up link in the owner's hands would let the owner sign in as the person everywhere.
    assert set(new.json()) == set(old.json()) == {"id", "email", "role", "created_at"}
    assert "set-password" not in new.content.decode()
    again = owner_client.post(
        "/api/v1/members/", {"email": existing.email, "role": "member"}, format="json"
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_member"


def test_it_validates_member_input(owner_client) -> None:
    owner_client, _ = owner_client
    response = owner_client.post(
        "/api/v1/members/", {"email": "not-an-email", "role": "king"}, format="json"
    )
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] == "invalid"
    assert set(body["details"]) == {"email", "role"}


def test_a_tenant_always_keeps_an_owner(owner_client) -> None:
    owner_client, me = owner_client
    demote = owner_client.patch(f"/api/v1/members/{me.pk}/", {"role": "member"}, format="json")
    assert demote.status_code == 409
    assert demote.json()["error"]["code"] == "last_owner"
    remove = owner_client.delete(f"/api/v1/members/{me.pk}/")
    assert remove.status_code == 409
    assert Membership.objects.get(pk=me.pk).role == Role.OWNER
    second = make_membership(tenant=me.tenant, role=Role.OWNER)
    assert (
        owner_client.patch(
            f"/api/v1/members/{second.pk}/", {"role": "auditor"}, format="json"
        ).status_code
        == 200
    )
    assert Membership.objects.get(pk=second.pk).role == Role.AUDITOR


def test_an_owner_cannot_take_over_a_person_invited_by_another_tenant(client) -> None:
    """Owner A invites cfo@; owner B later adds the same person. A must hold no way in."""
    owner_a = make_membership(role=Role.OWNER)
    token_a = token_create(tenant=owner_a.tenant, name="a", role=Role.OWNER, user=owner_a.user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_a.clear}")
    answer = api.post(
        "/api/v1/members/", {"email": "cfo@bigcorp.example", "role": "member"}, format="json"
    )
    assert answer.status_code == 201
    assert "set-password" not in answer.content.decode()
    cfo = Membership.objects.get(pk=answer.json()["id"]).user
    assert not cfo.has_usable_password(), "nobody can sign in as the person until they set one"


def test_removing_or_demoting_a_member_revokes_their_tokens_for_good(owner_client) -> None:
    owner_client, owner = owner_client
    custodian = make_membership(tenant=owner.tenant, role=Role.CUSTODIAN)
    wide = token_create(tenant=owner.tenant, name="c", role=Role.CUSTODIAN, user=custodian.user)
    demoted = owner_client.patch(
        f"/api/v1/members/{custodian.pk}/", {"role": "member"}, format="json"
    )
    assert demoted.status_code == 200
    wide.token.refresh_from_db()
    assert wide.token.revoked_at is not None
    narrow = token_create(tenant=owner.tenant, name="m", role=Role.MEMBER, user=custodian.user)
    # Re-appointed (over the API that takes two approvals: tests/lifecycle/test_shredding.py).
    from vault.tenants.services import member_set_role

    member_set_role(membership=custodian, role=Role.CUSTODIAN)
    wide.token.refresh_from_db()
    assert wide.token.revoked_at is not None, "re-promotion does not revive revoked tokens"
    assert owner_client.delete(f"/api/v1/members/{custodian.pk}/").status_code == 204
    narrow.token.refresh_from_db()
    assert narrow.token.revoked_at is not None


@pytest.mark.postgres
def test_the_last_owner_check_locks_the_tenant_row(owner_client) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    owner_client, owner = owner_client
    second = make_membership(tenant=owner.tenant, role=Role.OWNER)
    with CaptureQueriesContext(connection) as queries:
        assert (
            owner_client.patch(
                f"/api/v1/members/{second.pk}/", {"role": "member"}, format="json"
            ).status_code
            == 200
        )
    assert any(
        "FOR UPDATE" in q["sql"] and "tenants_tenant" in q["sql"] for q in queries.captured_queries
    )
