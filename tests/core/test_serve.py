"""`manage.py serve`, what `make run` starts: a fresh embedded instance, end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.core.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LINE = re.compile(r"^API token: (cvt_\S+)$")

pytestmark = pytest.mark.slow


class Server:
    """The serve command in a subprocess, with its output collected as it arrives."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        """Args:
        data_dir: the instance's VAULT_DATA_DIR (SQLite, storage, keystore).
        port: where it listens.
        env: further environment (DATABASE_URL and REDIS_URL are dropped unless given here).
        """
        environment = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")
        }
        environment.update(
            {"VAULT_DATA_DIR": str(data_dir), "PORT": str(port), "PYTHONUNBUFFERED": "1"}
        )
        environment.update(env or {})
        env = environment
        self.port = port
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def token(self) -> str:
        wait_until(lambda: any(TOKEN_LINE.match(x) for x in self.lines), what="the API token line")
        return next(m.group(1) for x in self.lines if (m := TOKEN_LINE.match(x)))

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_ready(self) -> None:
        wait_until(lambda: self.get("/healthz")[0] == 200, timeout=60, what="the server to answer")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def test_serve_sets_up_the_demo_tenant_and_prints_a_working_token(tmp_path) -> None:
    port = free_port()
    first = Server(tmp_path, port)
    try:
        token = first.token()
        first.wait_ready()
        status, body = first.get("/api/v1/tenant/", token)
        assert status == 200
        assert body["slug"] == "demo"
        status, body = first.get("/api/v1/tenant/")
        assert status == 401
        assert body["error"]["code"] == "not_authenticated"
        output = "\n".join(first.lines)
        assert f"http://127.0.0.1:{port}/" in output
        assert "Login: owner@demo.example" in output
        assert re.search(r"^Password: \S{12,}", output, re.M)
        wait_until(
            lambda: any(
                "scheduled task vault.core.clear_expired_sessions ran" in x for x in first.lines
            ),
            what="the embedded scheduler to run the session clean-up",
        )
        assert not any("failed" in line for line in first.lines)
    finally:
        first.stop()
    others = [line for line in first.lines if not line.startswith("API token: ")]
    assert any("/api/v1/tenant/" in line for line in others), "the access log records requests"
    assert not any(token in line for line in others), "the token appears only where it is printed"
    assert (tmp_path / "vault.sqlite3").exists()

    second = Server(tmp_path, port)
    try:
        fresh = second.token()
        second.wait_ready()
        assert fresh != token
        assert second.get("/api/v1/tenant/", fresh)[0] == 200
        assert second.get("/api/v1/tenant/", token)[0] == 401, "the previous run's token is revoked"
        output = "\n".join(second.lines)
        assert not re.search(r"^Password: \S{12,}", output, re.M), "the password is shown only once"
    finally:
        second.stop()
