from __future__ import annotations

from django.urls import path
from django.views.generic import RedirectView

from vault.console import views

app_name = "console"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="console:home", permanent=False), name="root"),
    path("console/", views.home, name="home"),
    path("console/login/", views.login_view, name="login"),
    path("console/login/verify/", views.verify, name="verify"),
    path("console/login/enrol/", views.enrol, name="enrol"),
    path("console/logout/", views.logout_view, name="logout"),
    path("console/password/", views.PasswordChange.as_view(), name="password_change"),
    path("console/recovery-codes/", views.recovery_codes, name="recovery_codes"),
    # Tenant pages: every view under console/t/<slug>/ is a vault.console.tenancy.tenant_page.
    path("console/t/<slug:slug>/", views.dashboard, name="dashboard"),
    # Keep this name and its kwargs: vault.accounts.services.password_setup_url reverses it.
    path(
        "console/set-password/<uidb64>/<token>/",
        views.PasswordSetup.as_view(),
        name="password_setup",
    ),
]
