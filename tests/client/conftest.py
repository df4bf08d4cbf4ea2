"""A real ``manage.py serve`` for the ``cvault`` tests, and a way to run ``cvault`` against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.core.helpers import free_port
from tests.core.test_serve import ROOT, Server


@dataclass
class Running:
    """The server of this test module: its URL, the demo owner's token, its data directory."""

    server: Server
    url: str
    token: str
    data_dir: Path


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")


class Cvault:
    """``cvault`` in a subprocess with its own configuration directory."""

    def __init__(self, config_dir: Path, cwd: Path) -> None:
        self.config_dir = config_dir
        self.cwd = cwd

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("CVAULT_", "DJANGO_"))
        }
        environment["CVAULT_CONFIG_DIR"] = str(self.config_dir)
        environment.update(env or {})
        done = subprocess.run(
            [sys.executable, "-m", "vault.client.cli", *args],
            cwd=self.cwd,
            env=environment,
            capture_output=True,
            timeout=120,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = self(*args, env=env)
        assert result.code == 0, f"cvault {' '.join(args)} failed: {result.err}"
        return result


@pytest.fixture(scope="session")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("server")
    port = free_port()
    server = Server(data_dir, port)
    try:
        token = server.token()
        server.wait_ready()
        yield Running(server, f"http://127.0.0.1:{port}", token, data_dir)
    finally:
        server.stop()


def new_client(running: Running, base: Path, *, key: bool = True) -> Cvault:
    """A logged-in ``cvault`` with a fresh configuration directory (and a local key)."""
    base.mkdir(parents=True, exist_ok=True)
    cvault = Cvault(base / "config", base)
    cvault.ok("login", "--url", running.url, "--token", running.token)
    if key:
        cvault.ok("key", "init", "--backend", "local")
    return cvault


@pytest.fixture
def cvault(running: Running, tmp_path: Path) -> Cvault:
    return new_client(running, tmp_path)


__all__ = ["ROOT", "Cvault", "Result", "Running", "new_client"]
