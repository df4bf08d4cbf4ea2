from __future__ import annotations

from rest_framework import serializers

from vault.tenants.models import Membership, Role, Tenant


class TenantSerializer(serializers.ModelSerializer[Tenant]):
    kek_cryptoperiod_days = serializers.SerializerMethodField(
        help_text="The cryptoperiod of the tenant's wrapping keys, in days."
    )

    class Meta:
        model = Tenant
        fields = ("slug", "name", "is_active", "created_at", "deduplicate", "kek_cryptoperiod_days")
        read_only_fields = fields

    def get_kek_cryptoperiod_days(self, tenant: Tenant) -> int:
        from vault.tenants.services import tenant_cryptoperiod_days

        return tenant_cryptoperiod_days(tenant)


class TenantUpdateSerializer(serializers.Serializer[Tenant]):
    deduplicate = serializers.BooleanField(
        required=False,
        help_text="Store identical gateway content once (see docs/objects.md for what it leaks).",
    )
    kek_cryptoperiod_days = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Rotate the wrapping keys at least this often (at most the platform's ceiling).",
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
