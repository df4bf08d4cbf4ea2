"""PostgreSQL stopped and restarted under a running vault (gunicorn, two workers).

The cluster is private to the test (``pgcluster``): the vault's real server process, stopped
with ``pg_ctl stop`` and started again. While it is down every request that needs it answers 503
``database_unavailable`` and writes nothing; once it is back the same vault process serves again
with no restart, and everything stored before reads back.
"""

from __future__ import annotations

import hashlib
import http.client as http_client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.helpers import free_port, wait_until
from tests.core.test_serve import Server
from tests.reliability.pgcluster import PrivateCluster, binaries

pytestmark = pytest.mark.postgres


class _Http:
    """Just enough of an API client for a vault in another process."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(
        self, method: str, path: str, body: bytes | None = None, json_body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(  # noqa: S310 (http on loopback)
            self.base + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def create(self, name: str) -> int:
        status, _, body = self.call("POST", "/api/v1/objects/", json_body={"name": name})
        assert status == 201, body
        return int(json.loads(body)["id"])


@pytest.fixture
def faults_db_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    if binaries() is None:
        pytest.fail("PostgreSQL's server binaries are missing (Debian package postgresql)")
    cluster = PrivateCluster(tmp_path / "pg")
    cluster.start()
    cluster.create_database("vault")
    try:
        yield cluster
    finally:
        cluster.close()


def _unavailable(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 503, body
    error = json.loads(body)["error"]
    assert error["code"] == "database_unavailable", error
    assert error["request_id"]
    assert int(headers["Retry-After"]) > 0


def test_a_stopped_database_answers_503_and_the_vault_recovers_without_a_restart(
    faults_db_cluster: PrivateCluster, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir, free_port(), env={"DATABASE_URL": faults_db_cluster.url("vault")})
    try:
        http = _Http(server.port, server.token())
        server.wait_ready()
        stored: dict[int, bytes] = {}
        for n in range(6):
            object_id = http.create(f"before-{n}.bin")
            body = os.urandom(10_000 + n * 7_000)
            status, _, answer = http.call("PUT", f"/api/v1/objects/{object_id}/content/", body)
            assert status == 201, answer
            stored[object_id] = body
        files_before = sorted(p.name for p in (data_dir / "storage").rglob("*") if p.is_file())
        pid = server.process.pid

        faults_db_cluster.stop()
        first = next(iter(stored))
        _unavailable(http.call("GET", "/api/v1/objects/"))
        _unavailable(http.call("GET", f"/api/v1/objects/{first}/content/"))
        _unavailable(http.call("PUT", f"/api/v1/objects/{first}/content/", b"lost?" * 1000))
        _unavailable(http.call("POST", "/api/v1/objects/", json_body={"name": "during.bin"}))
        status, _, body = http.call("GET", "/readyz")
        assert status == 503
        assert json.loads(body)["error"]["details"]["database"] == "failed"
        # The failed write left no body behind.
        files_during = sorted(p.name for p in (data_dir / "storage").rglob("*") if p.is_file())
        assert files_during == files_before

        faults_db_cluster.start()
        wait_until(
            lambda: http.call("GET", "/api/v1/objects/")[0] == 200,
            timeout=30,
            what="the vault to serve again",
        )
        assert server.process.poll() is None
        assert server.process.pid == pid
        status, _, body = http.call("GET", "/api/v1/objects/?page_size=100")
        names = sorted(item["name"] for item in json.loads(body)["results"])
        assert "during.bin" not in names
        for object_id, expected in stored.items():
            status, _, content = http.call("GET", f"/api/v1/objects/{object_id}/content/")
            assert status == 200
            assert hashlib.sha256(content).digest() == hashlib.sha256(expected).digest()
            status, _, meta = http.call("GET", f"/api/v1/objects/{object_id}/")
            assert json.loads(meta)["latest_version"]["number"] == 1  # the PUT that failed

        # A restart between two requests: the next request reconnects and is served at once.
        faults_db_cluster.stop()
        faults_db_cluster.start()
        for _ in range(4):  # reach both gunicorn workers' stale connections
            assert http.call("GET", "/api/v1/objects/")[0] == 200
        object_id = http.create("after.bin")
        assert http.call("PUT", f"/api/v1/objects/{object_id}/content/", b"after")[0] == 201
        assert http.call("GET", f"/api/v1/objects/{object_id}/content/")[2] == b"after"

        # The database goes while a body is streaming in: the body reached storage, its row
        # cannot be written, so the body is deleted and the answer is a 503.
        before = _stored_files(data_dir)
        status, headers, answer = _put_stopping_midway(
            http, object_id, os.urandom(4 << 20), faults_db_cluster.stop, data_dir
        )
        _unavailable((status, headers, answer))
        assert _stored_files(data_dir) == before
        faults_db_cluster.start()
        wait_until(
            lambda: http.call("GET", f"/api/v1/objects/{object_id}/")[0] == 200,
            timeout=30,
            what="the vault to serve again",
        )
        status, _, meta = http.call("GET", f"/api/v1/objects/{object_id}/")
        assert json.loads(meta)["latest_version"]["number"] == 1
        assert http.call("GET", f"/api/v1/objects/{object_id}/content/")[2] == b"after"
    finally:
        server.stop()


def _stored_files(data_dir: Path) -> list[str]:
    return sorted(str(p) for p in (data_dir / "storage").rglob("*") if p.is_file())


def _put_stopping_midway(
    http: _Http, object_id: int, body: bytes, stop: Callable[[], None], data_dir: Path
) -> tuple[int, dict[str, str], bytes]:
    """PUT ``body`` in two halves, calling ``stop`` once the server is writing the first to
    storage (past authentication and the key wrap)."""
    before = set(_stored_files(data_dir))
    connection = http_client.HTTPConnection(http.base.removeprefix("http://"), timeout=60)
    try:
        connection.putrequest("PUT", f"/api/v1/objects/{object_id}/content/")
        connection.putheader("Authorization", f"Bearer {http.token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        half = len(body) // 2
        connection.send(body[:half])
        wait_until(
            lambda: bool(set(_stored_files(data_dir)) - before),
            timeout=60,
            what="the body to reach storage",
        )
        stop()
        connection.send(body[half:])
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()
