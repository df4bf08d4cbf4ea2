"""Console views: sign-in with a password and a second factor, and the account pages.

Sign-in is two steps. The password step calls ``django.contrib.auth.login``; the session is then
signed in but not verified, and ``console_login_required`` lets it reach only the second-factor
pages. The second step (a TOTP code, or a one-time recovery code) calls ``django_otp.login``.
Every wrong password and every wrong code counts toward the lockout (PCI-DSS 8.3.4).
"""

from __future__ import annotations

from base64 import b32encode
from typing import Any, cast

import segno
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import PasswordChangeView, PasswordResetConfirmView
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse_lazy
from django.utils.decorators import method_decorator
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from vault.accounts.models import User
from vault.accounts.services import login_failure_record, login_success_record
from vault.audit.context import Actor
from vault.audit.models import Outcome
from vault.audit.services import audit_record
from vault.console.decorators import (
    SIGN_IN_FAILED,
    console_login_required,
    has_confirmed_totp,
    is_verified,
    safe_next,
    second_factor_step,
    second_factor_url,
    sign_out_locked,
    with_next,
)
from vault.console.forms import CodeForm, SignInForm
from vault.console.registry import nav_entries
from vault.console.selectors import dashboard_for_tenant
from vault.console.tenancy import READ_ONLY, TenantRequest, tenant_page
from vault.tenants.selectors import memberships_for_user

AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"
RECOVERY_CODE_COUNT = 10
TOTP_DIGITS = 6
TOTP_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"
WRONG_CODE = "That code is not valid. Check the code and try again."
TOO_FAST = "Too many wrong codes in a row. Wait a few seconds for a new code, then try again."


def _password_check(request: HttpRequest, *, email: str, password: str) -> User | None:
    """The user whose password this is, if the account may sign in; else None.

    Every path hashes the password exactly once, so the response time does not tell whether the
    address has an account. A wrong password for an existing account counts toward the lockout;
    a locked account is refused even with the right password (PCI-DSS 8.3.4).
    """
    user = User.objects.filter(email__iexact=email).first()
    anonymous = Actor("anonymous", "", "password")
    if user is None:
        User().set_password(password)  # the hash an existing account would have cost
        user_login_failed.send(sender=__name__, credentials={"email": email}, request=request)
        # An address without an account may be a typo of a password: kept only as an HMAC.
        audit_record(
            "auth.signin.failure",
            outcome=Outcome.FAILURE,
            actor=anonymous,
            details={"reason": "unknown_account"},
            sensitive={"email": email.lower()},
        )
        return None
    password_ok = user.check_password(password)
    if password_ok and user.is_active and not user.is_locked():
        audit_record(
            "auth.signin.success",
            actor=Actor("user", user.email, "password"),
            resource_type="user",
            resource_id=user.email,
            details={"step": "password"},
        )
        return user
    if not password_ok and not user.is_locked():
        login_failure_record(user=user)
    user_login_failed.send(sender=__name__, credentials={"email": email}, request=request)
    reason = "locked" if user.is_locked() else "inactive" if password_ok else "wrong_password"
    audit_record(
        "auth.signin.failure",
        outcome=Outcome.FAILURE,
        actor=anonymous,
        resource_type="user",
        resource_id=user.email,
        details={"reason": reason},
    )
    return None


def _sign_in_complete(request: HttpRequest, user: User, device: Device) -> None:
    """Mark the session verified by ``device`` and clear the failure count."""
    otp_login(request, device)
    # The session just gained privilege: give it a new key, as django.contrib.auth.login does.
    request.session.cycle_key()
    login_success_record(user=user)
    audit_record(
        "auth.mfa.success",
        actor=Actor("user", user.email, "password+totp"),
        resource_type="user",
        resource_id=user.email,
        details={"device": "recovery_code" if isinstance(device, StaticDevice) else "totp"},
    )


def _second_factor_failed(user: User, reason: str) -> None:
    audit_record(
        "auth.mfa.failure",
        outcome=Outcome.FAILURE,
        actor=Actor("user", user.email, "password"),
        resource_type="user",
        resource_id=user.email,
        details={"reason": reason},
    )


def _code_device(user: User, code: str) -> tuple[Device | None, bool]:
    """The confirmed device of ``user`` that accepts ``code`` (recovery codes are consumed).

    The second value says whether every candidate device refused to check the code because of
    django-otp's throttling after recent wrong codes. A six-digit code is tried only against
    authenticator apps and anything else only against recovery codes, so that neither kind of
    code throttles the other kind of device.
    """
    devices: Any
    if code.isdigit() and len(code) == TOTP_DIGITS:
        devices = TOTPDevice.objects.devices_for_user(user, confirmed=True)
    else:
        devices = StaticDevice.objects.devices_for_user(user, confirmed=True)
    with transaction.atomic():
        candidates = list(devices.select_for_update())
        throttled = bool(candidates)
        for device in candidates:
            allowed, _ = device.verify_is_allowed()
            throttled = throttled and not allowed
            if allowed and device.verify_token(code):
                return cast(Device, device), False
    return None, throttled


def _recovery_codes_replace(user: User) -> list[str]:
    """Give ``user`` a fresh set of recovery codes; every earlier code stops working."""
    with transaction.atomic():
        device = StaticDevice.objects.filter(user=user).order_by("pk").first()
        if device is None:
            device = StaticDevice.objects.create(
                user=user, name=RECOVERY_DEVICE_NAME, confirmed=True
            )
        StaticDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        device.token_set.all().delete()
        codes: list[str] = []
        while len(codes) < RECOVERY_CODE_COUNT:
            token = StaticToken.random_token()
            if token not in codes:
                codes.append(token)
        StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
        if not device.confirmed:
            device.confirmed = True
            device.save(update_fields=["confirmed"])
    return codes


def _recovery_codes_page(request: HttpRequest, codes: list[str], continue_url: str) -> HttpResponse:
    return render(
        request,
        "console/recovery_codes.html",
        {"codes": codes, "continue_url": continue_url},
    )


@never_cache
@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request)
    if is_verified(request):
        return HttpResponseRedirect(next_url or resolve_url("console:home"))
    form = SignInForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        user = _password_check(
            request, email=form.cleaned_data["email"], password=form.cleaned_data["password"]
        )
        if user is not None:
            login(request, user, backend=AUTH_BACKEND)
            return HttpResponseRedirect(second_factor_url(user, next_url))
        form.add_error(None, SIGN_IN_FAILED)
    return render(request, "console/login.html", {"form": form, "next": next_url})


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
@second_factor_step
def verify(request: HttpRequest) -> HttpResponse:
    user = cast(User, request.user)
    next_url = safe_next(request)
    if not has_confirmed_totp(user):
        return HttpResponseRedirect(with_next("console:enrol", next_url))
    form = CodeForm(request.POST if request.method == "POST" else None, allow_recovery=True)
    if form.is_bound and form.is_valid():
        device, throttled = _code_device(user, form.cleaned_data["code"])
        if device is not None:
            _sign_in_complete(request, user, device)
            if isinstance(device, StaticDevice):
                left = device.token_set.count()
                messages.warning(
                    request,
                    f"You signed in with a recovery code; {left} of them are left. "
                    "Generate new ones if you are running low.",
                )
            return HttpResponseRedirect(next_url or resolve_url("console:home"))
        # Even a code that throttling kept from being checked is a failed attempt.
        _second_factor_failed(user, "throttled" if throttled else "wrong_code")
        if login_failure_record(user=user):
            return sign_out_locked(request)
        form.add_error("code", TOO_FAST if throttled else WRONG_CODE)
    return render(request, "console/verify.html", {"form": form, "next": next_url})


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
@second_factor_step
def enrol(request: HttpRequest) -> HttpResponse:
    """Set up an authenticator app: the second factor every console user must have."""
    user = cast(User, request.user)
    next_url = safe_next(request)
    if has_confirmed_totp(user):
        return HttpResponseRedirect(with_next("console:verify", next_url))
    # The same unconfirmed device across reloads, so the secret does not change under the user.
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(
            user=user, name=TOTP_DEVICE_NAME, confirmed=False, digits=TOTP_DIGITS
        )
    form = CodeForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        code = form.cleaned_data["code"]
        if code.isdigit() and device.verify_token(code):
            with transaction.atomic():
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                TOTPDevice.objects.filter(user=user, confirmed=False).delete()
                codes = _recovery_codes_replace(user)
            _sign_in_complete(request, user, device)
            return _recovery_codes_page(request, codes, next_url or resolve_url("console:home"))
        _second_factor_failed(user, "wrong_enrolment_code")
        if login_failure_record(user=user):
            return sign_out_locked(request)
        form.add_error("code", WRONG_CODE)
    secret = b32encode(device.bin_key).decode("ascii")
    # segno builds the SVG from the provisioning URI alone; it holds no user-controlled markup.
    qr_svg = segno.make(device.config_url, error="m").svg_inline(
        scale=4, title="QR code for your authenticator app"
    )
    context = {
        "form": form,
        "next": next_url,
        "qr_svg": mark_safe(qr_svg),  # noqa: S308
        "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
    }
    return render(request, "console/enrol.html", context)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        audit_record("auth.signout", resource_type="user", resource_id=request.user.email)
    logout(request)
    messages.info(request, "You have signed out.")
    return redirect("console:login")


@never_cache
@console_login_required
def home(request: HttpRequest) -> HttpResponse:
    """The person's tenants; straight to the dashboard when there is only one."""
    memberships = list(
        memberships_for_user(user=cast(User, request.user)).filter(tenant__is_active=True)
    )
    if len(memberships) == 1:
        return redirect("console:dashboard", slug=memberships[0].tenant.slug)
    return render(request, "console/home.html", {"memberships": memberships})


@never_cache
@tenant_page(READ_ONLY)
def dashboard(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant at a glance, each section only for the roles its API lets read the same data."""
    board = dashboard_for_tenant(tenant=request.tenant, role=request.role)
    links = []
    if board.empty:  # nothing to show: point to the pages the role can use instead
        links = [
            (entry.label, entry.url(request.tenant.slug))
            for entry in nav_entries(role=request.role)
            if entry.url_name != "console:dashboard"
        ]
    context = {"dashboard": board, "links": links}
    return render(request, "console/dashboard.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
@console_login_required
def recovery_codes(request: HttpRequest) -> HttpResponse:
    """Replace the recovery codes; the new ones are shown once, in the answer to the POST."""
    user = cast(User, request.user)
    if request.method == "POST":
        codes = _recovery_codes_replace(user)
        return _recovery_codes_page(request, codes, resolve_url("console:home"))
    left = StaticToken.objects.filter(device__user=user).count()
    return render(request, "console/recovery_regenerate.html", {"left": left})


@method_decorator(console_login_required, name="dispatch")
class PasswordChange(PasswordChangeView):
    """Change one's password (PCI-DSS 8.3.6 and 8.3.7 through AUTH_PASSWORD_VALIDATORS)."""

    template_name = "console/password_change.html"
    success_url = reverse_lazy("console:home")

    def form_valid(self, form: PasswordChangeForm) -> HttpResponse:
        with transaction.atomic():
            response = super().form_valid(form)
            user = cast(User, self.request.user)
            audit_record("user.password.change", resource_type="user", resource_id=user.email)
        messages.success(self.request, "Your password has been changed.")
        return response

    def form_invalid(self, form: PasswordChangeForm) -> HttpResponse:
        # A wrong current password is a failed authentication like any other (PCI-DSS 8.3.4).
        if form.has_error("old_password", "password_incorrect") and login_failure_record(
            user=cast(User, self.request.user)
        ):
            return sign_out_locked(self.request)
        return super().form_invalid(form)


class PasswordSetup(PasswordResetConfirmView):
    """The one-time link from ``vault.accounts.services.password_setup_url``."""

    template_name = "console/password_setup.html"
    success_url = reverse_lazy("console:login")

    def form_valid(self, form: SetPasswordForm[Any]) -> HttpResponse:
        with transaction.atomic():
            response = super().form_valid(form)
            audit_record(
                "user.password.change",
                actor=Actor("user", form.user.email, "setup_link"),
                resource_type="user",
                resource_id=form.user.email,
                details={"via": "setup_link"},
            )
        messages.success(self.request, "Your password is set. Sign in with it now.")
        return response
