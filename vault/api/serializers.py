"""Serializers shared by every app's API: the error shape."""

from __future__ import annotations

from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer[object]):
    code = serializers.CharField(help_text="Stable, machine-readable error code.")
    message = serializers.CharField(help_text="Human-readable explanation; may change.")
    status = serializers.IntegerField(help_text="The HTTP status code.")
    request_id = serializers.CharField(help_text="Quote it when reporting a problem.")
    details = serializers.JSONField(required=False, help_text="Field errors, when there are any.")


class ErrorSerializer(serializers.Serializer[object]):
    error = ErrorDetailSerializer()
