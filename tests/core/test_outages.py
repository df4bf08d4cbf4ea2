"""Which failures count as an unavailable component, and what such a request answers.

The real outages (PostgreSQL stopped, Redis stopped, a full tmpfs, key backends down) are in
``tests/reliability/``; these pin the classification and the answer's shape.
"""

from __future__ import annotations

import errno

import kombu.exceptions
import pytest
import redis.exceptions
from django.db import utils as db_utils
from django.test import RequestFactory

from vault.api.errors import handler500
from vault.core.outages import outage_of


def _raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (db_utils.OperationalError("server closed the connection"), "database_unavailable"),
        (db_utils.InterfaceError("connection already closed"), "database_unavailable"),
        (redis.exceptions.ConnectionError("refused"), "cache_unavailable"),
        (redis.exceptions.TimeoutError("timed out"), "cache_unavailable"),
        (OSError(errno.ENOSPC, "No space left on device"), "storage_full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "storage_full"),
        (OSError(errno.EROFS, "Read-only file system"), "storage_unavailable"),
        (OSError(errno.EIO, "Input/output error"), "storage_unavailable"),
    ],
)
def test_it_names_each_unavailable_component(failure: Exception, code: str) -> None:
    outage = outage_of(failure)
    assert outage is not None
    assert outage.code == code
    assert outage.retry_after > 0


def test_a_redis_error_met_while_enqueueing_is_the_queues() -> None:
    wrapped = _raised_from(
        kombu.exceptions.OperationalError("Error 111 connecting"),
        redis.exceptions.ConnectionError("refused"),
    )
    outage = outage_of(wrapped)
    assert outage is not None
    assert outage.code == "queue_unavailable"


def test_a_cause_deep_in_the_chain_is_found() -> None:
    failure = _raised_from(RuntimeError("saving failed"), OSError(errno.ENOSPC, "full"))
    outage = outage_of(failure)
    assert outage is not None
    assert outage.code == "storage_full"


def test_a_context_hidden_with_from_none_is_not_followed() -> None:
    def translate() -> None:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise ValueError("translated on purpose") from None

    with pytest.raises(ValueError, match="translated") as caught:
        translate()
    assert outage_of(caught.value) is None


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("a bug"),
        KeyError("x"),
        OSError(errno.ENOENT, "No such file"),
        PermissionError(errno.EACCES, "Permission denied"),
        db_utils.IntegrityError("duplicate key"),
    ],
)
def test_other_errors_are_not_outages(failure: Exception) -> None:
    assert outage_of(failure) is None


def test_an_outage_outside_a_view_answers_503_in_each_shape() -> None:
    factory = RequestFactory()
    try:
        raise db_utils.OperationalError("the database system is shutting down")
    except db_utils.OperationalError:
        api = handler500(factory.get("/api/v1/objects/"))
        page = handler500(factory.get("/console/t/demo/"))
    assert api.status_code == 503
    assert api["Retry-After"] == "5"
    assert b'"code": "database_unavailable"' in api.content
    assert page.status_code == 503
    assert b"database_unavailable" in page.content
    assert b"was not stored" in page.content


def test_a_crash_that_is_no_outage_still_answers_500() -> None:
    try:
        raise ValueError("a bug")
    except ValueError:
        response = handler500(RequestFactory().get("/api/v1/objects/"))
    assert response.status_code == 500
    assert b"server_error" in response.content
