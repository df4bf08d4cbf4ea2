from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from vault.tenants.models import Role
from vault.tokens.models import ApiToken


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    prefix = serializers.CharField(read_only=True, help_text="Public start of the token.")
    user = serializers.EmailField(source="user.email", read_only=True, allow_null=True)
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields: tuple[str, ...] = (
            "id",
            "name",
            "role",
            "prefix",
            "user",
            "created_at",
            "expires_at",
            "revoked",
            "revoked_at",
            "last_used_at",
        )
        read_only_fields: tuple[str, ...] = fields

    def get_revoked(self, obj: ApiToken) -> bool:
        return obj.revoked_at is not None


class ApiTokenCreateSerializer(serializers.Serializer[ApiToken]):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=Role.choices)
    lifetime_days = serializers.IntegerField(
        min_value=1, max_value=settings.VAULT_TOKEN_MAX_DAYS, required=False
    )


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The token; shown only in this answer.")

    class Meta(ApiTokenSerializer.Meta):
        fields = (*ApiTokenSerializer.Meta.fields, "token")
        read_only_fields = fields
