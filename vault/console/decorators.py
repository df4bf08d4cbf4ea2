"""Access rules for console pages: a password and a verified second factor, always.

``console_login_required`` guards every console page except the sign-in steps themselves
(sign-in, second-factor verification, authenticator enrolment, sign-out and password set-up).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeAlias
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django_otp.plugins.otp_totp.models import TOTPDevice

from vault.accounts.models import User

View: TypeAlias = Callable[..., HttpResponse]

# One message for every refused sign-in, so that no answer tells whether an e-mail address has an
# account or whether that account is locked (PCI-DSS 8.3.4).
SIGN_IN_FAILED = "Sign-in failed, or the account is locked. Try again later or ask an owner."


def is_verified(request: HttpRequest) -> bool:
    """Whether the session's user passed both the password and a second factor (django-otp)."""
    user = request.user
    check = getattr(user, "is_verified", None)
    return bool(user.is_authenticated and check is not None and check())


def has_confirmed_totp(user: User) -> bool:
    return TOTPDevice.objects.devices_for_user(user, confirmed=True).exists()


def safe_next(request: HttpRequest) -> str:
    """The ``next`` parameter if it points into this site, else the empty string."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return ""


def with_next(url_name: str, next_url: str) -> str:
    """The URL of ``url_name`` carrying ``next_url`` along, if there is one."""
    url = resolve_url(url_name)
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def second_factor_url(user: User, next_url: str) -> str:
    """Where a password-only session goes next: verification, or enrolment if it has no app."""
    step = "console:verify" if has_confirmed_totp(user) else "console:enrol"
    return with_next(step, next_url)


def sign_out_locked(request: HttpRequest) -> HttpResponseRedirect:
    """End a session whose account is locked and send it to sign-in with the generic message."""
    logout(request)
    messages.error(request, SIGN_IN_FAILED)
    return HttpResponseRedirect(resolve_url("console:login"))


def console_login_required(view: View) -> View:
    """Let through only a signed-in user with a verified second factor (PCI-DSS 8.4.1, 8.4.2).

    Anonymous visitors go to sign-in with ``?next=``; a session that passed the password but not
    the second factor goes to verification, or to enrolment if the user has no authenticator yet.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), resolve_url("console:login"))
        if not is_verified(request):
            if user.is_locked():
                return sign_out_locked(request)
            return HttpResponseRedirect(second_factor_url(user, request.get_full_path()))
        return view(request, *args, **kwargs)

    return wrapper


def second_factor_step(view: View) -> View:
    """Guard the second-factor pages: a password-only session of an account that is not locked.

    A locked account in the middle of the step is signed out (PCI-DSS 8.3.4); a session that is
    already verified has nothing left to do here and goes on to ``next`` or the console.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            return HttpResponseRedirect(resolve_url("console:login"))
        if is_verified(request):
            return HttpResponseRedirect(safe_next(request) or resolve_url("console:home"))
        if user.is_locked():
            return sign_out_locked(request)
        return view(request, *args, **kwargs)

    return wrapper
