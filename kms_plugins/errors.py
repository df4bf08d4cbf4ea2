"""The errors of key backends.

Every error a backend raises is a ``KeyBackendError``. ``transient`` says whether the same call may
succeed later without anyone changing anything (a device restarting, a network blip): callers
retry or answer 503 on transient errors, and fail for good on the others. ``code`` is stable and
becomes the API error code. Messages never contain key material, PINs or passphrases.
"""

from __future__ import annotations


class KeyBackendError(Exception):
    """Base of every key-backend error."""

    code = "key_backend_error"
    transient = False


class ConfigurationError(KeyBackendError):
    """The backend's configuration is wrong (unknown or missing option, unreadable file)."""

    code = "key_backend_misconfigured"


class BackendUnavailable(KeyBackendError):
    """The backend cannot be reached or did not answer in time; the call may succeed later."""

    code = "key_backend_unavailable"
    transient = True


class KeyNotFound(KeyBackendError):
    """No key, or no such version of a key, exists in the backend."""

    code = "key_not_found"


class KeyStateError(KeyBackendError):
    """The key's state forbids the operation (a deactivated key cannot wrap, say)."""

    code = "key_state_forbids"


class KeyDestroyed(KeyStateError):
    """The key version was destroyed: nothing it protected can be unwrapped any more."""

    code = "key_destroyed"


class UnwrapFailed(KeyBackendError):
    """A wrapped key did not authenticate: tampered, wrong context, wrong key or version.

    Deliberately vague, like an AEAD's InvalidTag: the caller learns only that it failed.
    """

    code = "unwrap_failed"


class UnsupportedCapability(KeyBackendError):
    """The backend does not offer this operation (signing on a backend that cannot sign)."""

    code = "capability_unsupported"


class InvalidInput(KeyBackendError):
    """The caller passed something no backend accepts (a DEK of the wrong size, a bad context)."""

    code = "key_backend_invalid_input"
