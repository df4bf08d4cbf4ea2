"""The embedded scheduler: Celery beat's schedule, run inside the serving process.

Under the embedded default there is no broker server, so tasks run eagerly and nothing would fire
the periodic jobs (audit checkpoints, rotation, compliance runs). This scheduler reads the same
``CELERY_BEAT_SCHEDULE`` that Celery beat uses in production, asks Celery's own schedule objects
when each entry is due, and runs due tasks in-process, one at a time. With a broker configured it
is not started: Celery beat does the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, schedule
from django.conf import settings
from django.db import close_old_connections

from vault.celery import app

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    last_run_at: datetime | None = None
    runs: int = 0


def _as_schedule(value: Any) -> BaseSchedule:
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, timedelta):
        return schedule(run_every=value)
    if isinstance(value, int | float):
        return schedule(run_every=timedelta(seconds=value))
    raise TypeError(f"unsupported schedule {value!r}")


class EmbeddedScheduler:
    """Runs the beat schedule in a daemon thread of the serving process."""

    def __init__(self, beat_schedule: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        # Outside a Celery worker nothing imports the apps' task modules: import them now, so
        # every task the schedule names is registered.
        app.loader.import_default_modules()
        source: Mapping[str, Mapping[str, Any]] = (
            settings.CELERY_BEAT_SCHEDULE if beat_schedule is None else beat_schedule
        )
        self.entries = [
            _Entry(
                name=name,
                task=spec["task"],
                schedule=_as_schedule(spec["schedule"]),
                args=tuple(spec.get("args", ())),
                kwargs=dict(spec.get("kwargs", {})),
            )
            for name, spec in source.items()
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> float:
        """Run every due entry once; return the seconds until the next one is due."""
        wait = 60.0
        for entry in self.entries:
            if entry.last_run_at is None:
                due, next_in = True, 0.0
            else:
                due, next_in = entry.schedule.is_due(entry.last_run_at)
            if due:
                entry.last_run_at = entry.schedule.now()
                entry.runs += 1
                self._run(entry)
                _, next_in = entry.schedule.is_due(entry.last_run_at)
            wait = min(wait, max(float(next_in), 1.0))
        return wait

    def _run(self, entry: _Entry) -> None:
        try:
            app.tasks[entry.task].apply(args=entry.args, kwargs=entry.kwargs, throw=True)
            logger.info("scheduled task %s ran", entry.task)
        except Exception:
            logger.exception("scheduled task %s failed", entry.task)

    def start(self) -> None:
        """Start the daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="vault-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # This thread's own database connection: drop it when stale, as a request would.
            close_old_connections()
            try:
                wait = self.tick()
            finally:
                close_old_connections()
            self._stop.wait(wait)
