"""The Python SDK of Ciphervault: store and fetch objects, encrypted on this machine by default.

::

    from vault.client import Vault

    vault = Vault.from_config()                      # cvault's login and keys
    with open("report.pdf", "rb") as f:
        vault.put(f, "reports/2025.pdf", size=os.fstat(f.fileno()).st_size)
    vault.get_file(vault.find("reports/2025.pdf"), Path("report.pdf"))

Client-side mode (the default): a fresh 32-byte DEK per version, wrapped by the user's own key
backend(s) under the version's encryption context, encrypts the file into an envelope
(``docs/format.md``) before a byte leaves the machine; the object's name is encrypted too
(``vault.client.names``). The server checks the envelope's structure and context and stores it,
and cannot open it. Gateway mode sends plaintext over the connection and lets the server
encrypt with the tenant's key.

Memory is constant whatever the size: files stream through the envelope in 64 KiB segments to
and from the HTTP connection.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import mimetypes
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from kms_plugins.types import KeyRef
from vault.client import config as cfg
from vault.client.api import Api, Response
from vault.client.errors import (
    ClientError,
    ConfigurationError,
    DecryptionFailed,
    NetworkError,
    ObjectNotFound,
    ServerError,
)
from vault.client.keys import KeyRing
from vault.client.names import check_name, name_binding
from vault.client.progress import Progress
from vault.client.resume import (
    CountingReader,
    UploadState,
    file_identity,
    part_size,
    range_chunks,
    range_digest,
)
from vault.crypto import (
    DEFAULT_SEGMENT_SIZE,
    DEK_SIZE,
    MAX_HEADER_SIZE,
    TAG_SIZE,
    AuthenticationFailed,
    Decryptor,
    Encryptor,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeHeader,
    body_size,
    parse_header,
    read_header,
)

CHUNK = 256 * 1024
NAME_BINDING_KEY = "cvault-name"
CLIENT_CONTENT_TYPE = "application/octet-stream"
_ABORTED = (
    "a gateway download is aborted by the server when its stored data fails to authenticate, "
    "or the network failed"
)


class Writable(Protocol):
    """Anything with a binary ``write``."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class ObjectInfo:
    """An object as the client sees it.

    Attributes:
        id: the server's object id.
        name: the real name (decrypted for client-side objects), or None when it cannot be
            decrypted (another user's key).
        server_name: the name the server stores (encrypted for client-side objects).
        mode: ``client`` or ``gateway``.
        size: the latest version's plaintext size, or None if it has no version yet.
        version: the latest version's number, or None.
        created_at: when the object was created (server time, ISO 8601).
        next_context: the encryption context the next version's envelope must carry.
    """

    id: int
    name: str | None
    server_name: str
    mode: str
    size: int | None
    version: int | None
    created_at: str
    content_type: str
    next_context: dict[str, str] = field(repr=False)


def _exact_chunks(source: BinaryIO, size: int, progress: Progress | None) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``source`` in chunks; fails if it is shorter or longer."""
    left = size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            raise ClientError("the file shrank while it was being uploaded; nothing was stored")
        left -= len(chunk)
        if progress is not None:
            progress.update(len(chunk))
        yield chunk
    if source.read(1):
        raise ClientError("the file grew while it was being uploaded; nothing was stored")


def _quiet(message: str) -> None:
    return None


class _FileChanged(Exception):
    """The file differs from the one a resumed upload started with."""


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


class _CountingReader(io.RawIOBase):
    """A response body as a raw stream, counting bytes for the progress bar."""

    def __init__(self, response: Response, progress: Progress | None) -> None:
        self._response = response
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = self._response.readinto(buffer)
        if self._progress is not None and got:
            self._progress.update(got)
        return got


class Vault:
    """A connection to one tenant of a Ciphervault server, with the user's keys.

    Security: client-side uploads never send plaintext, a DEK or a real name; downloads check the
    envelope's context (tenant, object, version) against what was asked for, unwrap with the
    user's key bound to the object's encrypted name, and release plaintext only segment by
    segment after each authenticates.
    """

    def __init__(self, api: Api, keys: KeyRing, state_dir: Path | None = None) -> None:
        """Args:
        api: the HTTP client (URL and token).
        keys: the user's key ring (may be empty: then only gateway mode works).
        state_dir: where unfinished uploads keep their state (``put_file`` resumes them);
            None: uploads are not resumable.
        """
        self.api = api
        self.keys = keys
        self.state_dir = state_dir
        self._slug: str | None = None

    @classmethod
    def from_config(cls, directory: Path | None = None, *, timeout: float = 60.0) -> Vault:
        """A vault from ``cvault``'s configuration directory (and the environment).

        Raises:
            NotLoggedIn: no URL or token.
            ConfigurationError: unreadable configuration.
        """
        directory = directory or cfg.config_dir()
        api = Api(cfg.load_login(directory), timeout=timeout)
        if api.insecure_transport and os.environ.get("CVAULT_INSECURE") != "1":
            raise ConfigurationError(
                f"{api.url} is plain http to a remote host: the token (and, with --gateway, the "
                "data) would cross the network in clear; use https, or set CVAULT_INSECURE=1"
            )
        return cls(api, KeyRing.load(directory), state_dir=directory)

    def close(self) -> None:
        """Close the key backends' connections."""
        self.keys.close()

    # -- tenant and objects ----------------------------------------------------------------

    def tenant_slug(self) -> str:
        """The slug of the token's tenant (asked once).

        Raises:
            ServerError, NetworkError.
        """
        if self._slug is None:
            data = self.api.json("GET", self.api.path("/tenant/"))
            if not isinstance(data, dict) or not isinstance(data.get("slug"), str):
                raise NetworkError(f"{self.api.url} did not answer like a Ciphervault server")
            self._slug = data["slug"]
        return self._slug

    def _info(self, raw: dict[str, Any]) -> ObjectInfo:
        mode = str(raw.get("mode"))
        server_name = str(raw.get("name"))
        if mode == "client":
            name = self.keys.names().decrypt(server_name) if self.keys.configured else None
        else:
            name = server_name
        latest = raw.get("latest_version") or {}
        return ObjectInfo(
            id=int(raw["id"]),
            name=name,
            server_name=server_name,
            mode=mode,
            size=latest.get("size"),
            version=latest.get("number"),
            created_at=str(raw.get("created_at", "")),
            content_type=str(raw.get("content_type", "")),
            next_context=dict(raw.get("next_context") or {}),
        )

    def _objects(self, **query: str) -> Iterator[ObjectInfo]:
        query = {k: v for k, v in query.items() if v}
        for raw in self.api.pages(self.api.path("/objects/", {**query, "page_size": 500})):
            yield self._info(raw)

    def list(self, prefix: str = "") -> tuple[list[ObjectInfo], int]:
        """Every object whose real name starts with ``prefix``, sorted by name.

        Client-side names are decrypted here (the server cannot filter them), so this reads
        the whole list.

        Returns:
            ``(objects, hidden)``: ``hidden`` counts client-side objects whose names this
            user's key cannot decrypt (stored by someone else).

        Raises:
            ServerError, NetworkError, KeyBackendFailure.
        """
        found: list[ObjectInfo] = []
        hidden = 0
        for info in self._objects():
            if info.name is None:
                hidden += 1
            elif info.name.startswith(prefix):
                found.append(info)
        found.sort(key=lambda o: (o.name or "", o.mode))
        return found, hidden

    def get_info(self, object_id: int) -> ObjectInfo:
        """One object by its server id.

        Raises:
            ObjectNotFound: no such object in this tenant.
        """
        try:
            return self._info(self.api.json("GET", self.api.path(f"/objects/{int(object_id)}/")))
        except ServerError as exc:
            if exc.status == 404:
                raise ObjectNotFound(f"no object with id {object_id}") from exc
            raise

    def _exact(self, server_name: str, mode: str) -> ObjectInfo | None:
        for info in self._objects(prefix=server_name, mode=mode):
            if info.server_name == server_name and info.mode == mode:
                return info
        return None

    def find(self, name: str, *, gateway: bool | None = None) -> ObjectInfo:
        """The object called ``name``: client-side first (by its encrypted name), then gateway.

        Args:
            name: the real name.
            gateway: True for gateway objects only, False for client-side only, None for both.

        Raises:
            ObjectNotFound: no such object (client-side objects are found only with the key
                that stored them).
            InvalidName, ServerError, NetworkError, KeyBackendFailure.
        """
        check_name(name)
        if gateway is not True and self.keys.configured:
            found = self._exact(self.keys.names().encrypt(name), "client")
            if found is not None:
                return found
        if gateway is not False:
            found = self._exact(name, "gateway")
            if found is not None:
                return found
        hint = (
            ""
            if gateway
            else " (client-side objects can be found only with the key that stored them)"
        )
        raise ObjectNotFound(f"no object named {name!r}{hint}")

    def remove(self, info: ObjectInfo) -> None:
        """Delete an object (the server keeps it for its retention window, then purges it).

        Raises:
            ServerError, NetworkError.
        """
        self.api.json("DELETE", self.api.path(f"/objects/{info.id}/"))

    # -- upload ----------------------------------------------------------------------------

    def _create_or_find(
        self, server_name: str, mode: str, content_type: str
    ) -> tuple[ObjectInfo, bool]:
        existing = self._exact(server_name, mode)
        if existing is not None:
            return existing, False
        payload = {"name": server_name, "mode": mode, "content_type": content_type}
        try:
            return self._info(self.api.json("POST", self.api.path("/objects/"), payload)), True
        except ServerError as exc:
            if exc.code != "name_taken":
                raise
        existing = self._exact(server_name, mode)  # created meanwhile by another upload
        if existing is None:
            raise ServerError(409, "name_taken", "the name is taken by an object of another mode")
        return existing, False

    def put(
        self,
        source: BinaryIO,
        name: str,
        *,
        size: int,
        gateway: bool = False,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Store ``size`` bytes from ``source`` as a new version of the object ``name``.

        Args:
            source: a binary stream positioned at the start of the content.
            name: the object's real name (encrypted before it is sent in client-side mode).
            size: exactly how many bytes ``source`` holds (the upload's length is declared
                before it starts, so the file must not change meanwhile).
            gateway: send plaintext to a gateway-mode object instead of encrypting here.
            content_type: sent for gateway objects only (guessed from the name by default);
                client-side objects are always ``application/octet-stream``, which reveals
                nothing.
            progress: counts plaintext bytes as they are read.

        Returns:
            The new version as the server describes it (``number``, ``size``, ...).

        Raises:
            InvalidName, NoKeyConfigured, KeyBackendFailure, ServerError, NetworkError,
            ClientError (the file changed during the upload). A failed upload stores nothing; an
            object this call created is deleted again.
        """
        check_name(name)
        if gateway:
            kind = content_type or mimetypes.guess_type(name)[0] or CLIENT_CONTENT_TYPE
            info, created = self._create_or_find(name, "gateway", kind)
            length = size
            chunks: Iterator[bytes] = _exact_chunks(source, size, progress)
            headers = {"Content-Type": kind}
        else:
            server_name = self.keys.names().encrypt(name)
            info, created = self._create_or_find(server_name, "client", CLIENT_CONTENT_TYPE)
            context = self._checked_next_context(info)
            wrap_context = {**context, NAME_BINDING_KEY: name_binding(server_name)}
            dek = secrets.token_bytes(DEK_SIZE)
            encryptor = Encryptor(dek, context, self.keys.wrap(dek, wrap_context))
            del dek
            length = len(encryptor.header) + body_size(size, encryptor.segment_size)
            chunks = self._envelope_chunks(encryptor, _exact_chunks(source, size, progress))
            headers = {"Content-Type": CLIENT_CONTENT_TYPE}
        try:
            with self.api.request(
                "PUT",
                self.api.path(f"/objects/{info.id}/content/"),
                body=chunks,
                length=length,
                headers=headers,
            ) as response:
                data = response.read()
        except BaseException:
            if created:
                with contextlib.suppress(ClientError):
                    self.remove(info)
            raise
        version: dict[str, Any] = json.loads(data)
        return version

    def put_file(
        self,
        path: Path,
        name: str,
        *,
        gateway: bool = False,
        content_type: str | None = None,
        progress: Progress | None = None,
        notify: Callable[[str], object] | None = None,
    ) -> dict[str, Any]:
        """Store the file at ``path`` as a new version of ``name``; resumable when it is large.

        A file larger than one part (``CVAULT_PART_SIZE``, 16 MiB by default) goes up in parts
        through an upload session. If the upload stops (a broken connection, a killed process),
        calling ``put_file`` again with the same file and name continues where it stopped, as
        long as the file did not change (``vault.client.resume``).

        Args:
            notify: told, in a sentence, when an upload resumes or starts over.

        Returns:
            The new version as the server describes it.

        Raises:
            As ``put``; a NetworkError says the upload can be continued.
        """
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ClientError(f"cannot read {path} ({exc.strerror})") from exc
        with handle:
            stat = os.fstat(handle.fileno())
            if not os.path.isfile(path):
                raise ClientError(f"{path} is not a regular file")
            part = part_size(DEFAULT_SEGMENT_SIZE)
            if self.state_dir is None or stat.st_size <= part:
                return self.put(
                    handle,
                    name,
                    size=stat.st_size,
                    gateway=gateway,
                    content_type=content_type,
                    progress=progress,
                )
            return self._put_in_parts(
                handle, path, stat, name, part, gateway, content_type, progress, notify or _quiet
            )

    def _put_in_parts(
        self,
        handle: BinaryIO,
        path: Path,
        stat: os.stat_result,
        name: str,
        part: int,
        gateway: bool,
        content_type: str | None,
        progress: Progress | None,
        notify: Callable[[str], object],
    ) -> dict[str, Any]:
        check_name(name)
        assert self.state_dir is not None  # noqa: S101  (put_file checked)
        mode = "gateway" if gateway else "client"
        kind = CLIENT_CONTENT_TYPE
        if gateway:
            kind = content_type or mimetypes.guess_type(name)[0] or CLIENT_CONTENT_TYPE
            server_name = name
        else:
            server_name = self.keys.names().encrypt(name)
        info, _ = self._create_or_find(server_name, mode, kind)
        key = {"url": self.api.url, "tenant": self.tenant_slug(), "object": info.id, "mode": mode}
        identity = {**key, **file_identity(path, stat), "part_size": part}
        state = UploadState(self.state_dir, {**key, "path": identity["path"]})
        for _attempt in range(2):  # a second attempt only after the file was found changed
            session = self._resumed_session(state, identity, notify)
            if session is not None and session.get("complete"):
                state.remove()
                return dict(session["version"])
            if session is None:
                session = self._new_session(state, identity, info, server_name, kind, stat)
            elif session["offset"]:
                notify(f"resuming the upload at byte {session['offset']} of {session['length']}")
            try:
                if gateway:
                    version = self._send_plain_parts(handle, session, stat.st_size, part, progress)
                else:
                    version = self._send_envelope_parts(
                        handle, state, info, server_name, session, stat.st_size, part, progress
                    )
            except _FileChanged:
                notify("the file changed since the upload was interrupted; starting over")
                self._abandon(state)
                if progress is not None:
                    progress.done = 0
                continue
            except ServerError as exc:
                if exc.status in (400, 404, 409, 410, 413) and exc.code != "offset_mismatch":
                    self._abandon(state)  # the session cannot succeed: start afresh next time
                raise
            except (NetworkError, OSError) as exc:
                raise NetworkError(
                    f"{exc}; the upload stopped: run the same 'cvault put' again to continue "
                    "where it stopped"
                ) from exc
            state.remove()
            return version
        raise ClientError("the file keeps changing while it is uploaded; nothing was stored")

    def _upload_path(self, upload: str, suffix: str = "") -> str:
        return self.api.path(f"/uploads/{upload}/{suffix}")

    def _resumed_session(
        self, state: UploadState, identity: dict[str, Any], notify: Callable[[str], object]
    ) -> dict[str, Any] | None:
        saved, stale = state.load(identity)
        if stale is not None:
            notify("the file changed since the upload was interrupted; starting over")
            state.data = {"upload": stale}
            self._abandon(state)
        if saved is None:
            return None
        try:
            session: dict[str, Any] = self.api.json("GET", self._upload_path(saved["upload"]))
        except ServerError as exc:
            if exc.status in (404, 410):
                state.remove()
                return None
            raise
        return session

    def _new_session(
        self,
        state: UploadState,
        identity: dict[str, Any],
        info: ObjectInfo,
        server_name: str,
        kind: str,
        stat: os.stat_result,
    ) -> dict[str, Any]:
        if info.mode == "gateway":
            payload = {"object": info.id, "length": stat.st_size, "content_type": kind}
            session: dict[str, Any] = self.api.json("POST", self.api.path("/uploads/"), payload)
            state.data = {}
            state.save(**identity, upload=session["id"])
            return session
        info = self.get_info(info.id)  # the next version, as of now
        context = self._checked_next_context(info)
        dek = secrets.token_bytes(DEK_SIZE)
        wrap_context = {**context, NAME_BINDING_KEY: name_binding(server_name)}
        encryptor = Encryptor(dek, context, self.keys.wrap(dek, wrap_context))
        del dek
        length = len(encryptor.header) + body_size(stat.st_size, encryptor.segment_size)
        payload = {"object": info.id, "length": length}
        session = self.api.json("POST", self.api.path("/uploads/"), payload)
        if session.get("envelope_context") != context:
            with contextlib.suppress(ClientError):
                self.api.json("DELETE", self._upload_path(session["id"]))
            raise ClientError(
                "the server proposed an unexpected encryption context for the upload; "
                "nothing was sent"
            )
        state.data = {}
        state.save(
            **identity,
            upload=session["id"],
            header=base64.b64encode(encryptor.header).decode("ascii"),
        )
        return session

    def _abandon(self, state: UploadState) -> None:
        upload = state.data.get("upload")
        if upload:
            with contextlib.suppress(ClientError):
                self.api.json("DELETE", self._upload_path(str(upload)))
        state.remove()

    def _send_part(
        self, upload: str, offset: int, chunks: Iterator[bytes], length: int
    ) -> dict[str, Any]:
        with self.api.request(
            "PUT",
            self._upload_path(upload, f"parts/{offset}/"),
            body=chunks,
            length=length,
            headers={"Content-Type": CLIENT_CONTENT_TYPE},
        ) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def _send_plain_parts(
        self,
        handle: BinaryIO,
        session: dict[str, Any],
        size: int,
        part: int,
        progress: Progress | None,
    ) -> dict[str, Any]:
        offset = int(session["offset"])
        if progress is not None:
            progress.update(offset)
        while True:
            length = min(part, size - offset)
            answer = self._send_part(
                session["id"], offset, range_chunks(handle, offset, length, progress), length
            )
            offset = int(answer["offset"])
            if answer.get("complete"):
                return dict(answer["version"])

    def _send_envelope_parts(
        self,
        handle: BinaryIO,
        state: UploadState,
        info: ObjectInfo,
        server_name: str,
        session: dict[str, Any],
        size: int,
        part: int,
        progress: Progress | None,
    ) -> dict[str, Any]:
        raw = base64.b64decode(state.data["header"])
        header = parse_header(raw)
        context = dict(session["envelope_context"])
        if header.context != context:
            raise _FileChanged  # the saved header was made for another version: start again
        segment = header.segment_size
        per_part = part // segment
        offset = int(session["offset"])
        index, rest = divmod(offset - len(raw), segment + TAG_SIZE) if offset else (0, 0)
        if rest or index < 0:
            raise _FileChanged  # not a part boundary of this envelope: start again
        dek = self.keys.unwrap(header, {**context, NAME_BINDING_KEY: name_binding(server_name)})
        encryptor = Encryptor.resume(header, dek, context, next_segment=index)
        del dek
        if progress is not None:
            progress.update(min(index * segment, size))
        while True:
            start, end = index * segment, min((index + per_part) * segment, size)
            digest = range_digest(handle, start, end - start)
            inflight = state.data.get("inflight") or {}
            if inflight.get("offset") == offset and inflight.get("sha256") != digest:
                raise _FileChanged
            state.save(inflight={"offset": offset, "sha256": digest})
            final = end == size
            count = -(-(end - start) // segment)
            length = (end - start) + count * TAG_SIZE + (len(raw) if offset == 0 else 0)
            handle.seek(start)
            sealed = encryptor.iter_segments(
                CountingReader(handle, progress), end - start, final=final
            )
            chunks = _prepend(raw, sealed) if offset == 0 else sealed
            answer = self._send_part(session["id"], offset, chunks, length)
            offset, index = int(answer["offset"]), index + count
            if answer.get("complete"):
                return dict(answer["version"])

    @staticmethod
    def _envelope_chunks(encryptor: Encryptor, plaintext: Iterator[bytes]) -> Iterator[bytes]:
        yield encryptor.header
        yield from encryptor.iter_body(plaintext)

    def _checked_next_context(self, info: ObjectInfo) -> dict[str, str]:
        expected = {
            "tenant": self.tenant_slug(),
            "object": str(info.id),
            "version": str((info.version or 0) + 1),
        }
        if info.next_context != expected:
            raise ClientError(
                "the server proposed an unexpected encryption context for the upload; "
                "nothing was sent"
            )
        return expected

    # -- download --------------------------------------------------------------------------

    def _content(
        self, info: ObjectInfo, *, version: int, headers: dict[str, str] | None = None
    ) -> Response:
        return self.api.request(
            "GET",
            self.api.path(f"/objects/{info.id}/content/", {"version": version}),
            headers={"Accept": "*/*", **(headers or {})},
        )

    def _expected_context(self, info: ObjectInfo, version: int) -> dict[str, str]:
        return {"tenant": self.tenant_slug(), "object": str(info.id), "version": str(version)}

    def header(self, info: ObjectInfo, *, version: int | None = None) -> EnvelopeHeader:
        """The envelope header of a client-side object's version, fetched with a ranged GET.

        Only the first 64 KiB (the largest a header can be) are requested.

        Raises:
            ObjectNotFound: the object has no version.
            DecryptionFailed: the answer is not a valid envelope header.
        """
        number = version or info.version
        if number is None:
            raise ObjectNotFound(f"{info.name or info.id} has no content yet")
        with self._content(
            info, version=number, headers={"Range": f"bytes=0-{MAX_HEADER_SIZE - 1}"}
        ) as response:
            data = response.read(MAX_HEADER_SIZE)
        try:
            header, _ = read_header(io.BytesIO(data))
        except EnvelopeError as exc:
            raise DecryptionFailed("the stored object is not a valid envelope") from exc
        return header

    def version_numbers(self, info: ObjectInfo) -> tuple[int, ...]:
        """The numbers of every stored version of an object, oldest first.

        Raises:
            ServerError, NetworkError.
        """
        numbers: set[int] = set()
        for raw in self.api.pages(self.api.path(f"/objects/{info.id}/versions/")):
            try:
                numbers.add(int(raw["number"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise NetworkError(
                    f"{self.api.url} answered a version list in an unexpected shape"
                ) from exc
        return tuple(sorted(numbers))

    def rewrap(self, info: ObjectInfo, version: int, current: Mapping[str, KeyRef]) -> bool:
        """Rewrap one client-side version's data key under the current versions of our keys.

        Fetches only the version's header (a ranged GET), checks that its context is this
        tenant, object and version, unwraps the data key with the wrap context it was stored
        under (the envelope's context plus the ``cvault-name`` binding), wraps it again (see
        ``KeyRing.rewrap``) and sends the new header to
        ``PUT /objects/{id}/versions/{n}/header/``. The body is not touched: the server accepts
        the header only if everything but the stanzas is unchanged. Doing it twice is harmless.

        Args:
            info: a client-side object.
            version: one of its version numbers.
            current: ``KeyRing.current_versions()``.

        Returns:
            True if the header was replaced; False if it was already current (nothing sent).

        Raises:
            DecryptionFailed, WrongKey: the header is not one of ours, for this object and
                version (tampered, moved, or stored under a key we do not have).
            KeyBackendFailure, ServerError, NetworkError.
        """
        header = self.header(info, version=version)
        context = self._expected_context(info, version)
        if header.context != context:
            raise DecryptionFailed(
                "authentication failed: the envelope was made for another object or version"
            )
        try:
            new = self.keys.rewrap(
                header, {**context, NAME_BINDING_KEY: name_binding(info.server_name)}, current
            )
        except EnvelopeError as exc:
            raise ClientError(f"cannot build the new header ({exc})") from exc
        if new is None:
            return False
        with self.api.request(
            "PUT",
            self.api.path(f"/objects/{info.id}/versions/{version}/header/"),
            body=new.to_bytes(),
            headers={"Content-Type": CLIENT_CONTENT_TYPE},
        ) as response:
            response.read()
        return True

    def download(
        self,
        info: ObjectInfo,
        destination: Writable,
        *,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the plaintext of a version (the latest by default) to ``destination``.

        Client-side objects are decrypted here: the envelope's context must be this tenant,
        object and version; the DEK is unwrapped by the user's key with the wrap bound to the
        object's encrypted name; each segment is written only once it authenticated.

        Returns:
            The number of plaintext bytes written.

        Raises:
            ObjectNotFound: the object has no version.
            WrongKey, DecryptionFailed: another user's key, or a tampered, truncated or moved
                envelope. Segments before the failing one may already have been written: write
                to a temporary place (``get_file`` does).
            ServerError, NetworkError, KeyBackendFailure.
        """
        number = version or info.version
        if number is None:
            raise ObjectNotFound(f"{info.name or info.id} has no content yet")
        with self._content(info, version=number) as response:
            reader = _CountingReader(response, progress)
            if info.mode != "client":
                expected = response.headers.get("Content-Length")
                written = 0
                try:
                    while chunk := reader.read(CHUNK):
                        destination.write(chunk)
                        written += len(chunk)
                except NetworkError as exc:
                    raise NetworkError(f"{exc}; {_ABORTED}") from exc
                if expected is not None and written != int(expected):
                    raise NetworkError(f"the download was cut short; {_ABORTED}")
                return written
            return self._decrypt(info, number, cast(BinaryIO, reader), destination)

    def _decrypt(
        self, info: ObjectInfo, number: int, reader: BinaryIO, destination: Writable
    ) -> int:
        context = self._expected_context(info, number)
        try:
            header, _ = read_header(reader)
        except EnvelopeFormatError as exc:
            raise DecryptionFailed(
                "authentication failed: the stored object is not a valid envelope"
            ) from exc
        if header.context != context:
            raise DecryptionFailed(
                "authentication failed: the envelope was made for another object or version"
            )
        dek = self.keys.unwrap(
            header, {**context, NAME_BINDING_KEY: name_binding(info.server_name)}
        )
        try:
            return Decryptor(header, dek, context).decrypt_body_stream(reader, destination)
        except AuthenticationFailed as exc:
            raise DecryptionFailed(f"authentication failed: {exc}") from exc

    def get_file(
        self,
        info: ObjectInfo,
        path: Path,
        *,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Download into ``path``: a temporary file next to it, renamed only once all of it
        authenticated; on any failure the temporary file is deleted and ``path`` is untouched.

        Returns:
            The number of bytes written.

        Raises:
            As ``download``, and ClientError if ``path``'s directory is not writable.
        """
        directory = path.parent if str(path.parent) else Path(".")
        try:
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".cvault")
        except OSError as exc:
            raise ClientError(f"cannot write to {directory} ({exc.strerror})") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                written = self.download(info, handle, version=version, progress=progress)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return written
