"""/healthz and /readyz, against the real database and a real Redis server."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import redis
from django.test import override_settings

from tests.core.helpers import free_port, wait_until

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_authentication(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_the_database(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.redis
def test_readyz_checks_the_configured_redis(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.redis
def test_readyz_answers_503_while_redis_is_down_and_recovers(client, tmp_path) -> None:
    server = shutil.which("redis-server")
    assert server, "redis-server is needed for this test"
    port = free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        own_redis = override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        own_redis.enable()
        wait_until(lambda: redis.Redis(port=port).ping(), what="redis-server")
        assert client.get("/readyz").status_code == 200
        process.terminate()
        process.wait(timeout=10)
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "not_ready"
        assert down.json()["error"]["details"] == {"database": "ok", "redis": "failed"}
        process = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        wait_until(lambda: redis.Redis(port=port).ping(), what="redis-server restart")
        assert client.get("/readyz").status_code == 200
    finally:
        own_redis.disable()
        process.terminate()
        process.wait(timeout=10)
