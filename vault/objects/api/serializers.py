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

    def get_latest_version(self, obj: StoredObject) -> dict[str, Any] | None:
        latest = obj.versions.order_by("-number").first()
        return dict(ObjectVersionSerializer(latest).data) if latest else None

    def get_next_context(self, obj: StoredObject) -> dict[str, str]:
        from vault.objects.services import _next_number, version_context

        return version_context(obj, _next_number(obj))


class StoredObjectCreateSerializer(serializers.Serializer[StoredObject]):
    name = serializers.CharField(max_length=1024)
    mode = serializers.ChoiceField(choices=ObjectMode.choices, default=ObjectMode.GATEWAY)
    content_type = serializers.CharField(max_length=255, default="application/octet-stream")
