"""Strict parsers for settings taken from the environment (Django-free).

Every setting of the service comes from the environment. Secrets may also come from a file named
by ``<NAME>_FILE`` (Docker and Kubernetes secrets, systemd credentials), and structured settings
are JSON, either in the variable or in the file named by ``<NAME>_FILE``. A malformed value stops
start-up with a message that names the variable, never with a traceback deep in a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


class EnvError(ValueError):
    """An environment variable holds a value its setting cannot accept."""


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(name)


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    """Return the variable's value, or ``default`` when it is unset."""
    value = _raw(name, environ)
    return default if value is None else value


def env_bool(name: str, default: bool = False, *, environ: Mapping[str, str] | None = None) -> bool:
    """Return a boolean; only the usual words (1/0, true/false, yes/no, on/off) are accepted."""
    value = _raw(name, environ)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise EnvError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Return an integer within ``[minimum, maximum]``, or ``default`` when unset."""
    value = _raw(name, environ)
    if value is None or value.strip() == "":
        number = default
    else:
        try:
            number = int(value.strip())
        except ValueError:
            raise EnvError(f"{name} must be a whole number; got {value!r}") from None
    if minimum is not None and number < minimum:
        raise EnvError(f"{name} must be at least {minimum}; got {number}")
    if maximum is not None and number > maximum:
        raise EnvError(f"{name} must be at most {maximum}; got {number}")
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Return a comma-separated list with blanks dropped, or ``default`` when unset."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """Return a secret from ``NAME`` or from the file named by ``NAME_FILE``.

    Setting both is an error, so that an operator never wonders which one won. Trailing newlines
    of the file are stripped. The value is never echoed in an error message.
    """
    direct = _raw(name, environ)
    file_name = _raw(f"{name}_FILE", environ)
    if direct is not None and file_name is not None:
        raise EnvError(f"set {name} or {name}_FILE, not both")
    if file_name is not None:
        try:
            return Path(file_name).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise EnvError(
                f"{name}_FILE names {file_name!r}, which cannot be read: {exc.strerror}"
            ) from None
    return direct


def env_json(name: str, default: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    """Return JSON from ``NAME`` or from the file named by ``NAME_FILE``, or ``default``."""
    text = env_secret(name, environ=environ)
    if text is None or text.strip() == "":
        return default
    source = f"{name}_FILE" if _raw(f"{name}_FILE", environ) is not None else name
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnvError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
