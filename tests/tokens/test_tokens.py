"""API tokens: format, storage as a keyed hash, scope, expiry, revocation, throttling."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import make_membership, make_tenant
from vault.accounts.models import User
from vault.tenants.models import Membership, Role
from vault.tokens.models import ApiToken
from vault.tokens.services import (
    TOKEN_PATTERN,
    InvalidLifetime,
    RoleNotAllowed,
    TokenRejected,
    token_authenticate,
    token_create,
    token_revoke,
)

pytestmark = pytest.mark.django_db


def _get(clear: str, path: str = "/api/v1/tenant/", ip: str = "10.9.8.7"):
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {clear}")
    return client.get(path)


@pytest.fixture
def owner():
    return make_membership(role=Role.OWNER)


def test_it_issues_prefixed_tokens_that_scanners_can_find(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    assert issued.clear.startswith("cvt_")
    assert TOKEN_PATTERN.match(issued.clear)
    assert issued.token.prefix == issued.clear[: len(issued.token.prefix)]


def test_it_stores_only_a_keyed_hash_never_the_token(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    secret = issued.clear.split("_", 2)[2]
    assert issued.token.digest != issued.clear
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM tokens_apitoken")
        rows = cursor.fetchall()
    dumped = repr(rows)
    assert secret not in dumped
    assert issued.clear not in dumped


def test_it_authenticates_and_records_last_use(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    assert issued.token.last_used_at is None
    response = _get(issued.clear)
    assert response.status_code == 200
    assert response.json()["slug"] == owner.tenant.slug
    issued.token.refresh_from_db()
    assert issued.token.last_used_at is not None
    assert issued.token.last_used_ip == "10.9.8.7"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"), id="wrong-secret"),
        pytest.param(lambda c: c.replace("cvt_", "cvx_"), id="wrong-prefix"),
        pytest.param(lambda c: "cvt_000000000000_" + c.split("_", 2)[2], id="unknown-key-id"),
        pytest.param(lambda c: c + "x", id="trailing-data"),
        pytest.param(lambda c: "", id="empty"),
    ],
)
def test_it_rejects_altered_tokens(owner, mangle) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    response = _get(mangle(issued.clear))
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"invalid_token", "not_authenticated"}


def test_it_rejects_expired_tokens(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    ApiToken.objects.filter(pk=issued.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = _get(issued.clear)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_it_rejects_revoked_tokens_and_their_children(owner) -> None:
    parent = token_create(tenant=owner.tenant, name="parent", role=Role.MEMBER, user=owner.user)
    child = token_create(tenant=owner.tenant, name="child", role=Role.MEMBER, parent=parent.token)
    assert _get(child.clear).status_code == 200
    token_revoke(token=parent.token)
    assert _get(parent.clear).status_code == 401
    assert _get(child.clear).status_code == 401


def test_it_never_issues_a_role_wider_than_the_creators() -> None:
    member = make_membership(role=Role.MEMBER)
    with pytest.raises(RoleNotAllowed):
        token_create(tenant=member.tenant, name="x", role=Role.OWNER, user=member.user)
    with pytest.raises(RoleNotAllowed):
        token_create(tenant=member.tenant, name="x", role=Role.AUDITOR, user=member.user)
    issued = token_create(tenant=member.tenant, name="x", role=Role.MEMBER, user=member.user)
    with pytest.raises(RoleNotAllowed):
        token_create(tenant=member.tenant, name="y", role=Role.CUSTODIAN, parent=issued.token)


def test_it_refuses_tokens_for_people_outside_the_tenant(owner) -> None:
    stranger = make_membership(role=Role.OWNER)  # owner of another tenant
    with pytest.raises(RoleNotAllowed):
        token_create(tenant=owner.tenant, name="x", role=Role.MEMBER, user=stranger.user)


def test_it_checks_the_creators_role_at_every_use(owner) -> None:
    """Even a role changed out of band (not through the services, which also revoke) counts."""
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.CUSTODIAN, user=owner.user)
    assert _get(issued.clear).status_code == 200
    Membership.objects.filter(pk=owner.pk).update(role=Role.MEMBER)
    assert _get(issued.clear).status_code == 401
    Membership.objects.filter(pk=owner.pk).delete()
    assert _get(issued.clear).status_code == 401


def test_it_stops_tokens_of_a_deactivated_person(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    assert _get(issued.clear).status_code == 200
    User.objects.filter(pk=owner.user_id).update(is_active=False)
    assert _get(issued.clear).status_code == 401


def test_it_stores_tokens_under_a_key_only_the_service_holds(owner, settings) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    assert issued.token.digest != hashlib.sha256(issued.clear.encode()).hexdigest()
    assert _get(issued.clear).status_code == 200
    settings.VAULT_TOKEN_HMAC_KEY = "another key entirely"
    assert _get(issued.clear).status_code == 401


def test_an_integration_token_cannot_mint_a_wider_one() -> None:
    tenant = make_tenant()
    integration = token_create(tenant=tenant, name="ci", role=Role.MEMBER)
    with pytest.raises(RoleNotAllowed):
        token_create(tenant=tenant, name="x", role=Role.OWNER, parent=integration.token)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {integration.clear}")
    refused = client.post("/api/v1/tokens/", {"name": "x", "role": "owner"}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_not_allowed"


def test_a_child_wider_than_its_parent_never_works(owner) -> None:
    parent = token_create(tenant=owner.tenant, name="p", role=Role.MEMBER, user=owner.user)
    child = token_create(tenant=owner.tenant, name="c", role=Role.MEMBER, parent=parent.token)
    ApiToken.objects.filter(pk=child.token.pk).update(role=Role.OWNER)  # as a broken write would
    assert _get(child.clear).status_code == 401


def test_an_integration_token_sees_only_itself_and_its_children() -> None:
    tenant = make_tenant()
    first = token_create(tenant=tenant, name="first", role=Role.MEMBER)
    second = token_create(tenant=tenant, name="second", role=Role.MEMBER)
    child = token_create(tenant=tenant, name="child", role=Role.MEMBER, parent=first.token)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {first.clear}")
    ids = {row["id"] for row in client.get("/api/v1/tokens/").json()["results"]}
    assert ids == {first.token.pk, child.token.pk}
    assert client.delete(f"/api/v1/tokens/{second.token.pk}/").status_code == 404
    assert _get(second.clear).status_code == 200


def test_it_records_a_new_address_at_once(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    _get(issued.clear, ip="10.1.1.1")
    _get(issued.clear, ip="10.2.2.2")
    issued.token.refresh_from_db()
    assert issued.token.last_used_ip == "10.2.2.2"


def test_it_serves_callers_without_an_ip_address(owner) -> None:
    """A unix-socket peer has no address; nothing invalid may reach the address column."""
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    assert _get(issued.clear, ip="").status_code == 200
    issued.token.refresh_from_db()
    assert issued.token.last_used_at is not None
    assert issued.token.last_used_ip is None


def test_it_stops_tokens_of_a_deactivated_tenant() -> None:
    tenant = make_tenant()
    issued = token_create(tenant=tenant, name="integration", role=Role.MEMBER)
    assert _get(issued.clear).status_code == 200
    tenant.is_active = False
    tenant.save()
    assert _get(issued.clear).status_code == 401


def test_it_bounds_token_lifetimes(owner, settings) -> None:
    with pytest.raises(InvalidLifetime):
        token_create(tenant=owner.tenant, name="x", role=Role.MEMBER, lifetime_days=0)
    with pytest.raises(InvalidLifetime):
        token_create(
            tenant=owner.tenant,
            name="x",
            role=Role.MEMBER,
            lifetime_days=settings.VAULT_TOKEN_MAX_DAYS + 1,
        )
    issued = token_create(tenant=owner.tenant, name="x", role=Role.MEMBER)
    lifetime = issued.token.expires_at - issued.token.created_at
    assert lifetime == timedelta(days=settings.VAULT_TOKEN_DEFAULT_DAYS)


def test_it_throttles_an_address_after_repeated_failures(owner, settings) -> None:
    settings.VAULT_AUTH_FAILURE_LIMIT = 3
    good = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    bad = good.clear[:-2] + "zz"
    for _ in range(3):
        assert _get(bad, ip="10.0.0.5").status_code == 401
    throttled = _get(good.clear, ip="10.0.0.5")
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "authentication_throttled"
    assert int(throttled["Retry-After"]) > 0
    # Another address is not affected.
    assert _get(good.clear, ip="10.0.0.6").status_code == 200


def test_it_does_not_count_successes_as_failures(owner, settings) -> None:
    settings.VAULT_AUTH_FAILURE_LIMIT = 2
    good = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    for _ in range(5):
        assert _get(good.clear, ip="10.0.0.7").status_code == 200


def test_token_authenticate_gives_no_hint_why(owner) -> None:
    issued = token_create(tenant=owner.tenant, name="ci", role=Role.MEMBER, user=owner.user)
    token_revoke(token=issued.token)
    with pytest.raises(TokenRejected):
        token_authenticate(clear=issued.clear)
    response = _get(issued.clear)
    assert "revoked" in response.json()["error"]["message"]  # one message for every cause
    assert response.json()["error"]["message"] == _get("cvt_nonsense").json()["error"]["message"]


def test_the_token_create_command_prints_the_token_once_on_stdout(owner) -> None:
    out, err = StringIO(), StringIO()
    call_command(
        "token_create", "--tenant", owner.tenant.slug, "--role", "auditor", stdout=out, stderr=err
    )
    clear = out.getvalue().strip()
    assert TOKEN_PATTERN.match(clear)
    assert clear not in err.getvalue()
    response = _get(clear)
    assert response.status_code == 200
    token = ApiToken.objects.get(key_id=clear[4:16])
    assert token.role == Role.AUDITOR
    assert token.user is None


def test_a_member_token_lists_only_its_own_tokens() -> None:
    member = make_membership(role=Role.MEMBER)
    colleague = make_membership(tenant=member.tenant, role=Role.MEMBER)
    mine = token_create(tenant=member.tenant, name="mine", role=Role.MEMBER, user=member.user)
    theirs = token_create(
        tenant=member.tenant, name="theirs", role=Role.MEMBER, user=colleague.user
    )
    ids = {row["id"] for row in _get(mine.clear, "/api/v1/tokens/").json()["results"]}
    assert mine.token.pk in ids
    assert theirs.token.pk not in ids
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.clear}")
    assert client.delete(f"/api/v1/tokens/{theirs.token.pk}/").status_code == 404
    assert ApiToken.objects.get(pk=theirs.token.pk).revoked_at is None


def test_an_owner_can_revoke_any_token_of_the_tenant(owner) -> None:
    colleague = make_membership(tenant=owner.tenant, role=Role.MEMBER)
    theirs = token_create(tenant=owner.tenant, name="theirs", role=Role.MEMBER, user=colleague.user)
    mine = token_create(tenant=owner.tenant, name="mine", role=Role.OWNER, user=owner.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.clear}")
    assert client.delete(f"/api/v1/tokens/{theirs.token.pk}/").status_code == 204
    assert _get(theirs.clear).status_code == 401


def test_the_api_shows_a_new_token_once(owner) -> None:
    mine = token_create(tenant=owner.tenant, name="mine", role=Role.OWNER, user=owner.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.clear}")
    created = client.post(
        "/api/v1/tokens/", {"name": "ci", "role": "member", "lifetime_days": 7}, format="json"
    )
    assert created.status_code == 201
    clear = created.json()["token"]
    assert _get(clear).status_code == 200
    shown = client.get(f"/api/v1/tokens/{created.json()['id']}/").json()
    assert "token" not in shown
    assert clear not in repr(client.get("/api/v1/tokens/").json())


def test_a_narrow_token_of_an_owner_cannot_see_or_revoke_the_owners_wider_tokens(owner) -> None:
    wide = token_create(tenant=owner.tenant, name="wide", role=Role.OWNER, user=owner.user)
    narrow = token_create(tenant=owner.tenant, name="narrow", role=Role.MEMBER, user=owner.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow.clear}")
    ids = {row["id"] for row in client.get("/api/v1/tokens/").json()["results"]}
    assert narrow.token.pk in ids
    assert wide.token.pk not in ids
    assert client.get(f"/api/v1/tokens/{wide.token.pk}/").status_code == 404
    assert client.delete(f"/api/v1/tokens/{wide.token.pk}/").status_code == 404
    assert _get(wide.clear).status_code == 200


def test_it_refuses_to_nest_tokens_deeper_than_they_can_work(owner) -> None:
    from vault.tokens.services import MAX_PARENT_DEPTH, ChainTooDeep

    current = token_create(tenant=owner.tenant, name="0", role=Role.MEMBER, user=owner.user)
    for level in range(1, MAX_PARENT_DEPTH):
        current = token_create(
            tenant=owner.tenant, name=str(level), role=Role.MEMBER, parent=current.token
        )
    assert _get(current.clear).status_code == 200, "the deepest allowed token works"
    with pytest.raises(ChainTooDeep):
        token_create(tenant=owner.tenant, name="too deep", role=Role.MEMBER, parent=current.token)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {current.clear}")
    refused = client.post("/api/v1/tokens/", {"name": "x", "role": "member"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "token_chain_too_deep"
