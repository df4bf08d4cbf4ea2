"""A short run of ``bench/load.py`` (issue 9, item 4), so that the load benchmark cannot rot.

The full run (32 clients for 60 s) is the benchmark itself, re-run by ``make torture``; this
smoke version runs 8 clients for 5 s (under ``VAULT_TORTURE=1``: 16 clients for 15 s) against a
real gunicorn, a fresh database on the PostgreSQL server ``DATABASE_URL`` names, and the Redis
``REDIS_URL`` names, with a real Celery worker. It asserts what the benchmark promises: no
error, and every object and version the server acknowledged read back with the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TORTURE = os.environ.get("VAULT_TORTURE") == "1"
CLIENTS, SECONDS = (16, 15) if TORTURE else (8, 5)


def _admin_url() -> str:
    """The maintenance database on the PostgreSQL server the test settings name."""
    db = settings.DATABASES["default"]
    user = urllib.parse.quote(db.get("USER") or "postgres", safe="")
    password = urllib.parse.quote(db.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}" if password else user
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{credentials}@{host}:{port}/postgres"


def test_it_serves_concurrent_clients_without_errors_and_reads_every_object_back(
    tmp_path: Path,
) -> None:
    summary_path = tmp_path / "load.json"
    admin = _admin_url()
    argv = [
        sys.executable, "bench/load.py",
        "--clients", str(CLIENTS),
        "--seconds", str(SECONDS),
        "--baseline-seconds", "1",
        "--healthz-seconds", "1",
        "--postgres", admin,
        "--redis-url", settings.REDIS_URL,
        "--tmpdir", str(tmp_path),
        "--json", str(summary_path),
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = json.loads(summary_path.read_text())

    run = summary["run"]
    assert summary["errors"] == 0, output
    assert run["mismatches"] == 0, output
    for op in ("create", "put", "get", "list"):
        assert run["ops"][op]["count"] > 0, f"the mix never did a {op}"
    phases = [summary["warm_up"], summary["baseline"], run]
    created = sum(p["ops"]["create"]["count"] for p in phases)
    stored = sum(p["ops"]["put"]["count"] for p in phases)
    verify = summary["verify"]
    assert verify["objects"] == created, "every acknowledged object was read back"
    assert verify["versions"] == stored, "every acknowledged version was read back"
    problems = {k: verify[k] for k in ("lost", "corrupted", "unexpected", "errors")}
    assert problems == dict.fromkeys(problems, 0), output
    assert summary["process_failures"] == [], output
    assert summary["headline"]["verdict"] == "ok"

    name = urllib.parse.urlsplit(summary["server"]["database"]).path.lstrip("/")
    assert name.startswith("cvault_load_")
    with psycopg.connect(admin, autocommit=True) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert left == [], "the benchmark drops its database"
    assert not any(tmp_path.glob("cvault-load-*")), "the benchmark removes its data directory"
