from __future__ import annotations

from django.urls import path
from django.views.generic import RedirectView

from vault.console import views, views_data, views_keys, views_people

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
    # Keys, rotation campaigns and dual control (vault.console.views_keys).
    path("console/t/<slug:slug>/keys/", views_keys.keys, name="keys"),
    path("console/t/<slug:slug>/approvals/", views_keys.approvals_inbox, name="approvals"),
    path("console/t/<slug:slug>/members/", views_people.members, name="members"),
    path("console/t/<slug:slug>/tokens/", views_people.tokens, name="tokens"),
    path("console/t/<slug:slug>/objects/", views_data.objects_list, name="objects"),
    path(
        "console/t/<slug:slug>/objects/<int:pk>/",
        views_data.object_detail,
        name="object_detail",
    ),
    path(
        "console/t/<slug:slug>/objects/<int:pk>/download/",
        views_data.object_download,
        name="object_download",
    ),
    path(
        "console/t/<slug:slug>/objects/<int:pk>/delete/",
        views_data.object_delete,
        name="object_delete",
    ),
    path("console/t/<slug:slug>/audit/", views_data.audit_list, name="audit"),
    path("console/t/<slug:slug>/audit/export/", views_data.audit_export, name="audit_export"),
    path(
        "console/t/<slug:slug>/audit/<uuid:event_id>/",
        views_data.audit_detail,
        name="audit_detail",
    ),
    # Keep this name and its kwargs: vault.accounts.services.password_setup_url reverses it.
    path(
        "console/set-password/<uidb64>/<token>/",
        views.PasswordSetup.as_view(),
        name="password_setup",
    ),
]
