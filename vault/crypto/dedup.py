"""Keys and ids of deduplicated content (``docs/objects.md``, "Deduplication"). Django-free.

Identical content of one tenant is stored once. Its id and its data key both derive from the
tenant's secret deduplication key and the content's SHA-256, so:

- within the tenant, the same content always finds the same blob;
- across tenants (different deduplication keys) the same content gets unrelated ids and keys:
  nothing is shared, and no one can learn that another tenant holds a file;
- someone with the database or the storage but without the key cannot test whether a known
  file is stored (a confirmation-of-file attack), because the id is keyed.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
_ID_LABEL = b"ciphervault/v1/dedup/blob-id"
_DEK_LABEL = b"ciphervault/v1/dedup/blob-dek"


def content_id(dedup_key: bytes, content_hash: bytes) -> str:
    """The blob id of content whose SHA-256 is ``content_hash``: 64 hex characters."""
    _check(dedup_key, content_hash)
    return hmac.new(dedup_key, _ID_LABEL + content_hash, hashlib.sha256).hexdigest()


def content_key(dedup_key: bytes, content_hash: bytes) -> bytes:
    """The 32-byte data key of that content's blob."""
    _check(dedup_key, content_hash)
    return HKDF(hashes.SHA256(), length=32, salt=None, info=_DEK_LABEL + content_hash).derive(
        dedup_key
    )


def _check(dedup_key: bytes, content_hash: bytes) -> None:
    if len(dedup_key) != KEY_SIZE or len(content_hash) != hashlib.sha256().digest_size:
        raise ValueError("a 32-byte deduplication key and a SHA-256 digest are needed")
