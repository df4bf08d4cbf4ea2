"""Who is acting and from where, for the events recorded during a request or a job.

The middleware binds the current request; API authentication sets ``request.user`` to the
token's principal, the console's to the signed-in user. Jobs and management commands run
without a request and are recorded as the system (``acting_as`` names the job).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "audit_request", default=None
)
_system: contextvars.ContextVar[str] = contextvars.ContextVar("audit_system", default="system")


@dataclass(frozen=True)
class Actor:
    """Who acted: ``kind`` (user, token, system, anonymous), an id, and how they authenticated."""

    kind: str
    id: str
    auth: str


@dataclass(frozen=True)
class Origin:
    """Where the action came from."""

    ip: str = ""
    user_agent: str = ""
    request_id: str = ""


def current_request() -> HttpRequest | None:
    """The request being served in this context, if any."""
    return _request.get()


@contextlib.contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Record events in this block as the system job or command ``name``."""
    token = _system.set(name)
    try:
        yield
    finally:
        _system.reset(token)


def actor_of(request: HttpRequest | None) -> Actor:
    """The actor of a request (or of the running job when there is none)."""
    if request is None:
        return Actor("system", _system.get(), "none")
    user: Any = getattr(request, "user", None)
    token = getattr(user, "token", None)
    if token is not None and hasattr(user, "tenant"):  # an API principal
        person = getattr(user, "user", None)
        if person is not None:
            return Actor("user", str(person.email), f"token:{token.prefix}")
        return Actor("token", str(token.prefix), "token")
    if user is not None and getattr(user, "is_authenticated", False):
        verified = getattr(user, "is_verified", lambda: False)()
        return Actor("user", str(user.email), "password+totp" if verified else "password")
    return Actor("anonymous", "", "none")


_NO_ORIGIN = Origin()


def origin_of(request: HttpRequest | None) -> Origin:
    """The origin of a request (empty for jobs)."""
    if request is None:
        return _NO_ORIGIN
    return Origin(
        ip=str(request.META.get("REMOTE_ADDR") or "")[:64],
        user_agent=str(request.META.get("HTTP_USER_AGENT") or "")[:512],
        request_id=str(getattr(request, "request_id", ""))[:64],
    )


class AuditContextMiddleware:
    """Binds the request for the events recorded while it is served."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)
