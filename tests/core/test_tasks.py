"""Celery: a real worker against the real Redis; the embedded scheduler without one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.utils import timezone

from vault.core.scheduler import EmbeddedScheduler
from vault.core.tasks import ping

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.redis
def test_a_real_worker_runs_a_task_and_returns_its_result(settings) -> None:
    assert not settings.CELERY_TASK_ALWAYS_EAGER
    queue = f"test-{uuid.uuid4().hex}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "vault.settings"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "vault",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        result = ping.apply_async(args=("marco",), queue=queue)
        assert result.get(timeout=60) == {"pong": "marco"}
        assert result.successful()
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.mark.django_db
def test_the_embedded_scheduler_runs_each_due_job_once() -> None:
    scheduler = EmbeddedScheduler(
        {"ping": {"task": "vault.core.ping", "schedule": 3600, "args": ["a"]}}
    )
    entry = scheduler.entries[0]
    wait = scheduler.tick()
    assert entry.runs == 1
    assert 1 <= wait <= 3600
    scheduler.tick()
    assert entry.runs == 1, "not due again within the hour"
    assert entry.last_run_at is not None
    entry.last_run_at -= timedelta(hours=2)
    scheduler.tick()
    assert entry.runs == 2


def test_the_embedded_scheduler_knows_the_beat_schedule() -> None:
    names = {entry.task for entry in EmbeddedScheduler().entries}
    assert "vault.core.clear_expired_sessions" in names


@pytest.mark.django_db
def test_the_session_cleanup_job_removes_expired_sessions() -> None:
    Session.objects.create(
        session_key="old" * 10, session_data="", expire_date=timezone.now() - timedelta(1)
    )
    Session.objects.create(
        session_key="new" * 10, session_data="", expire_date=timezone.now() + timedelta(1)
    )
    scheduler = EmbeddedScheduler(
        {"c": {"task": "vault.core.clear_expired_sessions", "schedule": 60}}
    )
    scheduler.tick()
    assert list(Session.objects.values_list("session_key", flat=True)) == ["new" * 10]
