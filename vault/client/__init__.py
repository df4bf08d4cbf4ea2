"""The ``cvault`` command line and Python SDK of Ciphervault. Django-free.

It imports only ``kms_plugins`` (the user's key backends) and ``vault.crypto`` (the envelope
format), besides the standard library and ``cryptography``.
"""

from __future__ import annotations

from vault.client.config import Login, config_dir
from vault.client.errors import (
    AuditCheckFailed,
    AuditUnanchored,
    ClientError,
    ConfigurationError,
    DecryptionFailed,
    InvalidName,
    KeyBackendFailure,
    NetworkError,
    NoKeyConfigured,
    NotLoggedIn,
    ObjectNotFound,
    ServerError,
    UnknownLogKey,
    WrongKey,
)
from vault.client.keys import KeyRing, KeySpec
from vault.client.names import NameCipher
from vault.client.sdk import ObjectInfo, Vault

__all__ = [
    "AuditCheckFailed",
    "AuditUnanchored",
    "ClientError",
    "ConfigurationError",
    "DecryptionFailed",
    "InvalidName",
    "KeyBackendFailure",
    "KeyRing",
    "KeySpec",
    "Login",
    "NameCipher",
    "NetworkError",
    "NoKeyConfigured",
    "NotLoggedIn",
    "ObjectInfo",
    "ObjectNotFound",
    "ServerError",
    "UnknownLogKey",
    "Vault",
    "WrongKey",
    "config_dir",
]
