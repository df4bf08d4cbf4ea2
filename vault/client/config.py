"""Where ``cvault`` keeps its configuration, and how it reads and writes it.

The configuration directory is ``$CVAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cvault``, else
``~/.config/cvault``. It is created with mode 0700 and every file in it is written atomically
with mode 0600:

- ``login.json``: ``{"url", "token", "ca_file"}``, written by ``cvault login``.
- ``keys.json``: the user's key backends (kind, options, key id), the wrapped name secret; PINs
  and passphrases never, only the paths of the files that hold them.
- ``local/``: the keystore and key file of ``--backend local`` (unless placed elsewhere).

``CVAULT_URL`` and ``CVAULT_TOKEN`` override ``login.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault.client.errors import ConfigurationError, NotLoggedIn

LOGIN_FILE = "login.json"
KEYS_FILE = "keys.json"


def config_dir() -> Path:
    """The configuration directory (not created here).

    Returns:
        ``$CVAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cvault``, else ``~/.config/cvault``.
    """
    explicit = os.environ.get("CVAULT_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "cvault"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it private (0700).

    Raises:
        ConfigurationError: it cannot be created or is not a directory.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the directory {path} ({exc.strerror})") from exc
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with mode 0600, in a 0700 directory.

    Security: the file never exists with wider permissions, and a crash leaves either the old or
    the new content, never a mix.

    Raises:
        ConfigurationError: the file cannot be written.
    """
    ensure_dir(path.parent)
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path} ({exc.strerror})") from exc


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if the file does not exist.

    Raises:
        ConfigurationError: the file is unreadable or not a JSON object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path} ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} does not hold a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``write_private`` of ``data`` as indented JSON."""
    write_private(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class Login:
    """Where the server is and the API token to present to it.

    ``repr`` never shows the token.
    """

    url: str
    token: str
    ca_file: str | None = None

    def __repr__(self) -> str:
        return f"Login(url={self.url!r}, token='***', ca_file={self.ca_file!r})"


def save_login(directory: Path, login: Login) -> Path:
    """Save ``login`` to ``login.json`` (0600) in ``directory``; return the file's path."""
    path = directory / LOGIN_FILE
    data: dict[str, Any] = {"url": login.url, "token": login.token}
    if login.ca_file:
        data["ca_file"] = login.ca_file
    write_json(path, data)
    return path


def load_login(directory: Path) -> Login:
    """The login from ``login.json``, with ``CVAULT_URL``/``CVAULT_TOKEN`` taking precedence.

    Raises:
        NotLoggedIn: no URL or no token from either source.
        ConfigurationError: ``login.json`` is unreadable.
    """
    saved = read_json(directory / LOGIN_FILE) or {}
    url = os.environ.get("CVAULT_URL") or saved.get("url")
    token = os.environ.get("CVAULT_TOKEN") or saved.get("token")
    ca_file = os.environ.get("CVAULT_CA_FILE") or saved.get("ca_file")
    if not isinstance(url, str) or not url or not isinstance(token, str) or not token:
        raise NotLoggedIn(
            "not logged in: run 'cvault login --url URL --token TOKEN' "
            "or set CVAULT_URL and CVAULT_TOKEN"
        )
    return Login(url=url, token=token, ca_file=ca_file if isinstance(ca_file, str) else None)
