"""First-run set-up of the embedded default: the ``demo`` tenant, its owner and an API token."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from vault.accounts.models import User
from vault.keys.models import KeyBinding
from vault.keys.services import tenant_bind_backend
from vault.tenants.models import Membership, Role, Tenant
from vault.tenants.services import member_add, tenant_create
from vault.tokens.services import IssuedToken, token_create, token_revoke

DEMO_SLUG = "demo"
DEMO_OWNER = "owner@demo.example"
DEMO_TOKEN_NAME = "make run"  # noqa: S105  (a label, not a secret)
DEMO_TOKEN_DAYS = 30


@dataclass(frozen=True)
class DemoAccess:
    tenant: Tenant
    owner: User
    password: str | None  # set on the run that created the owner, None afterwards
    token: IssuedToken


def _new_password(user: User) -> str:
    while True:
        candidate = f"{secrets.token_urlsafe(12)}{secrets.randbelow(10)}"
        try:
            validate_password(candidate, user)
        except ValidationError:
            continue
        return candidate


@transaction.atomic
def demo_bootstrap() -> DemoAccess:
    """Create the demo tenant and owner on first run; issue a fresh owner token on every run.

    The demo tenant is bound to the ``local`` keystore of the embedded default.

    The previous run's token is revoked, so only the latest printed token works.
    """
    tenant = Tenant.objects.filter(slug=DEMO_SLUG).first() or tenant_create(
        slug=DEMO_SLUG, name="Demo"
    )
    password = None
    owner = User.objects.filter(email=DEMO_OWNER).first()
    if owner is None:
        membership, _ = member_add(tenant=tenant, email=DEMO_OWNER, role=Role.OWNER)
        owner = membership.user
        password = _new_password(owner)
        owner.set_password(password)
        owner.save()
    elif not Membership.objects.filter(tenant=tenant, user=owner).exists():
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    for old in tenant.api_tokens.filter(name=DEMO_TOKEN_NAME, revoked_at__isnull=True):
        token_revoke(token=old)
    if (
        "local" in settings.VAULT_KEY_BACKENDS
        and not KeyBinding.objects.filter(tenant=tenant).exists()
    ):
        tenant_bind_backend(tenant=tenant, backend_alias="local")
    issued = token_create(
        tenant=tenant,
        name=DEMO_TOKEN_NAME,
        role=Role.OWNER,
        user=owner,
        lifetime_days=DEMO_TOKEN_DAYS,
    )
    return DemoAccess(tenant=tenant, owner=owner, password=password, token=issued)
