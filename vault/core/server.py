"""Gunicorn, started in-process by ``manage.py serve``."""

from __future__ import annotations

import re
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

# One-time password set-up links carry their secret in the path; keep it out of the access log.
_SECRET_PATH = re.compile(r"(/set-password/[^/\s]+/)[^/\s]+")


class RedactingLogger(Logger):
    """Gunicorn's logger, with secrets in request paths replaced by ``***``."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        values: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U"):
            if isinstance(values.get(key), str):
                values[key] = _SECRET_PATH.sub(r"\1***", values[key])
        return values


def _start_scheduler(worker: Any) -> None:
    from vault.core.scheduler import EmbeddedScheduler

    EmbeddedScheduler().start()


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from vault.wsgi import application

        return application


def serve(*, bind: str, workers: int, embedded_scheduler: bool) -> None:
    """Serve until interrupted. With ``embedded_scheduler`` the first worker runs the beat jobs."""
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 120,
        "accesslog": "-",
        "logger_class": RedactingLogger,
        # Paths and statuses only: headers (bearer tokens) and query strings are never logged.
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
    }
    if embedded_scheduler:
        # With no broker there is one worker process, and the scheduler lives in it.
        options["workers"] = 1
        options["post_worker_init"] = _start_scheduler
    _Server(options).run()
