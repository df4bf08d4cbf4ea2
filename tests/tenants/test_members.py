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
    response = owner_client.post(
        "/api/v1/members/", {"email": "new@example.com", "role": "member"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["setup_url"].startswith("http://testserver/console/set-password/")
    existing = make_user()
    response = owner_client.post(
        "/api/v1/members/", {"email": existing.email, "role": "auditor"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["setup_url"] is None
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
