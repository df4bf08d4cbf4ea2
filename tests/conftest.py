"""Test set-up shared by the whole suite.

Real components: tests marked ``postgres`` or ``redis`` need those servers (named by
``DATABASE_URL`` and ``REDIS_URL``). Where a component is missing such tests are skipped, and the
summary says so loudly. Under ``VAULT_TEST_STRICT=1`` (set by ``make test`` in CI) a skip is a
failure unless its marker is listed in ``VAULT_TEST_ALLOW_SKIP`` for this pass (the SQLite pass
allows ``postgres,redis``; the PostgreSQL pass allows nothing).

``browser`` tests drive Debian's Chromium (``/usr/bin/chromium``, package ``chromium``) with
Playwright for Python (the ``dev`` extra); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache

COMPONENT_MARKERS = ("postgres", "redis", "softhsm", "tpm", "kmip", "browser", "tmpfs")
COMPONENT_MODULES = {
    "softhsm": "kms_plugins.testing.softhsm",
    "tpm": "kms_plugins.testing.swtpm",
    "kmip": "kms_plugins.testing.kmip_server",
}
CHROMIUM = "/usr/bin/chromium"


def _available(component: str) -> str | None:
    """None when the component is there, else why not."""
    if component in COMPONENT_MODULES:
        try:
            module = importlib.import_module(COMPONENT_MODULES[component])
        except ImportError as exc:
            return f"cannot import {COMPONENT_MODULES[component]}: {exc}"
        reason: str | None = module.available()
        return reason
    if component == "postgres":
        engine = settings.DATABASES["default"]["ENGINE"]
        return None if "postgresql" in engine else "DATABASE_URL does not name a PostgreSQL server"
    if component == "redis":
        return None if settings.REDIS_URL else "REDIS_URL is not set"
    if component == "tmpfs":
        return _tmpfs_unavailable()
    if component == "browser":
        if not os.access(CHROMIUM, os.X_OK):
            return f"{CHROMIUM} is missing (Debian package chromium)"
        try:
            importlib.import_module("playwright.sync_api")
        except ImportError as exc:
            return f"cannot import playwright.sync_api (the dev extra): {exc}"
        return None
    return f"unknown component {component}"


_tmpfs_reason: list[str | None] = []


def _tmpfs_unavailable() -> str | None:
    """None when this process can mount a tmpfs (tried once), else why not."""
    if not _tmpfs_reason:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            _tmpfs_reason.append("mounting a tmpfs needs root and mount(8)")
        else:
            probe = tempfile.mkdtemp(prefix="cvault-tmpfs-probe-")
            tried = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                capture_output=True,
                text=True,
                check=False,
            )
            if tried.returncode == 0:
                subprocess.run(["umount", probe], check=False)
            os.rmdir(probe)
            _tmpfs_reason.append(
                None if tried.returncode == 0 else f"mount -t tmpfs failed: {tried.stderr.strip()}"
            )
    return _tmpfs_reason[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for component in COMPONENT_MARKERS:
        if item.get_closest_marker(component) is not None:
            reason = _available(component)
            if reason is not None:
                pytest.skip(f"[{component}] {reason}")


_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = (
            str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        )
        _skipped.append((report.nodeid, reason))


def _allowed_skips() -> set[str]:
    return {
        word.strip()
        for word in os.environ.get("VAULT_TEST_ALLOW_SKIP", "").split(",")
        if word.strip()
    }


def _disallowed(skips: list[tuple[str, str]]) -> list[tuple[str, str]]:
    allowed = _allowed_skips()
    return [(node, why) for node, why in skips if not any(f"[{name}]" in why for name in allowed)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped:
        return
    strict = os.environ.get("VAULT_TEST_STRICT") == "1"
    bad = _disallowed(_skipped) if strict else []
    terminalreporter.section("REAL-COMPONENT TESTS SKIPPED", sep="!", red=True, bold=True)
    terminalreporter.write_line(
        f"{len(_skipped)} test(s) did not run against a real component; this run proves less."
    )
    for node, why in _skipped:
        terminalreporter.write_line(f"  SKIPPED {node}: {why}")
    if bad:
        terminalreporter.write_line(
            f"VAULT_TEST_STRICT=1: {len(bad)} skip(s) not allowed in this pass "
            f"(VAULT_TEST_ALLOW_SKIP={os.environ.get('VAULT_TEST_ALLOW_SKIP', '')!r}); "
            "failing the run.",
            red=True,
            bold=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("VAULT_TEST_STRICT") == "1" and _disallowed(_skipped) and exitstatus == 0:
        session.exitstatus = 1


def _forget_auth_failures() -> None:
    if not settings.REDIS_URL:
        cache.clear()
        return
    import redis

    # Not FLUSHDB: the Celery broker shares the server.
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(match="*authfail:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Production hashing is slow on purpose; the tests hash thousands of times."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _private_storage(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test stores ciphertext in a fresh directory, never in var/storage."""
    location = tmp_path_factory.mktemp("storage")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }


@pytest.fixture(autouse=True)
def _private_keystore(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test's ``local`` key backend keeps its keys in a fresh directory, never in var/."""
    directory = tmp_path_factory.mktemp("keystore")
    settings.VAULT_KEY_BACKENDS = {
        "local": {
            "BACKEND": "kms_plugins.local.LocalKeyBackend",
            "OPTIONS": {
                "PATH": str(directory / "keys.json"),
                "KEY_FILE": str(directory / "master.key"),
            },
        }
    }


@pytest.fixture(autouse=True)
def _fresh_failure_counters() -> Iterator[None]:
    """Failed-authentication counters live in the cache; no test sees another's."""
    _forget_auth_failures()
    yield
    _forget_auth_failures()
