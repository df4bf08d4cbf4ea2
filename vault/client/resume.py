"""Resumable uploads for ``cvault put``: the server's upload sessions plus a small state file.

A file larger than one part (``CVAULT_PART_SIZE``, 16 MiB by default) is sent in parts through
``/api/v1/uploads/``. The state of an unfinished upload lives in ``uploads/`` in the
configuration directory, one 0600 JSON file per (server, tenant, object, file): the session id,
the file's identity (size, modification time, inode) and, in client-side mode, the envelope's
header, which holds only wrapped copies of the data key. Running the same ``put`` again asks the
server where the upload stands and continues there; a file that changed meanwhile starts over.

Client-side mode continues the same envelope, so the segments of a part sent again must be
sealed from the same plaintext (a GCM nonce must never protect two different plaintexts). Before
each part is sent, the SHA-256 of its plaintext is written to the state file; a resumed part
whose plaintext hashes differently abandons the session and starts a new envelope with a new
data key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vault.client.config import read_json, write_json
from vault.client.errors import ConfigurationError

DEFAULT_PART_SIZE = 16 * 1024 * 1024
STATE_DIR = "uploads"
HASH_CHUNK = 1024 * 1024


def part_size(segment_size: int) -> int:
    """The part size: ``CVAULT_PART_SIZE`` bytes, a whole number of segments.

    Raises:
        ConfigurationError: not a positive multiple of the segment size.
    """
    raw = os.environ.get("CVAULT_PART_SIZE")
    if not raw:
        return DEFAULT_PART_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < segment_size or size % segment_size:
        raise ConfigurationError(
            f"CVAULT_PART_SIZE must be a positive multiple of {segment_size} bytes"
        )
    return size


def file_identity(path: Path, stat: os.stat_result) -> dict[str, Any]:
    """What must not change between an upload and its resumption."""
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
    }


class UploadState:
    """The state file of one upload (see the module's description)."""

    def __init__(self, directory: Path, key: dict[str, Any]) -> None:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.path = directory / STATE_DIR / f"{name}.json"
        self.data: dict[str, Any] = {}

    def load(self, expected: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The saved state if it belongs to the same file, unchanged.

        Returns:
            ``(state, None)``; or ``(None, upload id)`` when a state exists for an earlier
            version of the file (that upload should be abandoned); or ``(None, None)``.

        Raises:
            ConfigurationError: the file is unreadable.
        """
        saved = read_json(self.path)
        if saved is None:
            return None, None
        if any(saved.get(k) != v for k, v in expected.items()):
            return None, str(saved.get("upload") or "") or None
        self.data = saved
        return saved, None

    def save(self, **values: Any) -> None:
        """Merge ``values`` into the state and write it (atomically, 0600)."""
        self.data.update(values)
        write_json(self.path, self.data)

    def remove(self) -> None:
        """Forget the upload."""
        self.data = {}
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigurationError(f"cannot remove {self.path} ({exc.strerror})") from exc


def range_digest(handle: Any, start: int, length: int) -> str:
    """The SHA-256 (hex) of ``length`` bytes of ``handle`` from ``start``."""
    digest = hashlib.sha256()
    handle.seek(start)
    left = length
    while left > 0:
        chunk = handle.read(min(HASH_CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def range_chunks(handle: Any, start: int, length: int, progress: Any) -> Iterator[bytes]:
    """``length`` bytes of ``handle`` from ``start``, in chunks, counted by ``progress``."""
    handle.seek(start)
    left = length
    while left > 0:
        chunk = handle.read(min(256 * 1024, left))
        if not chunk:
            raise OSError("the file shrank during the upload")
        left -= len(chunk)
        if progress is not None:
            progress.update(len(chunk))
        yield chunk


class CountingReader:
    """``read`` of a file, counted by a progress bar."""

    def __init__(self, handle: Any, progress: Any) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int) -> bytes:
        data: bytes = self._handle.read(size)
        if self._progress is not None:
            self._progress.update(len(data))
        return data
