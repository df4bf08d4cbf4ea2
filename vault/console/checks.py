"""System checks of the console: a broken navigation entry stops start-up."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, register

from vault.console.registry import nav_problems


@register(Tags.urls)
def check_console_nav(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    return [
        Error(
            f"console navigation: {problem}",
            hint="register_nav() takes a namespaced URL name whose only argument is the slug.",
            id="console.E001",
        )
        for problem in nav_problems()
    ]
