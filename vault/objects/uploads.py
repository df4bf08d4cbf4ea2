"""Resumable uploads: a version sent in parts, over as many requests as the client needs.

A session fixes the upload's total length. Parts arrive in order, each at the offset the
session has reached; a part cut short stores nothing, so the client sends it again. When the
last byte arrives the version is made, in the same transaction that marks the session complete,
so a retried last part never makes a second version.

Gateway parts are plaintext: each is encrypted as it is read, under a DEK of its own wrapped by
the tenant's keys (context: tenant, upload, offset), and at completion the parts are decrypted
one after the other and re-encrypted into the version's envelope (or its deduplicated blob).
Plaintext never touches disk. Client-side parts are pieces of the client's envelope; at
completion they are checked and stored exactly as a single-request upload would be.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from vault.objects import services
from vault.objects.models import ObjectMode, ObjectVersion, StoredObject, UploadPart, UploadSession
from vault.tokens.models import ApiToken

logger = logging.getLogger(__name__)


class OffsetMismatch(services.ObjectError):
    code, status = "offset_mismatch", 409


class PartBeyondEnd(services.ObjectError):
    code, status = "part_beyond_end", 400


class EmptyPart(services.ObjectError):
    code, status = "empty_part", 400


class UploadExpired(services.ObjectError):
    code, status = "upload_expired", 410


class UploadComplete(services.ObjectError):
    code, status = "upload_complete", 409


class BadLength(services.ObjectError):
    code, status = "bad_length", 400


def upload_create(
    *, obj: StoredObject, length: int, content_type: str, token: ApiToken | None
) -> UploadSession:
    """Open a session for ``length`` bytes (gateway: plaintext; client-side: the envelope).

    A client-side session is made for the object's next version: the envelope's context must
    name that version, and another version stored first makes the session fail at completion.

    Raises:
        BadLength, ObjectTooLarge.
    """
    services._refuse_if_shredded(obj.tenant)
    if length < 1:
        raise BadLength("a resumable upload holds at least one byte; use a plain upload")
    if length > settings.VAULT_MAX_OBJECT_BYTES:
        raise services.ObjectTooLarge(
            f"objects are at most {settings.VAULT_MAX_OBJECT_BYTES} bytes"
        )
    number = services._next_number(obj) if obj.mode == ObjectMode.CLIENT else None
    return UploadSession.objects.create(
        object=obj,
        length=length,
        number=number,
        content_type=content_type,
        created_by=token,
        expires_at=timezone.now() + timedelta(hours=settings.VAULT_UPLOAD_SESSION_HOURS),
    )


def _part_context(session: UploadSession, offset: int) -> dict[str, str]:
    tenant = session.object.tenant
    return {"tenant": tenant.slug, "upload": str(session.pk), "offset": str(offset)}


def upload_part(
    *, session: UploadSession, offset: int, stream: BinaryIO, length: int | None
) -> UploadSession:
    """Append the part at ``offset``; complete the upload when it is the last.

    Raises:
        UploadExpired, UploadComplete, OffsetMismatch (the message says where to continue),
        LengthRequired, PartBeyondEnd, EmptyPart, UploadTruncated; at completion everything the
        single-request upload raises (MalformedEnvelope, ContextMismatch, VersionConflict, key
        backend errors). A part that fails stores nothing.
    """
    if session.expires_at <= timezone.now():
        raise UploadExpired("the upload session has expired; start a new upload")
    if session.version_id is not None:
        raise UploadComplete("the upload is complete")
    if length is None:
        raise services.LengthRequired("send Content-Length with the part")
    if offset != session.received:
        raise OffsetMismatch(f"the upload continues at offset {session.received}")
    if offset + length > session.length:
        raise PartBeyondEnd(f"the upload is {session.length} bytes long")
    if length == 0:
        if session.received < session.length:
            raise EmptyPart("a part holds at least one byte")
        return upload_complete(session=session)  # a retry of a completion that failed
    obj = session.object
    body = services._BoundedBody(stream, length)
    storage = storages["default"]
    if obj.mode == ObjectMode.GATEWAY:
        header, name, _ = services.seal_spool(obj.tenant, _part_context(session, offset), body)
    else:
        header = b""
        name, _ = services.store_chunks(
            f"{obj.tenant_id}/uploads/{session.pk}/{offset:020d}",
            iter(lambda: body.read(services.READ_CHUNK), b""),
        )
    try:
        with transaction.atomic():
            # Compare and swap: of two requests sending the same part, one wins.
            moved = UploadSession.objects.filter(pk=session.pk, received=offset).update(
                received=offset + length
            )
            if not moved:
                raise OffsetMismatch("another request sent this part first")
            UploadPart.objects.create(
                session=session, offset=offset, size=length, header=header, storage_name=name
            )
    except BaseException:
        storage.delete(name)
        raise
    session.received = offset + length
    if session.received == session.length:
        return upload_complete(session=session)
    return session


def _gateway_plaintext(session: UploadSession) -> Iterator[bytes]:
    tenant = session.object.tenant
    for part in session.parts.order_by("offset"):
        yield from services.spooled_plaintext(
            tenant, bytes(part.header), part.storage_name, _part_context(session, part.offset)
        )


class _PartsReader(io.RawIOBase):
    """The stored parts of a client-side upload, one after the other, as a stream."""

    def __init__(self, session: UploadSession) -> None:
        names = session.parts.order_by("offset").values_list("storage_name", flat=True)
        self._chunks = itertools.chain.from_iterable(
            services._stream_file(name) for name in list(names)
        )
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def upload_complete(*, session: UploadSession) -> UploadSession:
    """Make the version from the received parts, then discard the parts.

    The session is marked complete in the version's own transaction; of two completions
    running at once, the second rolls back.
    """
    obj = session.object
    if services._next_number(obj) != (session.number or services._next_number(obj)):
        raise services.VersionConflict(
            "another version was stored after this upload started; upload again"
        )

    def mark_complete(version: ObjectVersion) -> None:
        claimed = UploadSession.objects.filter(pk=session.pk, version__isnull=True).update(
            version=version
        )
        if not claimed:
            raise services.VersionConflict("the upload was completed by another request")
        session.version = version

    if obj.mode == ObjectMode.CLIENT:
        services.version_store_client(
            obj=obj,
            stream=_PartsReader(session),  # type: ignore[arg-type]
            length=session.length,
            content_type=session.content_type,
            token=session.created_by,
            on_saved=mark_complete,
        )
    elif obj.tenant.deduplicate:
        digest = hashlib.sha256()
        for chunk in _gateway_plaintext(session):
            digest.update(chunk)
        services.store_deduplicated(
            obj=obj,
            plaintext=lambda: _gateway_plaintext(session),
            content_hash=digest.digest(),
            content_type=session.content_type,
            token=session.created_by,
            on_saved=mark_complete,
        )
    else:
        services.gateway_store_plaintext(
            obj=obj,
            source=_gateway_plaintext(session),
            content_type=session.content_type,
            token=session.created_by,
            on_saved=mark_complete,
        )
    parts = list(session.parts.all())
    UploadPart.objects.filter(session=session).delete()
    services._discard_parts(parts)
    return session


def upload_abort(*, session: UploadSession) -> None:
    """Cancel an upload: its parts are deleted at once."""
    parts = list(session.parts.all())
    session.delete()
    services._discard_parts(parts)


def uploads_purge_expired(*, now: Any = None) -> int:
    """Remove sessions past their expiry (complete or not) and their parts. Returns how many."""
    removed = 0
    for session in UploadSession.objects.filter(expires_at__lt=now or timezone.now()):
        upload_abort(session=session)
        removed += 1
    if removed:
        logger.info("removed %d expired upload session(s)", removed)
    return removed
