from __future__ import annotations

from typing import Any

from rest_framework import serializers

from vault.objects.models import ObjectMode, ObjectVersion, StoredObject, UploadSession


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


class UploadSessionSerializer(serializers.ModelSerializer[UploadSession]):
    object = serializers.IntegerField(source="object_id", read_only=True)
    offset = serializers.IntegerField(
        source="received", read_only=True, help_text="Where the next part starts."
    )
    complete = serializers.SerializerMethodField()
    envelope_context = serializers.SerializerMethodField(
        help_text="Client-side uploads: the encryption context the envelope must carry."
    )
    version = ObjectVersionSerializer(read_only=True, allow_null=True)

    class Meta:
        model = UploadSession
        fields = (
            "id",
            "object",
            "length",
            "offset",
            "complete",
            "envelope_context",
            "content_type",
            "created_at",
            "expires_at",
            "version",
        )
        read_only_fields = fields

    def get_complete(self, session: UploadSession) -> bool:
        return session.version_id is not None

    def get_envelope_context(self, session: UploadSession) -> dict[str, str] | None:
        from vault.objects.services import version_context

        if session.number is None:
            return None
        return version_context(session.object, session.number)


class UploadSessionCreateSerializer(serializers.Serializer[UploadSession]):
    object = serializers.IntegerField(min_value=1)
    length = serializers.IntegerField(
        min_value=1, help_text="Total bytes: the plaintext (gateway) or the envelope (client)."
    )
    content_type = serializers.CharField(max_length=255, required=False)
