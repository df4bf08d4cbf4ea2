"""Failing closed when a component the service depends on is down.

A request that meets an unavailable database, Redis (as cache or as task queue) or a full or
failing storage volume answers 503 with a stable code and a ``Retry-After`` header, instead of
a 500 that says nothing. No partial object is left: a version's row is written only once its
body is stored, and a body whose row could not be written is deleted (``store_chunks``,
``_save_version``); what the request recorded before the failure (audit events) stays. Django
reconnects to the database and redis-py to Redis on the next request, so service resumes by
itself when the component returns.

Key backends report their own outages (``key_backend_unavailable``) through the API's error
handler; this module covers what sits under every request.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.db import utils as db_utils
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outage:
    """What a request answers when it met an unavailable component."""

    code: str
    message: str
    retry_after: int


DATABASE = Outage("database_unavailable", "The database is unavailable; try again shortly.", 5)
CACHE = Outage("cache_unavailable", "The cache (Redis) is unavailable; try again shortly.", 5)
QUEUE = Outage("queue_unavailable", "The task queue (Redis) is unavailable; try again shortly.", 5)
STORAGE_FULL = Outage(
    "storage_full", "The object store is full; nothing was stored. Try again later.", 60
)
STORAGE = Outage(
    "storage_unavailable", "The object store cannot be written; nothing was stored.", 30
)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FAILING = {errno.EIO, errno.EROFS}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, nearest first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # ``raise ... from None`` hides the context on purpose: a deliberate translation.
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context


def _classify(exc: BaseException) -> Outage | None:
    # Imported here: both are hard dependencies, but this module is imported by the URLconf.
    import kombu.exceptions
    import redis.exceptions

    if isinstance(exc, db_utils.OperationalError | db_utils.InterfaceError):
        return DATABASE
    if isinstance(exc, kombu.exceptions.OperationalError):
        return QUEUE
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return CACHE
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return STORAGE_FULL
    if isinstance(exc, OSError) and exc.errno in _FAILING:
        return STORAGE
    return None


def outage_of(exc: BaseException) -> Outage | None:
    """The outage ``exc`` (or an exception in its chain) reports, or None for any other error.

    A Redis error met while enqueueing a task counts as the queue's: kombu wraps it, and the
    wrapper is nearer in the chain.
    """
    for link in _chain(exc):
        outage = _classify(link)
        if outage is not None:
            return outage
    return None


def outage_response(request: HttpRequest, outage: Outage) -> HttpResponse:
    """The 503 answer: the API's one error shape for API paths, a short page elsewhere."""
    from vault.api.errors import error_body, wants_json

    if wants_json(request):
        from django.http import JsonResponse

        response: HttpResponse = JsonResponse(
            error_body(503, outage.code, outage.message), status=503
        )
    else:
        from django.template.loader import render_to_string

        page = render_to_string("core/unavailable.html", {"outage": outage}, request=None)
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(outage.retry_after)
    response["Cache-Control"] = "no-store"
    return response


class DependencyFailureMiddleware:
    """Turns an exception from an unavailable component, raised by a view, into a 503.

    Exceptions raised outside views (in other middleware) reach ``handler500``, which asks
    ``outage_of`` too.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        outage = outage_of(exception)
        if outage is None:
            return None
        # The cause is logged (no request data beyond the path): operators need it, the client
        # gets only the code.
        logger.error("%s on %s %s", outage.code, request.method, request.path, exc_info=exception)
        return outage_response(request, outage)
