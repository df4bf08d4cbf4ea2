"""The encryption context and the associated data that binds a wrapped key to it."""

from __future__ import annotations

import json
from collections.abc import Mapping

from kms_plugins.errors import InvalidInput
from kms_plugins.types import KeyRef

MAX_CONTEXT_BYTES = 4096
WRAP_AAD_LABEL = b"ciphervault/wrap/v1"


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The context as canonical bytes: JSON, keys sorted, no spaces, UTF-8.

    Raises:
        InvalidInput: not a mapping of non-empty strings to strings, or larger than 4 KiB.
    """
    if not isinstance(context, Mapping):
        raise InvalidInput("the encryption context must be a mapping of strings to strings")
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidInput("the encryption context must map non-empty strings to strings")
    encoded = json.dumps(
        dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"the encryption context is larger than {MAX_CONTEXT_BYTES} bytes")
    return encoded


def wrap_aad(ref: KeyRef, mechanism: str, context: Mapping[str, str]) -> bytes:
    """Associated data for a wrap: the key version, the mechanism and the context.

    Binding the version and mechanism means a wrapped key relabelled as another version, or as
    another mechanism, fails to unwrap; binding the context means it opens only for the object it
    was made for.
    """
    header = json.dumps([ref.key_id, ref.version, mechanism], separators=(",", ":")).encode()
    return b"\0".join([WRAP_AAD_LABEL, header, canonical_context(context)])
