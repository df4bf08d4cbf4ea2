"""The errors of the envelope format.

Every error is an ``EnvelopeError``. Two families matter to callers:

- ``EnvelopeFormatError``: the header is malformed or names a version or algorithm this code
  does not know. Nothing was decrypted; the bytes are not an envelope we can read.
- ``AuthenticationFailed``: the envelope is well formed but does not authenticate: the body or
  header was tampered with, the key is wrong, the context is wrong, or the body is truncated or
  carries trailing data. No plaintext of the failing segment is ever released.

Messages name the condition (never key material or plaintext); ``code`` is stable and may become
an API error code.
"""

from __future__ import annotations


class EnvelopeError(Exception):
    """Base of every envelope error."""

    code = "envelope_error"


class EnvelopeFormatError(EnvelopeError):
    """The envelope header is malformed: a bad magic, a field out of bounds, a bad length."""

    code = "envelope_malformed"


class UnsupportedEnvelope(EnvelopeFormatError):
    """The header names a format version or an algorithm this code does not implement."""

    code = "envelope_unsupported"


class AuthenticationFailed(EnvelopeError):
    """The envelope does not authenticate under this key and context (tampered, wrong key,
    wrong context, truncated, trailing data). Deliberately coarse, like ``InvalidTag``."""

    code = "envelope_authentication_failed"


class NoMatchingStanza(EnvelopeError):
    """No recipient stanza in the header matches the backend or key asked for."""

    code = "envelope_no_matching_stanza"


class InvalidEnvelopeParameters(EnvelopeError, ValueError):
    """The caller passed something the format cannot encode: a DEK of the wrong size, a segment
    size out of bounds, no stanzas, a field too long, an object too large for its segment size."""

    code = "envelope_invalid_parameters"
