"""A campaign whose worker is killed (SIGKILL) mid-way completes by itself, and every object
still decrypts, rewrapped exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.core.helpers import free_port, wait_until
from tests.core.test_serve import Server

pytestmark = pytest.mark.slow
OBJECTS = 60
SETTINGS = {
    # The embedded scheduler is the worker here: it looks for campaigns every second, holds a
    # lease of three seconds, and rewraps slowly enough to be caught in the middle.
    "VAULT_CAMPAIGN_INTERVAL_SECONDS": "1",
    "VAULT_CAMPAIGN_LEASE_SECONDS": "3",
    "VAULT_REWRAP_BATCH": "2",
    "VAULT_REWRAP_RATE": "10",
}


def _call(port: int, token: str, method: str, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header(
            "Content-Type", "application/json" if body.startswith(b"{") else "text/plain"
        )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        data = response.read()
        kind = response.headers.get("Content-Type", "")
        return json.loads(data) if kind.startswith("application/json") else data


def _campaign(port: int, token: str) -> dict[str, Any]:
    return _call(port, token, "GET", "/api/v1/keys/campaigns/")["results"][0]


def _kill(server: Server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def test_a_campaign_survives_its_worker_being_killed(tmp_path: Path) -> None:
    port = free_port()
    server = Server(tmp_path, port, SETTINGS)
    try:
        token = server.token()
        server.wait_ready()
        contents = {}
        for index in range(OBJECTS):
            created = _call(
                port, token, "POST", "/api/v1/objects/", json.dumps({"name": f"o{index}"}).encode()
            )
            contents[created["id"]] = f"object {index} ".encode() * (index + 1)
            _call(
                port,
                token,
                "PUT",
                f"/api/v1/objects/{created['id']}/content/",
                contents[created["id"]],
            )
        started = _call(port, token, "POST", "/api/v1/keys/campaigns/", b"{}")
        assert started["total"] == OBJECTS
        wait_until(
            lambda: _campaign(port, token)["rewrapped"] >= 10,
            timeout=60,
            what="the campaign to get going",
        )
    finally:
        _kill(server)
    database = sqlite3.connect(tmp_path / "vault.sqlite3")
    (state,) = database.execute("SELECT state FROM lifecycle_campaign").fetchone()
    (rewrapped,) = database.execute("SELECT SUM(rewrapped) FROM lifecycle_campaignslice").fetchone()
    assert state == "running"
    assert rewrapped < OBJECTS, "killed in the middle"

    second = Server(tmp_path, port, SETTINGS)
    try:
        token = second.token()
        second.wait_ready()
        wait_until(
            lambda: _campaign(port, token)["state"] == "complete",
            timeout=120,
            what="the campaign to finish by itself",
        )
        for object_id, data in contents.items():
            assert _call(port, token, "GET", f"/api/v1/objects/{object_id}/content/") == data
    finally:
        second.stop()
    counts = database.execute(
        "SELECT version_id, COUNT(*) FROM objects_headerhistory GROUP BY version_id"
    ).fetchall()
    assert len(counts) == OBJECTS, "every version was rewrapped"
    assert {count for _, count in counts} == {1}, "and each exactly once"
    leases = database.execute("SELECT DISTINCT lease_owner FROM lifecycle_campaignslice").fetchall()
    assert leases == [("",)]
    database.close()
