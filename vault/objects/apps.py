from __future__ import annotations

from django.apps import AppConfig


class ObjectsConfig(AppConfig):
    name = "vault.objects"
    label = "objects"
    verbose_name = "Objects"
