from __future__ import annotations

from rest_framework import serializers

from vault.tenants.models import Membership, Role, Tenant


class TenantSerializer(serializers.ModelSerializer[Tenant]):
    class Meta:
        model = Tenant
        fields = ("slug", "name", "is_active", "created_at", "deduplicate")
        read_only_fields = fields


class TenantUpdateSerializer(serializers.Serializer[Tenant]):
    deduplicate = serializers.BooleanField(
        help_text="Store identical gateway content once (see docs/objects.md for what it leaks)."
    )


class MembershipSerializer(serializers.ModelSerializer[Membership]):
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields: tuple[str, ...] = ("id", "email", "role", "created_at")
        read_only_fields: tuple[str, ...] = ("id", "email", "created_at")


class MembershipCreateSerializer(serializers.Serializer[Membership]):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)


class MembershipUpdateSerializer(serializers.Serializer[Membership]):
    role = serializers.ChoiceField(choices=Role.choices)
