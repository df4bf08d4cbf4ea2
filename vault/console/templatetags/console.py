"""Template tags of the console: ``{% console_nav %}`` renders the tenant navigation."""

from __future__ import annotations

from typing import Any

from django import template

from vault.console.registry import nav_entries
from vault.tenants.models import Role

register = template.Library()


@register.inclusion_tag("console/_nav.html", takes_context=True)
def console_nav(context: template.Context) -> dict[str, Any]:
    """The links the current role sees in the current tenant (nothing outside a tenant page)."""
    request = context.get("request")
    tenant = getattr(request, "tenant", None)
    role = getattr(request, "role", None)
    if tenant is None or role is None:
        return {"tenant": None, "links": []}
    match = getattr(request, "resolver_match", None)
    current = match.view_name if match is not None else ""
    links = [
        {"label": entry.label, "url": entry.url(tenant.slug), "current": entry.url_name == current}
        for entry in nav_entries(role=role)
    ]
    return {"tenant": tenant, "role_label": Role(role).label, "links": links}
