from __future__ import annotations

import base64
from typing import Any

from rest_framework import serializers

from vault.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    id = serializers.UUIDField(source="uuid", read_only=True)
    index = serializers.SerializerMethodField(help_text="Leaf index; null until integrated.")
    leaf = serializers.SerializerMethodField(help_text="The signed canonical JSON, base64.")

    class Meta:
        model = AuditEvent
        fields = (
            "id",
            "time",
            "type",
            "outcome",
            "actor_kind",
            "actor_id",
            "auth",
            "ip",
            "user_agent",
            "request_id",
            "resource_type",
            "resource_id",
            "index",
            "leaf",
        )
        read_only_fields = fields

    def get_index(self, event: AuditEvent) -> int | None:
        entry = getattr(event, "leaf_entry", None)
        return entry.index if entry is not None else None

    def get_leaf(self, event: AuditEvent) -> str:
        return base64.b64encode(bytes(event.leaf)).decode("ascii")


class CheckpointSerializer(serializers.Serializer[Any]):
    origin = serializers.CharField()
    size = serializers.IntegerField()
    note = serializers.CharField(help_text="The signed note (C2SP tlog-checkpoint).")


class SigningKeySerializer(serializers.Serializer[Any]):
    vkey = serializers.CharField(help_text="<name>+<key id hex>+base64(0x02 || SPKI)")


class SigningKeysSerializer(serializers.Serializer[Any]):
    origin = serializers.CharField()
    keys = SigningKeySerializer(many=True)


class ConsistencyProofSerializer(serializers.Serializer[Any]):
    from_size = serializers.IntegerField()
    to = serializers.IntegerField()
    proof = serializers.ListField(child=serializers.CharField())

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["from"] = data.pop("from_size")
        return data


class InclusionProofSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField()
    size = serializers.IntegerField()
    proof = serializers.ListField(child=serializers.CharField())
    checkpoint = serializers.CharField()
