"""The check registry: every check of the catalogue, by id.

Each module of this package defines checks and registers them with ``@register``; importing
the package imports them all.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from compliance.checks.base import SCOPES, SEVERITIES, Check, Context, Outcome

__all__ = ["Check", "Context", "Outcome", "all_checks", "get_check", "register"]

_REGISTRY: dict[str, type[Check]] = {}
_MODULES = ("keys", "data", "iam", "logs", "governance", "manual")
_loaded = False

C = TypeVar("C", bound=type[Check])


def register(cls: C) -> C:
    """Add a check class to the registry (its metadata is checked here, once)."""
    for name in ("id", "title", "description", "risk", "requirements", "remediation"):
        if not getattr(cls, name, None):
            raise TypeError(f"check {cls.__name__} has no {name}")
    if cls.severity not in SEVERITIES:
        raise TypeError(f"check {cls.id}: unknown severity {cls.severity!r}")
    if cls.scope not in SCOPES:
        raise TypeError(f"check {cls.id}: unknown scope {cls.scope!r}")
    if cls.kind not in ("automated", "manual"):
        raise TypeError(f"check {cls.id}: unknown kind {cls.kind!r}")
    if cls.id in _REGISTRY and _REGISTRY[cls.id] is not cls:
        raise TypeError(f"check id {cls.id} registered twice")
    _REGISTRY[cls.id] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        for name in _MODULES:
            importlib.import_module(f"compliance.checks.{name}")
        _loaded = True


def all_checks() -> list[type[Check]]:
    """Every registered check, by id."""
    _load()
    return [_REGISTRY[key] for key in sorted(_REGISTRY)]


def get_check(check_id: str) -> type[Check]:
    """One check by id (KeyError when there is none)."""
    _load()
    return _REGISTRY[check_id]
