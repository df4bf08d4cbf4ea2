"""A marker written into files uploaded in both modes is found nowhere on the server side."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from pathlib import Path

import pytest

from tests.client.conftest import ROOT, Cvault, Running, new_client
from tests.core.helpers import free_port
from tests.core.test_serve import Server

MARKER = b"CVAULT-MARKER-5e1b0c77-PLAINTEXT"


def test_the_marker_is_nowhere_on_the_server_while_the_data_exists(
    running: Running, cvault: Cvault, tmp_path: Path
) -> None:
    source = tmp_path / "secret.txt"
    source.write_bytes(MARKER * 4096)
    cvault.ok("put", str(source), "client-side-copy")
    cvault.ok("put", "--gateway", str(source), "gateway-copy")
    # The data still exists and reads back, in both modes.
    assert cvault.ok("cat", "client-side-copy").out == MARKER * 4096
    assert cvault.ok("cat", "--gateway", "gateway-copy").out == MARKER * 4096
    # The database (with its WAL), every stored file and the keystore.
    for path in running.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path
    # Everything the server logged so far (access log and application log).
    assert MARKER.decode() not in "\n".join(running.server.lines)


class _RedisMonitor:
    """Every command any client sends to the Redis server, captured as it happens (MONITOR)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self._socket = socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=5
        )
        if parsed.password:
            self._socket.sendall(f"AUTH {parsed.password}\r\n".encode())
        self._socket.sendall(b"MONITOR\r\n")
        self.captured = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._socket.settimeout(None)
        while True:
            try:
                data = self._socket.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.captured += data

    def close(self) -> bytes:
        self._socket.close()
        self._thread.join(timeout=10)
        return bytes(self.captured)


def _encodings(marker: bytes) -> list[bytes]:
    """The marker, and how it reads inside base64 (Celery's message bodies) at each alignment."""
    found = [marker]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + marker)
        found.append(encoded[4 if shift else 0 : -4])
    return found


def _message_bodies(traffic: bytes) -> list[bytes]:
    """The decoded bodies of the Celery messages in the traffic (task arguments and results)."""
    bodies = []
    for match in re.finditer(rb'\\"body\\": \\"([A-Za-z0-9+/=]+)\\"', traffic):
        bodies.append(base64.b64decode(match.group(1)))
    return bodies


@pytest.mark.redis
def test_the_marker_never_crosses_the_task_queue(tmp_path: Path) -> None:
    """With Redis as broker, cache and result store: uploads in both modes (one resumable, in
    parts), reads, a deletion and the objects' jobs run by a real worker through the queue."""
    redis_url = os.environ["REDIS_URL"]
    monitor = _RedisMonitor(redis_url)
    data_dir = tmp_path / "server"
    queue = f"marker-{uuid.uuid4().hex}"
    env = {"REDIS_URL": redis_url, "VAULT_OBJECT_RETENTION_DAYS": "0"}
    port = free_port()
    server = Server(data_dir, port, env)
    worker_env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        **env,
        "VAULT_DATA_DIR": str(data_dir),
    }
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "vault", "worker", "--pool=solo", "-Q", queue),
            *("--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"),
        ],
        cwd=ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        token = server.token()
        server.wait_ready()
        running = Running(server, f"http://127.0.0.1:{port}", token, data_dir)
        cvault = new_client(running, tmp_path / "client")
        source = tmp_path / "secret.txt"
        source.write_bytes(MARKER * 40_000)  # about 1.3 MB: in parts below
        parts = {"CVAULT_PART_SIZE": str(256 * 1024)}
        cvault.ok("put", str(source), "client-side-copy", env=parts)
        cvault.ok("put", "--gateway", str(source), "gateway-copy", env=parts)
        cvault.ok("put", "--gateway", str(source), "deleted-copy")
        assert cvault.ok("cat", "client-side-copy").out == MARKER * 40_000
        assert cvault.ok("cat", "--gateway", "gateway-copy").out == MARKER * 40_000
        cvault.ok("rm", "--gateway", "deleted-copy")
        # The objects' scheduled jobs, sent through Redis to the worker, results back the same way.
        from celery import current_app

        for name in (
            "vault.objects.purge_deleted",
            "vault.objects.sweep_orphans",
            "vault.objects.purge_expired_uploads",
        ):
            result = current_app.send_task(name, queue=queue)
            assert isinstance(result.get(timeout=60), int), name
        # The data still exists and reads back.
        assert cvault.ok("cat", "--gateway", "gateway-copy").out == MARKER * 40_000
        stored = [p.read_bytes() for p in data_dir.rglob("*") if p.is_file()]
    finally:
        server.stop()
        worker.terminate()
        worker_log, _ = worker.communicate(timeout=30)
        traffic = monitor.close()
    assert b"vault.objects.purge_deleted" in traffic, "the jobs crossed the queue"
    assert _message_bodies(traffic), "the messages' bodies were captured"
    everything = [traffic, *_message_bodies(traffic), worker_log]
    everything += stored
    everything.append("\n".join(server.lines).encode())
    for blob in everything:
        for form in _encodings(MARKER):
            assert form not in blob
