"""Bearer-token authentication with throttling of failed attempts."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from vault.api.principal import Principal
from vault.audit.context import Actor
from vault.audit.models import Outcome
from vault.audit.services import audit_record
from vault.tokens.services import TokenRejected, token_authenticate

logger = logging.getLogger(__name__)


class AuthenticationThrottled(exceptions.Throttled):
    default_code = "authentication_throttled"
    default_detail = "Too many failed authentication attempts from this address; try again later."


class InvalidToken(exceptions.AuthenticationFailed):
    default_code = "invalid_token"
    default_detail = "The bearer token is invalid, expired or revoked."


def client_ip(request: Request) -> str:
    """The caller's address as seen by this process (a trusted proxy sets REMOTE_ADDR)."""
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _failure_key(ip: str) -> str:
    return f"authfail:{ip}"


def _failures(ip: str) -> int:
    return int(cache.get(_failure_key(ip), 0))


def _record_failure(ip: str) -> None:
    key = _failure_key(ip)
    window = settings.VAULT_AUTH_FAILURE_WINDOW
    if not cache.add(key, 1, timeout=window):
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, timeout=window)


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer cvt_...``.

    Failed attempts are counted per client address; past ``VAULT_AUTH_FAILURE_LIMIT`` within
    ``VAULT_AUTH_FAILURE_WINDOW_SECONDS`` the address gets 429 before any token is checked.
    """

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[Principal, object] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword:
            return None
        ip = client_ip(request)
        if _failures(ip) >= settings.VAULT_AUTH_FAILURE_LIMIT:
            raise AuthenticationThrottled(wait=settings.VAULT_AUTH_FAILURE_WINDOW)
        if len(header) != 2:
            _record_failure(ip)
            raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
        try:
            clear = header[1].decode("ascii")
        except UnicodeDecodeError:
            _record_failure(ip)
            raise InvalidToken() from None
        try:
            token = token_authenticate(clear=clear, ip=ip)
        except TokenRejected as exc:
            _record_failure(ip)
            logger.info("API authentication failed from %s: %s", ip, exc.reason)
            # The presented token goes in only as an HMAC: it may be a real one, mistyped.
            audit_record(
                "auth.token.failure",
                outcome=Outcome.FAILURE,
                actor=Actor("anonymous", "", "token"),
                request=request._request,
                details={"reason": exc.reason},
                sensitive={"token": clear},
            )
            raise InvalidToken() from None
        principal = Principal(token=token, tenant=token.tenant, role=token.role, user=token.user)
        return principal, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="ciphervault"'
