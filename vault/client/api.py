"""The HTTP side of ``cvault``: one small client for the vault's REST API, standard library only.

Uploads stream from an iterable of chunks with an exact ``Content-Length``; downloads are read
from the response as a stream. Memory stays constant whatever the object's size.

Security: the token travels only in the ``Authorization`` header and appears in no message or
``repr``. HTTPS verifies the server's certificate (the system's trust store, or ``ca_file``).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from vault.client.config import Login
from vault.client.errors import ConfigurationError, NetworkError, ServerError

API = "/api/v1"
MAX_ERROR_BODY = 64 * 1024
USER_AGENT = "cvault/0.1"


class Response:
    """A streamed HTTP answer: ``status``, ``headers``, and ``read``/``readinto`` of the body."""

    def __init__(self, connection: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self._connection = connection
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all of it if ``size`` < 0).

        Raises:
            NetworkError: the connection broke.
        """
        try:
            return self.raw.read(size if size >= 0 else None)
        except (OSError, http.client.HTTPException) as exc:
            raise NetworkError(f"the connection broke during the download ({_why(exc)})") from exc

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer``; 0 at the end of the body.

        Raises:
            NetworkError: the connection broke, or the body ended before its Content-Length.
        """
        try:
            return self.raw.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise NetworkError(f"the connection broke during the download ({_why(exc)})") from exc

    def close(self) -> None:
        """Release the connection."""
        self.raw.close()
        self._connection.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "the body ended early"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


class Api:
    """A client of the vault's REST API v1 for one login.

    Security: never includes the token in an error message; refuses URLs with credentials in
    them.
    """

    def __init__(self, login: Login, *, timeout: float = 60.0) -> None:
        """Args:
            login: URL, token and optional CA file.
            timeout: seconds for connecting and for each socket read or write.

        Raises:
            ConfigurationError: the URL is not an http(s) URL.
        """
        parsed = urllib.parse.urlsplit(login.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigurationError(f"the server URL must be http:// or https://, not {login.url}")
        if parsed.username or parsed.password:
            raise ConfigurationError("the server URL must not contain credentials")
        self.url = login.url
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._base = parsed.path.rstrip("/")
        self._token = login.token
        self._timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=login.ca_file)

    def __repr__(self) -> str:
        return f"<Api {self.url}>"

    @property
    def insecure_transport(self) -> bool:
        """Plain HTTP to a host other than loopback: the token would cross the network in clear."""
        return not self._https and self._host not in ("127.0.0.1", "localhost", "::1")

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def path(self, path: str, query: Mapping[str, str | int] | None = None) -> str:
        """The request target for an API path (``/objects/``), with an optional query."""
        target = f"{self._base}{API}{path}"
        if query:
            target += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        return target

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request; return the streamed answer if it is a success (2xx).

        Args:
            method: the HTTP method.
            target: from ``path`` (or a ``next`` page's path and query).
            body: bytes, or an iterable of chunks sent as they come (then ``length`` is needed).
            length: the exact body length for an iterable body.
            headers: extra headers.

        Raises:
            ServerError: the server answered with an error (its code and message).
            NetworkError: no connection, or it broke.
        """
        connection = self._connection()
        all_headers = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **(headers or {}),
        }
        if isinstance(body, bytes):
            length = len(body)
        if body is not None:
            all_headers["Content-Length"] = str(length)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in all_headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            if body is not None:
                self._send(connection, [body] if isinstance(body, bytes) else body)
            raw = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise NetworkError(f"cannot reach {self.url} ({_why(exc)})") from exc
        except BaseException:  # the body's source failed (a file that changed): abandon the request
            connection.close()
            raise
        response = Response(connection, raw)
        if response.status >= 400:
            try:
                raise _server_error(response)
            finally:
                response.close()
        return response

    @staticmethod
    def _send(connection: http.client.HTTPConnection, chunks: Iterable[bytes]) -> None:
        """Send the body; if the server stops reading (it answered early), stop and let the
        caller read its answer."""
        for chunk in chunks:
            try:
                connection.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return

    def json(
        self,
        method: str,
        target: str,
        payload: Any = None,
    ) -> Any:
        """A JSON request and its JSON answer (None for 204).

        Raises:
            ServerError, NetworkError: as ``request``; NetworkError also for a non-JSON answer.
        """
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self.request(method, target, body=body, headers=headers) as response:
            data = response.read()
            if response.status == 204 or not data:
                return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise NetworkError(
                f"{self.url} did not answer with JSON (is it a Ciphervault?)"
            ) from exc

    def pages(self, target: str) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, following ``next`` (only its path and query).

        Raises:
            ServerError, NetworkError: as ``json``.
        """
        while target:
            page = self.json("GET", target)
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise NetworkError(f"{self.url} answered a list in an unexpected shape")
            yield from page["results"]
            following = page.get("next")
            if not following:
                return
            parts = urllib.parse.urlsplit(str(following))
            target = parts.path + (f"?{parts.query}" if parts.query else "")


def _server_error(response: Response) -> ServerError:
    data = response.read(MAX_ERROR_BODY)
    try:
        error = json.loads(data)["error"]
        return ServerError(
            int(error.get("status", response.status)),
            str(error.get("code", "error")),
            str(error.get("message", "")).splitlines()[0] if error.get("message") else "",
            str(error.get("request_id", "")),
        )
    except (ValueError, KeyError, TypeError, IndexError):
        reason = response.raw.reason or "error"
        return ServerError(response.status, "http_error", reason)
