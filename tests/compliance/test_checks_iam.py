"""The identity and access checks (IAM-001, 004 to 009, 011) on states made by the product's own
services, and on the bad states only an attacker or a broken deployment makes (direct ORM
writes, override_settings)."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from compliance.checks import Context, Outcome, get_check
from vault.accounts.models import User
from vault.accounts.services import login_failure_record
from vault.lifecycle.approvals import approval_decide, approval_request
from vault.lifecycle.models import ApprovalAction
from vault.tenants.models import Membership, Role, Tenant
from vault.tenants.services import member_add, tenant_create
from vault.tokens.models import ApiToken
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db


def results(check_id: str, tenant: Tenant) -> dict[tuple[str, str], Outcome]:
    """The check's outcomes for the tenant, by (resource type, resource id)."""
    check = get_check(check_id)()
    return {(o.resource_type, o.resource_id): o for o in check.run(Context(tenant, timezone.now()))}


def platform(check_id: str, tenant: Tenant) -> Outcome:
    return results(check_id, tenant)[("platform", "platform")]


def operator_adds(tenant: Tenant, email: str, role: str) -> User:
    """The platform operator's way in: manage.py member_add (a tenant's first owner)."""
    call_command(
        "member_add", "--tenant", tenant.slug, "--email", email, "--role", role, stdout=StringIO()
    )
    return User.objects.get(email=email)


@pytest.fixture
def acme() -> Tenant:
    tenant = tenant_create(slug="acme", name="Acme")
    operator_adds(tenant, "olivia@acme.example", Role.OWNER)
    return tenant


# --- IAM-001 (PCI-DSS 7.2.1-7.2.3) ---------------------------------------------------------------


def test_iam001_passes_an_operator_made_owner_and_a_plain_member(acme):
    member_add(tenant=acme, email="mark@acme.example", role=Role.MEMBER)
    found = results("IAM-001", acme)
    owner = found[("user", "olivia@acme.example")]
    assert owner.status == "PASS"
    assert "operator" in owner.detail
    assert found[("user", "mark@acme.example")].status == "PASS"


def test_iam001_passes_a_custodian_appointed_under_dual_control(acme):
    operator_adds(acme, "owen@acme.example", Role.OWNER)
    operator_adds(acme, "oscar@acme.example", Role.OWNER)
    olivia, owen, oscar = (
        User.objects.get(email=f"{n}@acme.example") for n in ("olivia", "owen", "oscar")
    )
    request = approval_request(
        tenant=acme,
        user=olivia,
        action=ApprovalAction.CUSTODIAN_ADD,
        reason="new key custodian",
        params={"email": "carla@acme.example"},
    )
    approval_decide(request=request, user=owen, approve=True)
    approval_decide(request=request, user=oscar, approve=True)
    outcome = results("IAM-001", acme)[("user", "carla@acme.example")]
    assert outcome.status == "PASS"
    assert f"approval request {request.pk}" in outcome.detail


def test_iam001_fails_a_custodian_inserted_without_approval(acme):
    # Out of band: a custodian row written straight into the database.
    intruder = User.objects.create_user(email="ivan@acme.example")
    Membership.objects.create(tenant=acme, user=intruder, role=Role.CUSTODIAN)
    outcome = results("IAM-001", acme)[("user", "ivan@acme.example")]
    assert outcome.status == "FAIL"
    assert "no executed dual-control request" in outcome.detail


def test_iam001_fails_a_role_raised_behind_the_audit_log(acme):
    membership, _ = member_add(tenant=acme, email="mark@acme.example", role=Role.MEMBER)
    Membership.objects.filter(pk=membership.pk).update(role=Role.OWNER)
    outcome = results("IAM-001", acme)[("user", "mark@acme.example")]
    assert outcome.status == "FAIL"
    assert "gives member" in outcome.detail


def test_iam001_fails_direct_django_permissions(acme):
    membership, _ = member_add(tenant=acme, email="mark@acme.example", role=Role.MEMBER)
    membership.user.user_permissions.add(Permission.objects.get(codename="change_user"))
    outcome = results("IAM-001", acme)[("user", "mark@acme.example")]
    assert outcome.status == "FAIL"
    assert "1 direct permission(s)" in outcome.detail
    assert outcome.observed["problems"]


# --- IAM-004 (PCI-DSS 8.2.1, 8.2.2) ---------------------------------------------------------------


def test_iam004_passes_named_people(acme):
    outcome = results("IAM-004", acme)[("user", "olivia@acme.example")]
    assert outcome.status == "PASS"
    assert "named, unique" in outcome.detail


def test_iam004_fails_a_generic_address_added_through_the_product(acme):
    member_add(tenant=acme, email="Support+vault@acme.example", role=Role.MEMBER)
    outcome = results("IAM-004", acme)[("user", "support+vault@acme.example")]
    assert outcome.status == "FAIL"
    assert "names a function or group" in outcome.detail


def test_iam004_fails_an_address_that_exists_twice_in_different_case(acme):
    User(email="Olivia@acme.example").save()  # bypasses the manager's lower-casing
    outcome = results("IAM-004", acme)[("user", "olivia@acme.example")]
    assert outcome.status == "FAIL"
    assert "different case" in outcome.detail


def test_iam004_fails_a_persons_child_token_that_acts_for_nobody(acme):
    olivia = User.objects.get(email="olivia@acme.example")
    parent = token_create(tenant=acme, name="cli", role=Role.MEMBER, user=olivia).token
    child = token_create(tenant=acme, name="job", role=Role.MEMBER, parent=parent).token
    found = results("IAM-004", acme)
    assert found[("token", parent.prefix)].status == "PASS"
    assert found[("token", child.prefix)].status == "PASS"
    ApiToken.objects.filter(pk=child.pk).update(user=None)
    outcome = results("IAM-004", acme)[("token", child.prefix)]
    assert outcome.status == "FAIL"
    assert "acts for no person" in outcome.detail


# --- IAM-005 (PCI-DSS 8.2.6) ----------------------------------------------------------------------


def test_iam005_passes_a_recent_sign_in_and_a_disabled_account(acme):
    User.objects.filter(email="olivia@acme.example").update(last_login=timezone.now())
    member_add(tenant=acme, email="gone@acme.example", role=Role.MEMBER)
    User.objects.filter(email="gone@acme.example").update(
        is_active=False, date_joined=timezone.now() - timedelta(days=400)
    )
    found = results("IAM-005", acme)
    assert found[("user", "olivia@acme.example")].status == "PASS"
    assert "0 days ago" in found[("user", "olivia@acme.example")].detail
    assert found[("user", "gone@acme.example")].status == "PASS"
    assert "disabled" in found[("user", "gone@acme.example")].detail


def test_iam005_fails_an_enabled_account_idle_for_120_days(acme):
    # Time passing, simulated: the last sign-in is backdated.
    User.objects.filter(email="olivia@acme.example").update(
        last_login=timezone.now() - timedelta(days=120)
    )
    outcome = results("IAM-005", acme)[("user", "olivia@acme.example")]
    assert outcome.status == "FAIL"
    assert "inactive for 120 days" in outcome.detail
    assert outcome.observed["days"] == 120


def test_iam005_counts_recent_token_use_as_activity(acme):
    olivia = User.objects.get(email="olivia@acme.example")
    User.objects.filter(pk=olivia.pk).update(last_login=timezone.now() - timedelta(days=120))
    token = token_create(tenant=acme, name="cli", role=Role.MEMBER, user=olivia).token
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    assert results("IAM-005", acme)[("user", "olivia@acme.example")].status == "PASS"


# --- IAM-006 (PCI-DSS 8.2.8) ----------------------------------------------------------------------


def test_iam006_passes_the_shipped_session_settings(acme):
    outcome = platform("IAM-006", acme)
    assert outcome.status == "PASS"
    assert "after 15 idle minutes" in outcome.detail


@override_settings(VAULT_SESSION_IDLE_MINUTES=30, SESSION_COOKIE_AGE=1800)
def test_iam006_fails_a_30_minute_idle_timeout(acme):
    outcome = platform("IAM-006", acme)
    assert outcome.status == "FAIL"
    assert "VAULT_SESSION_IDLE_MINUTES is 30" in outcome.detail
    assert "SESSION_COOKIE_AGE is 1800" in outcome.detail


def test_iam006_fails_without_the_session_middleware_or_renewal(acme):
    middleware = [m for m in settings.MIDDLEWARE if "SessionMiddleware" not in m]
    with override_settings(MIDDLEWARE=middleware, SESSION_SAVE_EVERY_REQUEST=False):
        outcome = platform("IAM-006", acme)
    assert outcome.status == "FAIL"
    assert "SessionMiddleware is not in MIDDLEWARE" in outcome.detail
    assert "SESSION_SAVE_EVERY_REQUEST is off" in outcome.detail


# --- IAM-007 (PCI-DSS 8.3.4) ----------------------------------------------------------------------


def test_iam007_passes_the_shipped_lockout_and_the_lockout_really_locks(acme):
    outcome = platform("IAM-007", acme)
    assert outcome.status == "PASS"
    assert "30 minutes after 10 failures" in outcome.detail
    # The regression half: the configured values are what the sign-in bookkeeping applies.
    user = User.objects.create_user(email="probe@example.com", password="x")
    locked = [login_failure_record(user=user) for _ in range(settings.VAULT_LOCKOUT_THRESHOLD)]
    assert locked == [False] * (settings.VAULT_LOCKOUT_THRESHOLD - 1) + [True]
    user.refresh_from_db()
    assert user.locked_until is not None
    assert user.locked_until >= timezone.now() + timedelta(minutes=29)


@override_settings(VAULT_LOCKOUT_THRESHOLD=20, VAULT_LOCKOUT_MINUTES=5)
def test_iam007_fails_a_loose_lockout(acme):
    outcome = platform("IAM-007", acme)
    assert outcome.status == "FAIL"
    assert "VAULT_LOCKOUT_THRESHOLD is 20" in outcome.detail
    assert "VAULT_LOCKOUT_MINUTES is 5" in outcome.detail


# --- IAM-008 (PCI-DSS 8.3.6, 8.3.7) ---------------------------------------------------------------


def test_iam008_passes_the_shipped_password_validators(acme):
    outcome = platform("IAM-008", acme)
    assert outcome.status == "PASS"
    assert "12+ characters" in outcome.detail
    assert "last 4 passwords" in outcome.detail


@override_settings(
    AUTH_PASSWORD_VALIDATORS=[
        {
            "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
            "OPTIONS": {"min_length": 8},
        },
        {
            "NAME": "vault.accounts.validators.PasswordHistoryValidator",
            "OPTIONS": {"history": 2},
        },
    ]
)
def test_iam008_fails_short_simple_recycled_passwords(acme):
    outcome = platform("IAM-008", acme)
    assert outcome.status == "FAIL"
    assert "minimum password length is 8" in outcome.detail
    assert "letters and digits" in outcome.detail
    assert "last 2" in outcome.detail


# --- IAM-009 (PCI-DSS 8.4.1-8.4.3) ----------------------------------------------------------------


def test_iam009_passes_an_enrolled_member_and_the_shipped_enforcement(acme):
    olivia = User.objects.get(email="olivia@acme.example")
    TOTPDevice.objects.create(user=olivia, name="Authenticator app", confirmed=True)
    found = results("IAM-009", acme)
    assert found[("user", "olivia@acme.example")].status == "PASS"
    assert found[("platform", "platform")].status == "PASS"


def test_iam009_fails_a_member_who_never_enrolled(acme):
    member_add(tenant=acme, email="mark@acme.example", role=Role.MEMBER)
    olivia = User.objects.get(email="olivia@acme.example")
    TOTPDevice.objects.create(user=olivia, name="half-done enrolment", confirmed=False)
    found = results("IAM-009", acme)
    for email in ("mark@acme.example", "olivia@acme.example"):
        assert found[("user", email)].status == "FAIL"
        assert "no confirmed authenticator" in found[("user", email)].detail


def test_iam009_fails_a_deployment_without_the_otp_middleware(acme):
    middleware = [m for m in settings.MIDDLEWARE if "django_otp" not in m]
    with override_settings(MIDDLEWARE=middleware):
        outcome = platform("IAM-009", acme)
    assert outcome.status == "FAIL"
    assert "OTPMiddleware is not in MIDDLEWARE" in outcome.detail


# --- IAM-011 (PCI-DSS 8.6.3) ----------------------------------------------------------------------


def _integration_token(tenant: Tenant) -> ApiToken:
    return token_create(tenant=tenant, name="ci", role=Role.MEMBER, lifetime_days=90).token


def test_iam011_passes_a_fresh_integration_token(acme):
    token = _integration_token(acme)
    outcome = results("IAM-011", acme)[("token", token.prefix)]
    assert outcome.status == "PASS"
    assert "integration token" in outcome.detail


def test_iam011_fails_a_token_whose_expiry_was_pushed_beyond_the_maximum(acme):
    token = _integration_token(acme)
    ApiToken.objects.filter(pk=token.pk).update(
        expires_at=token.created_at + timedelta(days=settings.VAULT_TOKEN_MAX_DAYS + 30)
    )
    outcome = results("IAM-011", acme)[("token", token.prefix)]
    assert outcome.status == "FAIL"
    assert f"expires {settings.VAULT_TOKEN_MAX_DAYS + 30} days after creation" in outcome.detail


def test_iam011_fails_an_old_token_and_an_unused_one(acme):
    old, idle = _integration_token(acme), _integration_token(acme)
    now = timezone.now()
    ApiToken.objects.filter(pk=old.pk).update(
        created_at=now - timedelta(days=400), expires_at=now + timedelta(days=10)
    )
    ApiToken.objects.filter(pk=idle.pk).update(
        created_at=now - timedelta(days=100), last_used_at=now - timedelta(days=95)
    )
    found = results("IAM-011", acme)
    assert found[("token", old.prefix)].status == "FAIL"
    assert "400 days old" in found[("token", old.prefix)].detail
    assert found[("token", idle.prefix)].status == "FAIL"
    assert "not been used for 95 days" in found[("token", idle.prefix)].detail


def test_iam_checks_report_only_canonical_observations(acme: Any) -> None:
    from vault.crypto import canonical

    _integration_token(acme)
    for check_id in ("IAM-001", "IAM-004", "IAM-005", "IAM-009", "IAM-011"):
        for outcome in results(check_id, acme).values():
            canonical.check(outcome.observed)
            assert outcome.detail.endswith(".")


def test_iam_checks_run_through_the_engine_without_errors(acme: Any) -> None:
    from compliance.engine import compliance_run
    from compliance.models import CheckResult

    call_command("tenant_bind_backend", "--tenant", "acme", "--backend", "local", stdout=StringIO())
    olivia = User.objects.get(email="olivia@acme.example")
    TOTPDevice.objects.create(user=olivia, name="Authenticator app", confirmed=True)
    User.objects.filter(pk=olivia.pk).update(last_login=timezone.now())
    _integration_token(acme)
    ids = ("IAM-001", "IAM-004", "IAM-005", "IAM-006", "IAM-007", "IAM-008", "IAM-009", "IAM-011")
    run = compliance_run(acme, checks=[get_check(i) for i in ids])
    statuses = set(CheckResult.objects.filter(run=run).values_list("check_id", "status"))
    assert statuses == {(i, "PASS") for i in ids}
    assert run.requirements.get(ref="8.2.8").finding == "IN_PLACE"
