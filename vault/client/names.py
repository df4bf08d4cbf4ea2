"""Encrypted object names for client-side mode.

The server must not learn a client-side object's name, yet ``cvault ls`` and ``cvault get NAME``
must work. The name stored on the server is::

    "n1." || base64url(AES-SIV(K_name, pad(name), associated data = "cvault/names/v1"))

``K_name`` (64 bytes, AES-256-SIV) is derived by HKDF-SHA256 from a 32-byte name secret that
``cvault key init`` generates and keeps only wrapped by the user's own key backend(s).

Why this construction:

- AES-SIV (RFC 5297) is a deterministic AEAD: one name always gives the same server-side name,
  so ``get NAME`` computes it and asks for it exactly, and the server's one-live-object-per-name
  rule still prevents two objects of the same name. Its synthetic IV authenticates the name: a
  forged or altered server-side name fails to decrypt (and ``ls`` skips it).
- ``pad`` (ISO/IEC 7816-4: a 0x80 byte, then zeros to a multiple of 16 bytes) hides a name's
  exact length: the server sees it only to within 16 bytes.

What the server still learns (also in ``docs/cli.md``): that two client-side objects, or an
object deleted and created again, have equal names (determinism); each name's length rounded
up to 16 bytes; and how many objects there are. It never learns a name, a prefix of one, or any
relation between different names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.client.errors import InvalidName

PREFIX = "n1."
NAME_SECRET_SIZE = 32
MAX_NAME_BYTES = 512
PAD_BLOCK = 16
_ASSOCIATED = b"cvault/names/v1"
_INFO = b"cvault/names/v1/aes-siv-key"
SERVER_NAME_LIMIT = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_name(name: str) -> bytes:
    """Validate an object name and return its UTF-8 bytes.

    Names are 1 to 512 bytes of UTF-8 without control characters.

    Raises:
        InvalidName: the name is empty, too long, or holds a control character.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("an object name cannot be empty")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidName("an object name cannot contain control characters")
    encoded = name.encode("utf-8", errors="strict")
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidName(f"an object name is at most {MAX_NAME_BYTES} bytes of UTF-8")
    return encoded


def _pad(data: bytes) -> bytes:
    padded = data + b"\x80"
    return padded + b"\0" * (-len(padded) % PAD_BLOCK)


def _unpad(data: bytes) -> bytes | None:
    stripped = data.rstrip(b"\0")
    if not stripped.endswith(b"\x80") or len(data) % PAD_BLOCK:
        return None
    return stripped[:-1]


class NameCipher:
    """Turns object names into server-side names and back, under one user's name secret.

    Security: deterministic authenticated encryption (AES-SIV). Without the name secret, a
    server-side name reveals only its length to within 16 bytes; equal names give equal
    server-side names. Decryption authenticates, so a name the server made up or altered is
    rejected, never shown.
    """

    def __init__(self, secret: bytes) -> None:
        """Args:
            secret: the 32-byte name secret (unwrapped by the user's key backend).

        Raises:
            ValueError: the secret is not 32 bytes.
        """
        if len(secret) != NAME_SECRET_SIZE:
            raise ValueError(f"the name secret must be {NAME_SECRET_SIZE} bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_INFO).derive(secret)
        self._siv = AESSIV(key)

    def __repr__(self) -> str:
        return "<NameCipher>"

    def encrypt(self, name: str) -> str:
        """The server-side name of ``name``: always the same for the same name and secret.

        Raises:
            InvalidName: see ``check_name``.
        """
        sealed = self._siv.encrypt(_pad(check_name(name)), [_ASSOCIATED])
        return PREFIX + _b64(sealed)

    def decrypt(self, server_name: str) -> str | None:
        """The real name behind a server-side name, or None.

        Returns:
            None when ``server_name`` is not one of this format, was made under another secret,
            or was altered (it fails to authenticate).
        """
        if not server_name.startswith(PREFIX):
            return None
        try:
            sealed = _unb64(server_name[len(PREFIX) :])
            padded = self._siv.decrypt(sealed, [_ASSOCIATED])
        except (InvalidTag, ValueError, binascii.Error):
            return None
        raw = _unpad(padded)
        if raw is None:
            return None
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        try:
            canonical = self.encrypt(name)
        except InvalidName:
            return None
        return name if canonical == server_name else None


def name_binding(server_name: str) -> str:
    """A short value binding a data key's wrap to the object's (encrypted) name.

    ``cvault`` adds it to the context its key backend wraps each DEK under (the envelope's own
    context, which the server checks, stays exactly ``next_context``). A server that answers a
    name's lookup with another of the user's objects is then caught: the stanza fails to unwrap.
    """
    return _b64(hashlib.sha256(server_name.encode("utf-8")).digest())
