"""Who is calling the API: a token, the tenant it is scoped to, and the role it carries."""

from __future__ import annotations

from dataclasses import dataclass

from vault.accounts.models import User
from vault.tenants.models import Tenant
from vault.tokens.models import ApiToken


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of an API request (``request.user``)."""

    token: ApiToken
    tenant: Tenant
    role: str
    user: User | None

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    pk = None

    def __str__(self) -> str:
        return f"token {self.token.prefix} ({self.role} of {self.tenant.slug})"
