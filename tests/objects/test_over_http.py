"""Objects over a real HTTP connection to `manage.py serve` (gunicorn), where the socket matters."""

from __future__ import annotations

import json
import socket

import pytest

from tests.core.helpers import free_port
from tests.core.test_serve import Server

pytestmark = pytest.mark.slow


def _request(
    port: int, method: str, path: str, token: str, body: bytes = b"", headers: dict | None = None
):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        method, path, body=body, headers={"Authorization": f"Bearer {token}", **(headers or {})}
    )
    response = connection.getresponse()
    return response.status, response.read()


def test_an_upload_cut_short_stores_nothing_and_the_service_goes_on(tmp_path) -> None:
    port = free_port()
    server = Server(tmp_path, port)
    try:
        token = server.token()
        server.wait_ready()
        status, body = _request(
            port,
            "POST",
            "/api/v1/objects/",
            token,
            json.dumps({"name": "big.bin"}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 201, body
        object_id = json.loads(body)["id"]
        # Declare 5 MB, send 100 KB, then close the connection mid-body.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(
                (
                    f"PUT /api/v1/objects/{object_id}/content/ HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n"
                ).encode()
                + b"P" * 100_000
            )
        status, body = _request(port, "GET", f"/api/v1/objects/{object_id}/", token)
        for _ in range(50):  # the worker notices the closed socket on its next read
            status, body = _request(port, "GET", f"/api/v1/objects/{object_id}/", token)
            if status == 200:
                break
        assert status == 200
        assert json.loads(body)["latest_version"] is None, "no partial version is visible"
        status, body = _request(
            port,
            "PUT",
            f"/api/v1/objects/{object_id}/content/",
            token,
            b"complete",
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 201, body
        status, body = _request(port, "GET", f"/api/v1/objects/{object_id}/content/", token)
        assert (status, body) == (200, b"complete")

        # A resumable upload whose second part is cut short: that part alone is sent again.
        data = bytes(range(256)) * 1200
        status, body = _request(
            port,
            "POST",
            "/api/v1/uploads/",
            token,
            json.dumps({"object": object_id, "length": len(data)}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 201, body
        upload = json.loads(body)["id"]
        part = f"/api/v1/uploads/{upload}/parts"
        assert _request(port, "PUT", f"{part}/0/", token, data[:100_000])[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(
                (
                    f"PUT {part}/100000/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Length: {len(data) - 100_000}\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + data[100_000:150_000]
            )
        status, body = _request(port, "GET", f"/api/v1/uploads/{upload}/", token)
        assert json.loads(body)["offset"] == 100_000
        for _ in range(50):  # retried until the server has noticed the cut and let go
            status, body = _request(port, "PUT", f"{part}/100000/", token, data[100_000:])
            if status == 200:
                break
        assert status == 200, body
        assert json.loads(body)["complete"] is True
        status, body = _request(port, "GET", f"/api/v1/objects/{object_id}/content/", token)
        assert (status, body) == (200, data)
    finally:
        server.stop()
    stored = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
    assert len(stored) == 2, "the cut-short uploads left no file behind"
