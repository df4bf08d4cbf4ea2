"""The console's navigation, contributed by the apps that own the pages.

An app registers its tenant pages in its ``AppConfig.ready`` and the console renders them,
so the console never imports the apps that extend it (``compliance`` reads the vault apps; the
vault apps, the console included, never read ``compliance``). Each entry names a URL that
takes the tenant's ``slug`` and nothing else, and the roles that see the link. The link is
only a convenience: the page's own ``tenant_page`` roles are what the server enforces.

    from vault.console.registry import register_nav
    register_nav("Keys", "console:keys", roles=ALL_ROLES, order=20)

The system check ``console.E001`` stops start-up when an entry's URL does not exist or its
view is not a ``tenant_page``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from vault.tenants.models import Role

_ALL_ROLES = frozenset(Role.values)


@dataclass(frozen=True)
class NavEntry:
    """One link of the tenant navigation."""

    label: str
    url_name: str
    roles: frozenset[str]
    order: int

    def url(self, slug: str) -> str:
        """The entry's URL for the tenant ``slug``."""
        return reverse(self.url_name, kwargs={"slug": slug})


_entries: dict[str, NavEntry] = {}


def register_nav(
    label: str, url_name: str, *, roles: Collection[str] = _ALL_ROLES, order: int = 100
) -> NavEntry:
    """Add a link to the tenant navigation.

    Args:
        label: the link's text.
        url_name: a namespaced URL name whose only argument is ``slug``.
        roles: the roles that see the link (every role by default).
        order: position in the navigation, lowest first; ties by label.

    Raises:
        ImproperlyConfigured: the URL name is registered already, or a role is unknown.
    """
    if url_name in _entries:
        raise ImproperlyConfigured(f"console navigation: {url_name!r} is registered already")
    wanted = frozenset(str(role) for role in roles)
    if not wanted or wanted - _ALL_ROLES:
        raise ImproperlyConfigured(f"console navigation: bad roles {sorted(wanted)} for {label}")
    entry = NavEntry(label=label, url_name=url_name, roles=wanted, order=order)
    _entries[url_name] = entry
    return entry


def unregister_nav(url_name: str) -> None:
    """Remove an entry (for tests that register pages of their own)."""
    _entries.pop(url_name, None)


def nav_entries(*, role: str | None = None) -> list[NavEntry]:
    """The registered entries (those ``role`` sees, when given), in navigation order."""
    entries = sorted(_entries.values(), key=lambda e: (e.order, e.label))
    return [e for e in entries if role is None or role in e.roles]


def nav_problems() -> list[str]:
    """Entries whose URL does not reverse with a slug alone, or whose view is not a
    ``tenant_page`` (for the system check)."""
    problems = []
    for entry in nav_entries():
        try:
            view = resolve(entry.url("example")).func
        except (NoReverseMatch, Resolver404):
            problems.append(f"{entry.label}: no URL named {entry.url_name!r} takes just a slug")
            continue
        if not hasattr(view, "console_roles"):
            problems.append(f"{entry.label}: the view of {entry.url_name!r} is not a tenant_page")
    return problems
