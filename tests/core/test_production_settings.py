"""VAULT_ENV=production refuses unsafe start-ups and passes Django's deployment checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "DATABASE_URL", "REDIS_URL"))
    }
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def production_env(tmp_path) -> dict[str, str]:
    # A production-safe key backend; only its configuration is read by the checks.
    module = tmp_path / "libvendor-pkcs11.so"
    module.write_bytes(b"")
    pin = tmp_path / "hsm-pin"
    pin.write_text("123456")
    backends = {
        "hsm": {
            "BACKEND": "pkcs11",
            "OPTIONS": {"MODULE": str(module), "TOKEN_LABEL": "vault", "PIN_FILE": str(pin)},
        }
    }
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 20 + "-production-like-secret-key-for-the-deploy-check-0123456789\n")
    return {
        "VAULT_ENV": "production",
        "VAULT_SECRET_KEY_FILE": str(key_file),
        "VAULT_ALLOWED_HOSTS": "vault.example.com",
        "VAULT_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "DATABASE_URL": "postgres://vault@db.example.com:5432/vault",
        "VAULT_KEY_BACKENDS": json.dumps(backends),
    }


def test_production_passes_the_deploy_checks(production_env) -> None:
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], production_env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(production_env) -> None:
    del production_env["VAULT_SECRET_KEY_FILE"]
    result = _manage(["check"], production_env)
    assert result.returncode != 0
    assert "VAULT_SECRET_KEY (or VAULT_SECRET_KEY_FILE) is required" in result.stderr


def test_production_refuses_to_start_with_debug_on(production_env) -> None:
    result = _manage(["check"], {**production_env, "VAULT_DEBUG": "1"})
    assert result.returncode != 0
    assert "VAULT_DEBUG must be off" in result.stderr


def test_a_malformed_setting_stops_start_up_with_its_name(production_env) -> None:
    result = _manage(["check"], {**production_env, "VAULT_LOCKOUT_THRESHOLD": "50"})
    assert result.returncode != 0
    assert "VAULT_LOCKOUT_THRESHOLD must be at most 10" in result.stderr


def test_the_embedded_default_keeps_its_secret_key_private(tmp_path) -> None:
    data = tmp_path / "data"
    result = _manage(["check"], {"VAULT_DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr
    key = data / "secret_key"
    assert key.stat().st_mode & 0o777 == 0o600
    first = key.read_text()
    _manage(["check"], {"VAULT_DATA_DIR": str(data)})
    assert key.read_text() == first


def test_production_probes_answer_over_plain_http(production_env) -> None:
    script = (
        "import django; django.setup();"
        "from django.test import Client; c = Client();"
        "print(c.get('/healthz', HTTP_HOST='vault.example.com').status_code,"
        " c.get('/api/v1/tenant/', HTTP_HOST='vault.example.com').status_code)"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(production_env, DJANGO_SETTINGS_MODULE="vault.settings")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == ["200", "301"], result.stderr
