"""The Celery application of the service (the composition root's task wiring)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vault.settings")

app = Celery("vault")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
