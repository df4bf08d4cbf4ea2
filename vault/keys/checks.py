"""System checks for the key backends: misconfiguration stops start-up, with a stable id."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from kms_plugins.config import backend_class, validate_config
from kms_plugins.errors import ConfigurationError
from kms_plugins.types import Capability


@register("keys")
def check_key_backends(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    config = settings.VAULT_KEY_BACKENDS
    try:
        validate_config(config)
    except ConfigurationError as exc:
        return [Error(str(exc), hint="See docs/key-backends.md.", id="keys.E001")]
    can_sign: dict[str, bool] = {}
    for alias, entry in config.items():
        try:
            cls = backend_class(entry["BACKEND"])
        except ConfigurationError as exc:
            problems.append(Error(str(exc), id="keys.E002"))
            continue
        try:
            backend = cls(alias, entry.get("OPTIONS", {}))
        except ConfigurationError as exc:
            problems.append(Error(str(exc), id="keys.E003"))
            continue
        can_sign[alias] = Capability.SIGN in backend.capabilities
        for problem in backend.config_problems():
            problems.append(Error(f"key backend {alias!r}: {problem}", id="keys.E004"))
        if settings.PRODUCTION and not backend.production_safe:
            problems.append(
                Error(
                    f"key backend {alias!r} ({backend.kind}) is not production-safe",
                    hint="Use an HSM (pkcs11), a TPM (tpm) or your KMS (kmip) in production.",
                    id="keys.E005",
                )
            )
    signing = settings.VAULT_SIGNING_BACKEND
    if signing and signing not in config:
        problems.append(
            Error(
                f"VAULT_SIGNING_BACKEND names no configured backend ({signing!r})", id="keys.E006"
            )
        )
    elif signing and not can_sign.get(signing, True):
        problems.append(Error(f"VAULT_SIGNING_BACKEND {signing!r} cannot sign", id="keys.E007"))
    if settings.PRODUCTION and not config:
        problems.append(
            Warning(
                "No key backends are configured: no tenant can be bound to a key backend.",
                hint="Set VAULT_KEY_BACKENDS to your HSM, TPM or KMS; see docs/key-backends.md.",
                id="keys.W002",
            )
        )
    if config and not signing and not all(can_sign.values()):
        problems.append(
            Warning(
                "A key backend cannot sign and VAULT_SIGNING_BACKEND is not set: tenants bound "
                "to it will have no key for their audit checkpoints and reports.",
                id="keys.W001",
            )
        )
    return problems
