"""The audit tables in the Django admin: readable, never changeable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from vault.audit.models import AuditCheckpoint, AuditEvent


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(_ReadOnly):
    list_display = ("time", "log", "type", "outcome", "actor_id", "resource_type", "resource_id")
    list_filter = ("type", "outcome", "log")
    search_fields = ("actor_id", "resource_id", "request_id")
    exclude = ("leaf",)


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(_ReadOnly):
    list_display = ("log", "size", "created_at")
    list_filter = ("log",)
    exclude = ("root",)
