from __future__ import annotations

from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "vault.lifecycle"
    label = "lifecycle"
    verbose_name = "Key lifecycle"
    default_auto_field = "django.db.models.BigAutoField"
