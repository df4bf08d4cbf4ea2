"""Storing and reading objects. Plaintext exists only in memory, one segment at a time, and only
in gateway mode; client-side objects arrive and leave as envelopes the vault cannot open."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from kms_plugins.types import WrappedKey
from vault.audit.services import audit_record
from vault.crypto import dedup, envelope
from vault.crypto.errors import EnvelopeError
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.keys.services import KeySuspended, binding_check_usable
from vault.objects.models import (
    Blob,
    DedupKey,
    HeaderHistory,
    ObjectMode,
    ObjectVersion,
    StoredObject,
    UploadPart,
)
from vault.tenants.models import Tenant
from vault.tokens.models import ApiToken

logger = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024


class ObjectError(Exception):
    """Base of the object services' errors: ``code`` and ``status`` become the API answer."""

    code = "object_error"
    status = 400


class NameTaken(ObjectError):
    code, status = "name_taken", 409


class TenantNotBound(ObjectError):
    code, status = "tenant_not_bound", 409


class LengthRequired(ObjectError):
    code, status = "length_required", 411


class ObjectTooLarge(ObjectError):
    code, status = "object_too_large", 413


class UploadTruncated(ObjectError):
    code, status = "upload_truncated", 400


class MalformedEnvelope(ObjectError):
    code, status = "malformed_envelope", 400


class ContextMismatch(ObjectError):
    code, status = "context_mismatch", 400


class VersionConflict(ObjectError):
    code, status = "version_conflict", 409


class WrongMode(ObjectError):
    code, status = "wrong_mode", 409


class NoVersion(ObjectError):
    code, status = "no_such_version", 404


class RangeNotSatisfiable(ObjectError):
    code, status = "range_not_satisfiable", 416


class HeaderMismatch(ObjectError):
    code, status = "header_mismatch", 400


class NotYours(ObjectError):
    code, status = "not_the_uploader", 403


class BadContentType(ObjectError):
    code, status = "bad_content_type", 400


class KeyUnusable(ObjectError):
    code, status = "key_suspended", 503


def _usable(binding: KeyBinding) -> None:
    try:
        binding_check_usable(binding)
    except KeySuspended as exc:
        raise KeyUnusable(str(exc)) from exc


class ObjectShredded(ObjectError):
    code, status = "object_shredded", 410


class TenantShredded(ObjectError):
    code, status = "tenant_shredded", 410


def _refuse_if_shredded(tenant: Tenant) -> None:
    if tenant.shredded_at is not None:
        raise TenantShredded("the tenant's keys were destroyed: it stores nothing new")


def version_context(obj: StoredObject, number: int) -> dict[str, str]:
    """The encryption context of a version: it binds the ciphertext to its tenant and place."""
    return {"tenant": obj.tenant.slug, "object": str(obj.pk), "version": str(number)}


def object_create(
    *, tenant: Tenant, name: str, mode: str, content_type: str, token: ApiToken | None
) -> StoredObject:
    """Create an object (no version yet)."""
    _refuse_if_shredded(tenant)
    try:
        with transaction.atomic():
            obj = StoredObject.objects.create(
                tenant=tenant, name=name, mode=mode, content_type=content_type, created_by=token
            )
            audit_record(
                "object.create",
                tenant=tenant,
                resource_type="object",
                resource_id=obj.pk,
                details={"mode": mode},
            )
            return obj
    except IntegrityError:
        raise NameTaken(f"an object named {name!r} exists") from None


def object_delete(*, obj: StoredObject) -> None:
    """Soft-delete: the object disappears from lists and reads now; storage is purged later."""
    with transaction.atomic():
        changed = StoredObject.objects.filter(pk=obj.pk, deleted_at__isnull=True).update(
            deleted_at=timezone.now()
        )
        if changed:
            audit_record(
                "object.delete", tenant=obj.tenant, resource_type="object", resource_id=obj.pk
            )


def objects_purge_deleted(*, now: Any = None) -> int:
    """Remove objects soft-deleted longer ago than ``VAULT_OBJECT_RETENTION_DAYS``.

    The stored bodies go first, then the rows, one object at a time; a crash in between leaves
    rows whose files are gone, which the next run removes. Returns how many objects went.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.VAULT_OBJECT_RETENTION_DAYS)
    storage = storages["default"]
    purged = 0
    for obj in StoredObject.objects.filter(deleted_at__lt=cutoff).iterator():
        for session in obj.upload_sessions.all():
            _discard_parts(session.parts.all())
        for name in obj.versions.exclude(storage_name="").values_list("storage_name", flat=True):
            if storage.exists(name):
                storage.delete(name)
        blob_ids = set(obj.versions.filter(blob__isnull=False).values_list("blob_id", flat=True))
        with transaction.atomic():
            obj.upload_sessions.all().delete()
            obj.versions.all().delete()
            obj.delete()
        _purge_unused_blobs(blob_ids)
        purged += 1
    if purged:
        logger.info("purged %d deleted object(s)", purged)
    return purged


def _purge_unused_blobs(blob_ids: set[int]) -> None:
    """Remove the blobs among ``blob_ids`` that no version holds any more: row, then file."""
    storage = storages["default"]
    for blob_id in blob_ids:
        with transaction.atomic():
            blob = Blob.objects.select_for_update().filter(pk=blob_id).first()
            if blob is None or blob.versions.exists():
                continue
            name = blob.storage_name
            blob.delete()
        if storage.exists(name):
            storage.delete(name)


def _discard_parts(parts: Iterable[UploadPart]) -> None:
    storage = storages["default"]
    for part in parts:
        if storage.exists(part.storage_name):
            storage.delete(part.storage_name)


ORPHAN_MIN_AGE = timedelta(hours=24)


def _stored_files(storage: Any, directory: str = "") -> Iterator[str]:
    try:
        folders, files = storage.listdir(directory)
    except FileNotFoundError:  # nothing stored yet
        return
    for name in files:
        yield f"{directory}/{name}" if directory else name
    for folder in folders:
        yield from _stored_files(storage, f"{directory}/{folder}" if directory else folder)


def storage_sweep_orphans(*, now: Any = None) -> int:
    """Remove stored bodies that no version row names, once older than a day.

    A crash between writing a body and recording its version leaves such a file; the age
    threshold keeps the sweep away from uploads still in progress. Returns how many went.
    """
    storage = storages["default"]
    cutoff = (now or timezone.now()) - ORPHAN_MIN_AGE
    removed = 0
    for name in _stored_files(storage):
        if (
            ObjectVersion.objects.filter(storage_name=name).exists()
            or Blob.objects.filter(storage_name=name).exists()
            or UploadPart.objects.filter(storage_name=name).exists()
        ):
            continue
        if storage.get_modified_time(name) > cutoff:
            continue
        storage.delete(name)
        removed += 1
    if removed:
        logger.info("removed %d orphaned stored file(s)", removed)
    return removed


def _next_number(obj: StoredObject) -> int:
    latest = obj.versions.order_by("-number").values_list("number", flat=True).first()
    return (latest or 0) + 1


class _BoundedBody(io.RawIOBase):
    """The request body, read in chunks: refuses more than the limit, notices a short body."""

    def __init__(self, stream: BinaryIO, length: int, digest: Any = None) -> None:
        self._stream = stream
        self._left = length
        self._digest = digest  # a hashlib object fed with every byte read, if given

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        data = self._stream.read(min(len(view), self._left))
        if not data:
            raise UploadTruncated("the upload ended before its declared length")
        view[: len(data)] = data
        self._left -= len(data)
        if self._digest is not None:
            self._digest.update(data)
        return len(data)


class _IterFile(io.RawIOBase):
    """A read-only file over an iterator of byte strings, for ``Storage.save``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.written = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.written += size
        return size


def _audit_written(version: ObjectVersion) -> None:
    """The event of a stored version, in the transaction that records it."""
    audit_record(
        "object.write",
        tenant=version.object.tenant,
        resource_type="object",
        resource_id=version.object_id,
        details={
            "version": version.number,
            "size": version.size,
            "mode": version.object.mode,
            "deduplicated": version.blob_id is not None,
        },
    )


def _check_length(length: int | None) -> int:
    if length is None:
        raise LengthRequired("send Content-Length with the upload")
    if length > settings.VAULT_MAX_OBJECT_BYTES:
        raise ObjectTooLarge(f"objects are at most {settings.VAULT_MAX_OBJECT_BYTES} bytes")
    return length


def _stanzas(tenant: Tenant, dek: bytes, context: dict[str, str]) -> list[WrappedKey]:
    """The DEK wrapped by the tenant's primary key, and by its recovery key when it has one."""
    bindings = {
        b.role: b
        for b in KeyBinding.objects.filter(
            tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
        )
    }
    if KeyRole.PRIMARY not in bindings:
        raise TenantNotBound("the tenant is not bound to a key backend")
    order = [bindings[KeyRole.PRIMARY]] + (
        [bindings[KeyRole.RECOVERY]] if KeyRole.RECOVERY in bindings else []
    )
    for binding in order:
        _usable(binding)
    # Recorded before the backend is asked: no data key is wrapped without its event.
    audit_record(
        "key.wrap",
        tenant=tenant,
        resource_type="key",
        resource_id=order[0].key_id,
        details={"keys": [b.key_id for b in order], "context": context},
    )
    return [key_backend(b.backend_alias).wrap(b.key_id, dek, context) for b in order]


def store_chunks(name: str, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write ``chunks`` to the default storage as ``name``, streaming.

    Returns:
        The name it was stored under and how many bytes were written.

    A write that fails half-way (a body cut short or too large, a key backend gone) leaves
    nothing behind.
    """
    storage = storages["default"]
    source = _IterFile(chunks)
    stored = name
    try:
        stored = storage.save(name, source)  # type: ignore[arg-type]
        _make_durable(storage, stored)
    except BaseException:
        if storage.exists(stored):
            storage.delete(stored)
        raise
    return stored, source.written


def _make_durable(storage: Any, name: str) -> None:
    """On a local file store, flush the body and the directory entries leading to it (which
    ``save`` may have just made) to the disk before the caller commits the row that names it:
    a power cut must not leave a row without its body."""
    try:
        path = storage.path(name)
        root = os.path.realpath(storage.path(""))
    except NotImplementedError:
        return  # a remote store: durable when its write call returns
    with open(path, "rb") as written:
        os.fsync(written.fileno())
    directory = os.path.dirname(os.path.realpath(path))
    while True:
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        if directory == root or len(directory) <= len(root):
            break
        directory = os.path.dirname(directory)


def _save_version(
    *,
    obj: StoredObject,
    number: int,
    header: bytes,
    body: Iterable[bytes],
    size_of: Any,
    content_type: str,
    token: ApiToken | None,
    on_saved: Callable[[ObjectVersion], None] | None = None,
    refresh: dict[str, str] | None = None,
) -> ObjectVersion:
    """Write the body to storage, then record the version; nothing is visible until both hold.

    ``refresh``: for a header whose stanzas the vault made, its encryption context; stanzas
    made under a key version that a rotation has replaced meanwhile are rewrapped first.

    ``on_saved`` runs in the transaction that records the version (an upload session marks
    itself complete there); if it raises, the version is not recorded.
    """
    storage = storages["default"]
    stored, written = store_chunks(f"{obj.tenant_id}/{obj.pk}/{number}-{uuid.uuid4().hex}", body)
    try:
        if refresh is not None:
            header = current_stanzas(obj.tenant, header, refresh)
        return _record_version(
            on_saved,
            object=obj,
            number=number,
            size=size_of(written),
            body_size=written,
            header=header,
            storage_name=stored,
            content_type=content_type,
            created_by=token,
        )
    except BaseException:
        storage.delete(stored)
        raise


def current_stanzas(tenant: Tenant, header: bytes, context: dict[str, str]) -> bytes:
    """``header`` with any stanza made under an older version than its key's current one
    rewrapped to the current version.

    A gateway upload wraps its data key when it starts and records its header when its body has
    streamed; a rotation in between would otherwise leave it under the old version, after the
    rotation's campaign had listed what to rewrap.
    """
    current = dict(
        KeyBinding.objects.filter(
            tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
        ).values_list("key_id", "current_version")
    )
    parsed = envelope.parse_header(header)
    stale = [
        index
        for index, stanza in enumerate(parsed.stanzas)
        if stanza.key.key_id in current and stanza.key.version < current[stanza.key.key_id]
    ]
    if not stale:
        return header
    bindings = {
        b.key_id: b
        for b in KeyBinding.objects.filter(
            tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
        )
    }
    dek = _unwrap_with_tenant_keys(tenant, parsed, context)
    stanzas = list(parsed.stanzas)
    for index in stale:
        binding = bindings[stanzas[index].key.key_id]
        audit_record(
            "key.wrap",
            tenant=tenant,
            resource_type="key",
            resource_id=binding.key_id,
            details={"keys": [binding.key_id], "context": context, "refresh": True},
        )
        stanzas[index] = key_backend(binding.backend_alias).wrap(binding.key_id, dek, context)
    return envelope.replace_stanzas(parsed, stanzas, dek=dek)


def _record_version(
    on_saved: Callable[[ObjectVersion], None] | None, **fields: Any
) -> ObjectVersion:
    """Create a version row with its audit event (and ``on_saved``) in one transaction.

    Raises:
        VersionConflict: another upload took the version number first.
    """
    try:
        with transaction.atomic():
            version = ObjectVersion.objects.create(**fields)
            _audit_written(version)
            if on_saved is not None:
                on_saved(version)
            return version
    except IntegrityError:
        raise VersionConflict("another upload created this version first; try again") from None


def version_store_gateway(
    *,
    obj: StoredObject,
    stream: BinaryIO,
    length: int | None,
    content_type: str,
    token: ApiToken | None,
) -> ObjectVersion:
    """Encrypt a request body as it is read and store it as the object's next version.

    Memory stays bounded whatever the size; plaintext never touches disk. The DEK is wrapped by
    the tenant's backend before anything is stored.
    """
    if obj.mode != ObjectMode.GATEWAY:
        raise WrongMode("this object is client-side: upload an envelope")
    _refuse_if_shredded(obj.tenant)
    length = _check_length(length)
    if not obj.tenant.deduplicate:
        return gateway_store_plaintext(
            obj=obj, source=_BoundedBody(stream, length), content_type=content_type, token=token
        )
    # Deduplication needs the content's hash before it can choose the key: first spool the
    # body encrypted under a key of its own (hashing it on the way), then re-encrypt it.
    tenant = obj.tenant
    digest = hashlib.sha256()
    context = {"tenant": tenant.slug, "spool": uuid.uuid4().hex}
    spool_header, spool_name, _ = seal_spool(tenant, context, _BoundedBody(stream, length, digest))
    try:
        return store_deduplicated(
            obj=obj,
            plaintext=lambda: spooled_plaintext(tenant, spool_header, spool_name, context),
            content_hash=digest.digest(),
            content_type=content_type,
            token=token,
        )
    finally:
        storages["default"].delete(spool_name)


def gateway_store_plaintext(
    *,
    obj: StoredObject,
    source: envelope.Source,
    content_type: str,
    token: ApiToken | None,
    on_saved: Callable[[ObjectVersion], None] | None = None,
) -> ObjectVersion:
    """Encrypt ``source`` under a fresh DEK as the object's next version (no deduplication)."""
    number = _next_number(obj)
    context = version_context(obj, number)
    dek = os.urandom(envelope.DEK_SIZE)
    encryptor = envelope.Encryptor(dek, context, _stanzas(obj.tenant, dek, context))
    del dek
    body = encryptor.iter_body(source)
    segment = encryptor.segment_size
    return _save_version(
        obj=obj,
        number=number,
        header=encryptor.header,
        body=body,
        size_of=lambda written: envelope.plaintext_size(written, segment),
        content_type=content_type,
        token=token,
        on_saved=on_saved,
        refresh=context,
    )


def _seal(
    tenant: Tenant, dek: bytes, context: dict[str, str], source: envelope.Source, name: str
) -> tuple[bytes, str, int]:
    """Encrypt ``source`` under ``dek`` (wrapped by the tenant's keys) into storage as ``name``.

    Returns:
        The envelope header, the stored name and the body's size. A failure stores nothing.
    """
    encryptor = envelope.Encryptor(dek, context, _stanzas(tenant, dek, context))
    stored, written = store_chunks(name, encryptor.iter_body(source))
    return encryptor.header, stored, written


def seal_spool(
    tenant: Tenant, context: dict[str, str], source: envelope.Source
) -> tuple[bytes, str, int]:
    """Encrypt plaintext that must wait (a part of an upload, content to deduplicate) under a
    fresh DEK wrapped by the tenant's keys, into storage. Plaintext never touches disk.

    Returns:
        As ``_seal``.
    """
    name = f"{tenant.pk}/spool/{uuid.uuid4().hex}"
    return _seal(tenant, os.urandom(envelope.DEK_SIZE), context, source, name)


def spooled_plaintext(
    tenant: Tenant, header: bytes, storage_name: str, context: dict[str, str]
) -> Iterator[bytes]:
    """The plaintext of something ``seal_spool`` stored, decrypted segment by segment."""
    parsed = envelope.parse_header(header)
    dek = _unwrap_with_tenant_keys(tenant, parsed, context)
    decryptor = envelope.Decryptor(parsed, dek, context)
    del dek
    yield from decryptor.iter_body(_stream_file(storage_name))


def _dedup_key(tenant: Tenant) -> bytes:
    """The tenant's deduplication key, made (and wrapped by the tenant's keys) on first use."""
    context = {"tenant": tenant.slug, "purpose": "dedup"}
    record = DedupKey.objects.filter(tenant=tenant).first()
    if record is None:
        key = os.urandom(dedup.KEY_SIZE)
        header = envelope.Encryptor(key, context, _stanzas(tenant, key, context)).header
        try:
            with transaction.atomic():
                record = DedupKey.objects.create(tenant=tenant, header=header)
        except IntegrityError:  # made meanwhile by another upload
            record = DedupKey.objects.get(tenant=tenant)
    parsed = envelope.parse_header(bytes(record.header))
    return _unwrap_with_tenant_keys(tenant, parsed, context)


def blob_context(blob_tenant: Tenant, digest: str) -> dict[str, str]:
    """The encryption context of a deduplicated blob."""
    return {"tenant": blob_tenant.slug, "blob": digest}


def store_deduplicated(
    *,
    obj: StoredObject,
    plaintext: Callable[[], Iterator[bytes]],
    content_hash: bytes,
    content_type: str,
    token: ApiToken | None,
    on_saved: Callable[[ObjectVersion], None] | None = None,
) -> ObjectVersion:
    """Record a version whose content is stored once per tenant, as a blob.

    ``plaintext`` gives the content again (it is read only when the blob is new). The blob's
    key and id derive from the tenant's deduplication key and ``content_hash``.
    """
    tenant = obj.tenant
    key = _dedup_key(tenant)
    digest = dedup.content_id(key, content_hash)
    blob = Blob.objects.filter(tenant=tenant, digest=digest).first()
    if blob is None:
        blob_dek = dedup.content_key(key, content_hash)
        del key
        context = blob_context(tenant, digest)
        name = f"{tenant.pk}/blobs/{digest[:16]}-{uuid.uuid4().hex}"
        header, stored, written = _seal(tenant, blob_dek, context, plaintext(), name)
        del blob_dek
        header = current_stanzas(tenant, header, context)
        segment = envelope.parse_header(header).segment_size
        try:
            with transaction.atomic():
                blob = Blob.objects.create(
                    tenant=tenant,
                    digest=digest,
                    size=envelope.plaintext_size(written, segment),
                    body_size=written,
                    header=header,
                    storage_name=stored,
                )
        except IntegrityError:  # the same content arrived meanwhile: keep that copy
            storages["default"].delete(stored)
            blob = Blob.objects.get(tenant=tenant, digest=digest)
    return _record_version(
        on_saved,
        object=obj,
        number=_next_number(obj),
        size=blob.size,
        body_size=blob.body_size,
        header=b"",
        storage_name="",
        blob=blob,
        content_type=content_type,
        created_by=token,
    )


def version_store_client(
    *,
    obj: StoredObject,
    stream: BinaryIO,
    length: int | None,
    content_type: str,
    token: ApiToken | None,
    on_saved: Callable[[ObjectVersion], None] | None = None,
) -> ObjectVersion:
    """Store an envelope made by the client, after checking its header and its context.

    The vault cannot decrypt it: it checks the structure, that the context names this tenant,
    object and next version, and that the body's length is one a valid envelope can have.
    """
    if obj.mode != ObjectMode.CLIENT:
        raise WrongMode("this object is in gateway mode: upload the plaintext")
    _refuse_if_shredded(obj.tenant)
    length = _check_length(length)
    number = _next_number(obj)
    bounded = _BoundedBody(stream, length)
    reader = io.BufferedReader(bounded, buffer_size=READ_CHUNK)
    try:
        header, raw_header = envelope.read_header(reader)
    except UploadTruncated:
        raise
    except EnvelopeError as exc:
        raise MalformedEnvelope(f"not a valid envelope header ({type(exc).__name__})") from None
    expected = version_context(obj, number)
    if header.context != expected:
        raise ContextMismatch(
            f"the envelope's context must be {expected}, for version {number} of this object"
        )

    def body() -> Iterator[bytes]:
        while chunk := reader.read(READ_CHUNK):
            yield chunk

    def size_of(written: int) -> int:
        try:
            return envelope.plaintext_size(written, header.segment_size)
        except EnvelopeError:
            raise MalformedEnvelope("the body's length is not one an envelope can have") from None

    return _save_version(
        obj=obj,
        number=number,
        header=raw_header,
        body=body(),
        size_of=size_of,
        content_type=content_type,
        token=token,
        on_saved=on_saved,
    )


@dataclass(frozen=True)
class ByteRange:
    """A requested byte range: ``first``-``last`` (inclusive; ``last`` None: to the end), or the
    last ``suffix`` bytes."""

    first: int = 0
    last: int | None = None
    suffix: int | None = None


def version_created_by(version: ObjectVersion, *, token: ApiToken, user: Any) -> bool:
    """Whether ``token`` (or another token of the same person) uploaded ``version``."""
    uploader = version.created_by
    if uploader is None:
        return False
    if user is not None:
        return uploader.user_id == user.pk
    return uploader.pk == token.pk or uploader.parent_id == token.pk


def version_replace_header(
    *, version: ObjectVersion, header: bytes, token: ApiToken | None = None
) -> ObjectVersion:
    """Replace the recipient stanzas of a client-side version (a rewrap after a key rotation).

    Only the stanzas may change: the new header's fixed part (format, segment size, context,
    salt, key commitment) must equal the stored one byte for byte, so the body, which the vault
    never touches, still belongs to it; the commitment still pins the data key.

    Raises:
        WrongMode: a gateway object (its keys are the tenant's; the vault rewraps those).
        MalformedEnvelope: the bytes are not exactly one valid header.
        HeaderMismatch: anything but the stanzas differs.
    """
    if version.object.mode != ObjectMode.CLIENT:
        raise WrongMode("only client-side versions take a new header from the client")
    try:
        new = envelope.parse_header(header)
    except EnvelopeError as exc:
        raise MalformedEnvelope(f"not exactly one valid header ({type(exc).__name__})") from None
    old = envelope.parse_header(bytes(version.header))
    if new.fixed != old.fixed:
        raise HeaderMismatch("only the recipient stanzas of a header may change")
    previous = bytes(version.header)
    with transaction.atomic():
        # Compare and swap: a concurrent rewrap of the same version loses, it does not overwrite.
        changed = ObjectVersion.objects.filter(pk=version.pk, header=previous).update(header=header)
        if not changed:
            raise VersionConflict("the header changed meanwhile; fetch it and try again")
        audit_record(
            "object.header.replace",
            tenant=version.object.tenant,
            resource_type="object",
            resource_id=version.object_id,
            details={"version": version.number},
        )
        # The replaced header is kept, so a bad rewrap can be undone by an operator.
        HeaderHistory.objects.create(version=version, header=previous, replaced_by=token)
    version.header = header
    return version


@dataclass(frozen=True)
class Download:
    """What to send: the bytes (an iterator), their length, and for ranges where they sit."""

    chunks: Iterator[bytes]
    length: int
    total: int
    start: int | None = None  # set for a partial answer (206)


def _stream_file(name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` (default: the end) of a stored file, in chunks."""
    handle = cast(BinaryIO, storages["default"].open(name, "rb"))
    try:
        handle.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            chunk = handle.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
            if not chunk:
                if left is not None:
                    raise OSError("stored body shorter than recorded")
                return
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        handle.close()


@dataclass(frozen=True)
class _Stored:
    """Where a version's bytes are: its own header and file, or its blob's."""

    header: bytes
    name: str
    body_size: int
    context: dict[str, str]


def _stored(version: ObjectVersion) -> _Stored:
    blob = version.blob
    if blob is not None:
        context = blob_context(version.object.tenant, blob.digest)
        return _Stored(bytes(blob.header), blob.storage_name, blob.body_size, context)
    context = version_context(version.object, version.number)
    return _Stored(bytes(version.header), version.storage_name, version.body_size, context)


def _stream_body(stored: _Stored, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    return _stream_file(stored.name, start, stored.body_size if end is None else end)


def version_read(*, version: ObjectVersion, byte_range: ByteRange | None = None) -> Download:
    """Open a version for download: plaintext (gateway) or the envelope (client-side).

    Gateway mode unwraps the DEK through the tenant's backend first (so a backend outage fails
    before any byte is sent) and then decrypts segment by segment; a segment that fails to
    authenticate raises mid-stream, and the HTTP layer aborts the connection.

    Raises:
        RangeNotSatisfiable: the range lies outside the object.
        kms_plugins.errors.KeyBackendError: the backend could not unwrap (transient or not).
    """
    obj = version.object
    if obj.shredded_at is not None:
        raise ObjectShredded("the keys of this object were destroyed: its content is gone")
    stored = _stored(version)
    # Recorded before any byte leaves: a read that cannot be recorded does not happen.
    audit_record(
        "object.read",
        tenant=obj.tenant,
        resource_type="object",
        resource_id=obj.pk,
        details={
            "version": version.number,
            "mode": obj.mode,
            "range": None
            if byte_range is None
            else {"first": byte_range.first, "last": byte_range.last, "suffix": byte_range.suffix},
        },
    )
    if obj.mode == ObjectMode.CLIENT:
        raw = stored.header
        total = len(raw) + stored.body_size
        start, end = _resolve_range(byte_range, total)
        chunks = _envelope_slice(stored, start, end)
        return Download(chunks, end - start, total, start if byte_range else None)
    header = envelope.parse_header(stored.header)
    dek = _unwrap_with_tenant_keys(obj.tenant, header, stored.context)
    decryptor = envelope.Decryptor(header, dek, stored.context)
    del dek
    start, end = _resolve_range(byte_range, version.size)
    if byte_range is None:
        chunks = decryptor.iter_body(_stream_body(stored))
        return Download(chunks, version.size, version.size)
    plan = envelope.plan_range(
        segment_size=header.segment_size, plaintext_size=version.size, start=start, end=end
    )
    chunks = decryptor.decrypt_range(
        plan, _stream_body(stored, plan.ciphertext_start, plan.ciphertext_end)
    )
    return Download(chunks, end - start, version.size, start)


def _unwrap_with_tenant_keys(
    tenant: Tenant, header: envelope.EnvelopeHeader, context: dict[str, str]
) -> bytes:
    """The DEK, from the stanza of the tenant's primary key, else of its recovery key."""
    bindings = KeyBinding.objects.filter(
        tenant=tenant, role__in=(KeyRole.PRIMARY, KeyRole.RECOVERY)
    ).order_by("role")  # "primary" sorts before "recovery"
    last_error: Exception | None = None
    for binding in bindings:
        _usable(binding)
        backend = key_backend(binding.backend_alias)
        audit_record(
            "key.unwrap",
            tenant=tenant,
            resource_type="key",
            resource_id=binding.key_id,
            details={"context": context},
        )
        try:
            return envelope.unwrap_dek(
                header,
                lambda wrapped, backend=backend: backend.unwrap(wrapped, context),  # type: ignore[misc]
                backend=backend.kind,
                key_id=binding.key_id,
            )
        except envelope.NoMatchingStanza as exc:
            last_error = exc
    raise NoVersion("no key of this tenant opens the version") from last_error


def _resolve_range(byte_range: ByteRange | None, total: int) -> tuple[int, int]:
    if byte_range is None:
        return 0, total
    if byte_range.suffix is not None:
        if byte_range.suffix == 0 or total == 0:
            raise RangeNotSatisfiable(f"the object has {total} bytes")
        return max(total - byte_range.suffix, 0), total
    if byte_range.first >= total:
        raise RangeNotSatisfiable(f"the object has {total} bytes")
    end = total if byte_range.last is None else min(byte_range.last + 1, total)
    return byte_range.first, end


def _envelope_slice(stored: _Stored, start: int, end: int) -> Iterator[bytes]:
    header = stored.header
    if start < len(header):
        yield header[start : min(end, len(header))]
    if end > len(header):
        yield from _stream_body(stored, max(start - len(header), 0), end - len(header))
