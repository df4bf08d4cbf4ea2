"""Backends configured by alias, like Django's STORAGES, resolved lazily once per process.

    VAULT_KEY_BACKENDS = {
        "hsm": {"BACKEND": "kms_plugins.pkcs11.Pkcs11KeyBackend",
                "OPTIONS": {"MODULE": "/usr/lib/softhsm/libsofthsm2.so", "TOKEN_LABEL": "vault",
                            "PIN_FILE": "/run/secrets/hsm-pin"}},
    }

Short names stand for the built-in backends: "local", "pkcs11", "tpm", "kmip".
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from kms_plugins.base import KeyBackend
from kms_plugins.errors import ConfigurationError

BUILT_IN = {
    "local": "kms_plugins.local.LocalKeyBackend",
    "pkcs11": "kms_plugins.pkcs11.Pkcs11KeyBackend",
    "tpm": "kms_plugins.tpm.TpmKeyBackend",
    "kmip": "kms_plugins.kmip.KmipKeyBackend",
}


def backend_class(path: str) -> type[KeyBackend]:
    """The backend class named by a dotted path or a built-in short name.

    Raises:
        ConfigurationError: the module or class cannot be imported, or is not a KeyBackend.
    """
    dotted = BUILT_IN.get(path, path)
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"BACKEND {path!r} is not a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"BACKEND {path!r}: cannot import {module_name} ({exc})") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, KeyBackend)):
        raise ConfigurationError(f"BACKEND {path!r} is not a KeyBackend subclass")
    return cls


def validate_config(config: Any) -> None:
    """Check the shape of a backends configuration without instantiating anything."""
    if not isinstance(config, Mapping):
        raise ConfigurationError("the key backends configuration must be a JSON object")
    for alias, entry in config.items():
        if not isinstance(alias, str) or not alias:
            raise ConfigurationError("key backend aliases must be non-empty strings")
        if not isinstance(entry, Mapping) or "BACKEND" not in entry:
            raise ConfigurationError(f"key backend {alias!r} needs a BACKEND")
        extra = set(entry) - {"BACKEND", "OPTIONS"}
        if extra:
            raise ConfigurationError(f"key backend {alias!r}: unknown keys {sorted(extra)}")
        if not isinstance(entry.get("OPTIONS", {}), Mapping):
            raise ConfigurationError(f"key backend {alias!r}: OPTIONS must be an object")


_registries: weakref.WeakSet[KeyBackends] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would never be released in the child.
    for registry in list(_registries):
        registry._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class KeyBackends:
    """The configured backends of this process, each created on first use and then kept."""

    def __init__(self, config: Mapping[str, Mapping[str, Any]]) -> None:
        validate_config(config)
        self._config = {alias: dict(entry) for alias, entry in config.items()}
        self._instances: dict[str, KeyBackend] = {}
        self._lock = threading.Lock()
        _registries.add(self)

    def __contains__(self, alias: object) -> bool:
        return alias in self._config

    def __iter__(self) -> Iterator[str]:
        return iter(self._config)

    def __getitem__(self, alias: str) -> KeyBackend:
        with self._lock:
            if alias not in self._instances:
                if alias not in self._config:
                    raise ConfigurationError(f"no key backend {alias!r} is configured")
                entry = self._config[alias]
                cls = backend_class(entry["BACKEND"])
                self._instances[alias] = cls(alias, entry.get("OPTIONS", {}))
            return self._instances[alias]

    def close_all(self) -> None:
        with self._lock:
            for backend in self._instances.values():
                backend.close()
            self._instances.clear()
