from __future__ import annotations

from typing import Any

from rest_framework import serializers

from vault.objects.models import ObjectMode, ObjectVersion, StoredObject


class ObjectVersionSerializer(serializers.ModelSerializer[ObjectVersion]):
    class Meta:
        model = ObjectVersion
        fields = ("number", "size", "body_size", "content_type", "created_at")
        read_only_fields = fields


class StoredObjectSerializer(serializers.ModelSerializer[StoredObject]):
    latest_version = serializers.SerializerMethodField()
    next_context = serializers.SerializerMethodField(
        help_text="The encryption context the next version's envelope must carry (client-side)."
    )

    class Meta:
        model = StoredObject
        fields = (
            "id",
            "name",
            "mode",
            "content_type",
            "created_at",
            "latest_version",
            "next_context",
        )
        read_only_fields = fields

    @staticmethod
    def _latest(obj: StoredObject) -> ObjectVersion | None:
        # Lists prefetch the versions newest first; a single object may not have them loaded.
        versions = list(obj.versions.all())
        return max(versions, key=lambda v: v.number) if versions else None

    def get_latest_version(self, obj: StoredObject) -> dict[str, Any] | None:
        latest = self._latest(obj)
        return dict(ObjectVersionSerializer(latest).data) if latest else None

    def get_next_context(self, obj: StoredObject) -> dict[str, str]:
        from vault.objects.services import version_context

        latest = self._latest(obj)
        return version_context(obj, (latest.number if latest else 0) + 1)


class StoredObjectCreateSerializer(serializers.Serializer[StoredObject]):
    name = serializers.CharField(max_length=1024)
    mode = serializers.ChoiceField(choices=ObjectMode.choices, default=ObjectMode.GATEWAY)
    content_type = serializers.CharField(max_length=255, default="application/octet-stream")
