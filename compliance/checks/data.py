"""Stored account data (PCI-DSS 3.5.1): no readable card numbers at rest, ciphertext everywhere.

DATA-001 scans the tenant's free text and stored bodies for card numbers; DATA-002 takes a census
of the envelope headers of every live object version, blob and deduplication key.
"""

from __future__ import annotations

import bisect
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.core.files.storage import Storage, storages

from compliance.checks import register
from compliance.checks.base import Check, Context, Outcome
from kms_plugins.context import canonical_context
from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyState
from vault.audit.models import AuditEvent
from vault.audit.services import log_of
from vault.crypto import envelope
from vault.crypto.errors import EnvelopeError, UnsupportedEnvelope
from vault.keys.models import KeyBinding, KeyRole
from vault.lifecycle.models import ApprovalRequest
from vault.objects.models import Blob, DedupKey, ObjectMode, ObjectVersion, StoredObject
from vault.tokens.models import ApiToken

SAMPLE_LIMIT = 50

# --- finding card numbers ------------------------------------------------------------------------

# Cheap first pass: 13+ characters of digits, spaces and dashes, starting and ending on a digit.
# Ciphertext and most text have no such run; the exact rules run only on what this finds.
_PREFILTER = re.compile(rb"[0-9][0-9 -]{11,}[0-9]")
# A run of digits with single spaces or dashes between them ("4111 1111-1111 1111").
_RUN = re.compile(rb"[0-9](?:[ -]?[0-9]){12,}")
_SEPARATOR = re.compile(rb"[ -]")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IIN_FIRST_DIGITS = b"23456"  # Mastercard 2 and 5, Amex/Diners/JCB 3, Visa 4, Discover 6


def luhn_valid(digits: bytes) -> bool:
    """Whether an ASCII digit string passes the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = char - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _is_pan(digits: bytes) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in _IIN_FIRST_DIGITS and luhn_valid(digits)


def redact(digits: bytes) -> str:
    """A card number as an assessor may see it: the first six and last four digits only."""
    text = digits.decode("ascii")
    return text[:6] + "*" * (len(text) - 10) + text[-4:]


def _alnum(buffer: bytes, index: int) -> bool:
    return 0 <= index < len(buffer) and buffer[index : index + 1].isalnum()


def _inside_uuid(buffer: bytes, start: int, end: int) -> bool:
    for match in _UUID.finditer(buffer, max(0, start - 36), min(len(buffer), end + 36)):
        if match.start() <= start and end <= match.end():
            return True
    return False


def _pans_in_run(buffer: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The card numbers in one run: consecutive digit groups holding 13 to 19 digits that pass
    the IIN and Luhn checks. A group glued to a letter belongs to a word, not to a number."""
    groups: list[tuple[int, bytes]] = []
    position = start
    for part in _SEPARATOR.split(buffer[start:end]):
        groups.append((position, part))
        position += len(part) + 1
    if groups and _alnum(buffer, start - 1):
        groups = groups[1:]
    if groups and _alnum(buffer, end):
        groups = groups[:-1]
    first = 0
    while first < len(groups):
        digits, best = b"", None
        for last in range(first, len(groups)):
            digits += groups[last][1]
            if len(digits) > 19:
                break
            if _is_pan(digits):
                best = (last, digits)
        if best is None:
            first += 1
            continue
        offset = groups[first][0]
        if not _inside_uuid(buffer, offset, groups[best[0]][0] + len(groups[best[0]][1])):
            yield offset, best[1]
        first = best[0] + 1


def find_pans(buffer: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, digits) of every plausible card number in ``buffer[start:end]``.

    A card number here: 13 to 19 digits, optionally grouped by single spaces or dashes, not part
    of a longer word or of a UUID, whose first digit is 2 to 6 and which passes the Luhn check.
    """
    stop = len(buffer) if end is None else end
    for candidate in _PREFILTER.finditer(buffer, start, stop):
        for run in _RUN.finditer(buffer, candidate.start(), candidate.end()):
            yield from _pans_in_run(buffer, run.start(), run.end())


@dataclass
class _Hits:
    """What the scan found: counts per place, and redacted samples with their locations."""

    count: int = 0
    by_area: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, str]] = field(default_factory=list)

    def add(self, area: str, location: str | Callable[[], str], digits: bytes) -> None:
        """Count a hit; ``location`` may be a function, called only for a kept sample."""
        self.count += 1
        self.by_area[area] += 1
        if len(self.samples) < SAMPLE_LIMIT:
            where = location if isinstance(location, str) else location()
            self.samples.append({"area": area, "location": where, "sample": redact(digits)})


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def _scan_rows(
    rows: Iterable[tuple[Any, Any]],
    area: str,
    hits: _Hits,
    label: Callable[[Any], str] | None = None,
    batch: int = 5000,
) -> int:
    """Scan (id, text) rows, ``batch`` at a time joined by newlines into one buffer.

    A hit's location is ``label(id)``, or the area and the id.
    """
    scanned = 0
    ids: list[Any] = []
    values: list[bytes] = []

    def flush() -> None:
        buffer = b"\n".join(values)
        starts, position = [], 0
        for value in values:
            starts.append(position)
            position += len(value) + 1
        for offset, digits in find_pans(buffer):
            row_id = ids[bisect.bisect_right(starts, offset) - 1]
            hits.add(area, partial(label, row_id) if label else f"{area} {row_id}", digits)
        ids.clear()
        values.clear()

    for row_id, value in rows:
        if value is None:
            continue
        ids.append(row_id)
        values.append(_as_bytes(value))
        scanned += 1
        if len(values) >= batch:
            flush()
    if values:
        flush()
    return scanned


CHUNK = 1024 * 1024
Opener = Callable[[], Any]  # a binary file, to use in a with statement
_TAIL = 64  # longer than any card number with its separators
_MAX_CARRY = 4096


def scan_stream(read: Callable[[int], bytes], found: Callable[[int, bytes], None]) -> int:
    """Scan a byte stream chunk by chunk (memory stays bounded); returns the bytes read.

    A run cut by a chunk boundary is carried into the next chunk with one byte of what precedes
    it, so a number spanning two chunks is found once.
    """
    carry, base, begin, total = b"", 0, 0, 0
    while True:
        chunk = read(CHUNK)
        total += len(chunk)
        buffer = carry + chunk
        final = not chunk
        cut = len(buffer) if final else max(0, len(buffer) - _TAIL)
        if not final:
            for candidate in _PREFILTER.finditer(buffer, max(0, cut - _MAX_CARRY)):
                if candidate.end() >= cut and len(buffer) - candidate.start() <= _MAX_CARRY:
                    cut = min(cut, candidate.start())
                    break
        for offset, digits in find_pans(buffer, begin, cut):
            found(base + offset, digits)
        if final:
            return total
        keep = max(0, cut - 1)  # one byte of what precedes the carried run, already judged
        carry, base, begin = buffer[keep:], base + keep, cut - keep


def _stored_files(storage: Storage, directory: str) -> Iterator[tuple[str, Opener]]:
    """(name, how to open it) of every file under ``directory``, in a stable order."""
    try:
        root = storage.path(directory)
    except NotImplementedError:  # not a filesystem: walk through the Storage API (slower)
        yield from _listed_files(storage, directory)
        return
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        base = directory if relative == "." else f"{directory}/{relative}"
        for name in sorted(files):
            yield f"{base}/{name}", partial(open, os.path.join(folder, name), "rb")


def _listed_files(storage: Storage, directory: str) -> Iterator[tuple[str, Opener]]:
    try:
        folders, files = storage.listdir(directory)
    except FileNotFoundError:  # nothing stored yet
        return
    for name in sorted(files):
        path = f"{directory}/{name}"
        yield path, partial(storage.open, path, "rb")
    for folder in sorted(folders):
        yield from _listed_files(storage, f"{directory}/{folder}")


def _scan_storage(storage: Storage, prefix: str, hits: _Hits) -> tuple[int, int]:
    files = size = 0
    for name, opener in _stored_files(storage, prefix):
        try:
            handle = opener()
        except FileNotFoundError:  # removed while we walked (a purge)
            continue
        with handle:
            size += scan_stream(handle.read, _recorder(hits, name))
        files += 1
    return files, size


def _recorder(hits: _Hits, name: str) -> Callable[[int, bytes], None]:
    def found(offset: int, digits: bytes) -> None:
        hits.add("storage", f"storage {name} at byte {offset}", digits)

    return found


def _event_label(pk: int) -> str:
    uuid = AuditEvent.objects.filter(pk=pk).values_list("uuid", flat=True).first()
    return f"audit event {uuid}"


@register
class NoPlaintextCardNumbers(Check):
    """DATA-001: no card number is stored readable in the tenant's metadata, log or storage."""

    id = "DATA-001"
    title = "No readable card number is stored in the tenant's metadata, audit log or storage"
    description = (
        "Scans, for card numbers (13 to 19 digits, optionally grouped by spaces or dashes, first "
        "digit 2 to 6, Luhn-valid, not part of a word or UUID): the tenant's name and slug, its "
        "object names and content types, version content types, token names, dual-control "
        "reasons, every event of its audit log (resource ids, user agents, details), and every "
        "byte of every file under the tenant's directory in the default storage, which should "
        "hold ciphertext only. Hits are reported with the first six and last four digits."
    )
    risk = (
        "A card number in metadata, a log or an unencrypted file is readable by anyone with "
        "database, backup or storage access, outside the vault's key management."
    )
    severity = "critical"
    scope = "tenant"
    requirements = ("3.5.1",)
    remediation = (
        "Store the content of an object named in the evidence under a clean name and delete "
        "the old one (DELETE /api/v1/objects/{id}/; the vault.objects.purge_deleted job removes "
        "its row after VAULT_OBJECT_RETENTION_DAYS); revoke and reissue a token so named (DELETE "
        "/api/v1/tokens/{id}/); remove stray files from the storage directory; keep card "
        "numbers inside object content, which the vault encrypts."
    )
    evidence_captured = (
        "Scan scope (rows, events, files and bytes scanned), hit counts per place, and up to 50 "
        "redacted samples (first six and last four digits) with their locations."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        tenant = ctx.tenant
        hits = _Hits()
        scope: dict[str, int] = {}
        scope["tenant"] = _scan_rows(
            [(tenant.slug, tenant.slug), (tenant.slug, tenant.name)], "tenant", hits
        )
        objects = StoredObject.objects.filter(tenant=tenant)
        scope["object names"] = _scan_rows(
            objects.values_list("pk", "name").iterator(chunk_size=5000), "object name", hits
        )
        scope["object content types"] = _scan_rows(
            objects.values_list("pk", "content_type").iterator(chunk_size=5000),
            "object content type",
            hits,
        )
        scope["version content types"] = _scan_rows(
            ObjectVersion.objects.filter(object__tenant=tenant)
            .values_list("pk", "content_type")
            .iterator(chunk_size=5000),
            "version content type",
            hits,
        )
        scope["token names"] = _scan_rows(
            ApiToken.objects.filter(tenant=tenant).values_list("key_id", "name"),
            "token name",
            hits,
        )
        scope["approval reasons"] = _scan_rows(
            ApprovalRequest.objects.filter(tenant=tenant).values_list("pk", "reason"),
            "approval request reason",
            hits,
        )
        scope["audit events"] = _scan_rows(
            AuditEvent.objects.filter(log=log_of(tenant))
            .values_list("pk", "leaf")  # not the uuid: making a million UUIDs costs seconds
            .iterator(chunk_size=5000),
            "audit event",
            hits,
            label=_event_label,
        )
        files, size = _scan_storage(storages["default"], str(tenant.pk), hits)
        scope["stored files"], scope["stored bytes"] = files, size
        digest = ctx.evidence(
            "pan-scan",
            {
                "scope": scope,
                "hits": hits.count,
                "by_area": dict(hits.by_area),
                "samples": hits.samples,
            },
        )
        if hits.count:
            places = ", ".join(f"{n} in {area}" for area, n in sorted(hits.by_area.items()))
            first = hits.samples[0]
            yield self.failed(
                "tenant",
                tenant.slug,
                f"Tenant {tenant.slug} stores {hits.count} readable card number(s) ({places}); "
                f"for example {first['sample']} in {first['location']}.",
                digest,
                hits=hits.count,
                by_area=dict(hits.by_area),
            )
            return
        yield self.passed(
            "tenant",
            tenant.slug,
            f"No card number was found in tenant {tenant.slug}'s metadata, its "
            f"{scope['audit events']} audit event(s) or its {files} stored file(s) "
            f"({size} bytes).",
            digest,
            scanned=scope,
        )


# --- the envelope census --------------------------------------------------------------------------

ALGORITHMS = {envelope.ALGORITHM_AES256GCM_HKDF_STREAM: "AES-256-GCM (HKDF-SHA256, STREAM)"}
WRAP_ROLES = (KeyRole.PRIMARY, KeyRole.RECOVERY)


@dataclass
class _Census:
    """Stored headers by kind and algorithm, the key versions their stanzas name, and problems."""

    headers: Counter[str] = field(default_factory=Counter)
    algorithms: Counter[str] = field(default_factory=Counter)
    stanzas: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    client_stanzas: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def problem(self, kind: str, where: str) -> None:
        self.problems[kind] += 1
        if len(self.samples) < SAMPLE_LIMIT:
            self.samples.append(f"{where}: {kind}")

    def header(
        self, kind: str, where: str, raw: bytes, context: dict[str, str], client: bool = False
    ) -> envelope.EnvelopeHeader | None:
        """Parse one stored header and count it; None (and a problem) when it does not parse."""
        self.headers[kind] += 1
        try:
            parsed = envelope.parse_header(raw)
        except UnsupportedEnvelope:
            self.problem("unsupported format version or algorithm", where)
            return None
        except EnvelopeError:
            self.problem("not a valid envelope header", where)
            return None
        self.algorithms[ALGORITHMS[parsed.algorithm]] += 1
        if parsed.context_bytes != canonical_context(context):
            self.problem("encryption context names another place", where)
        for stanza in parsed.stanzas:
            if client:
                self.client_stanzas[stanza.backend] += 1
            else:
                self.stanzas[(stanza.backend, stanza.key.key_id, stanza.key.version)] += 1
        return parsed

    def body(
        self,
        storage: Storage,
        where: str,
        name: str,
        parsed: envelope.EnvelopeHeader | None,
        size: int,
        body_size: int,
    ) -> None:
        """Check that the stored body exists with its recorded length."""
        try:
            stored = storage.size(name)
        except FileNotFoundError:
            self.problem("stored body missing", where)
            return
        if stored != body_size:
            self.problem("stored body length differs from the recorded one", where)
        elif parsed is not None:
            try:
                plain = envelope.plaintext_size(body_size, parsed.segment_size)
            except EnvelopeError:
                plain = -1
            if plain != size:
                self.problem("recorded sizes are not those of a valid envelope", where)


def _take_census(ctx: Context) -> _Census:
    tenant, census, storage = ctx.tenant, _Census(), storages["default"]
    versions = (
        ObjectVersion.objects.filter(
            object__tenant=tenant,
            object__deleted_at__isnull=True,
            object__shredded_at__isnull=True,
            blob__isnull=True,
        )
        .order_by("pk")
        .values_list(
            "object_id", "number", "object__mode", "header", "storage_name", "size", "body_size"
        )
    )
    for object_id, number, mode, header, name, size, body_size in versions.iterator(
        chunk_size=2000
    ):
        where = f"object {object_id} version {number}"
        context = {"tenant": tenant.slug, "object": str(object_id), "version": str(number)}
        client = mode == ObjectMode.CLIENT
        parsed = census.header("version", where, bytes(header), context, client=client)
        census.body(storage, where, name, parsed, size, body_size)
    if tenant.shredded_at is None:  # shredded: the blobs' and dedup key's keys are gone on purpose
        blobs = Blob.objects.filter(tenant=tenant).order_by("pk")
        for digest, header, name, size, body_size in blobs.values_list(
            "digest", "header", "storage_name", "size", "body_size"
        ).iterator(chunk_size=2000):
            where = f"blob {digest[:16]}"
            context = {"tenant": tenant.slug, "blob": digest}
            parsed = census.header("blob", where, bytes(header), context)
            census.body(storage, where, name, parsed, size, body_size)
        for header in DedupKey.objects.filter(tenant=tenant).values_list("header", flat=True):
            context = {"tenant": tenant.slug, "purpose": "dedup"}
            census.header("dedup key", "deduplication key", bytes(header), context)
    return census


def _key_resource(ctx: Context, binding: KeyBinding) -> str:
    return f"{ctx.tenant.slug}:{binding.role}:{binding.key_id}"


def _judge_key_versions(
    ctx: Context, census: _Census, bindings: dict[str, KeyBinding]
) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, str]]:
    """Each key version the gateway stanzas name, with its state in the backend.

    Returns the rows for the evidence, the destroyed or missing versions per key id, and the
    keys whose backend did not answer (with the error code). A stanza under a key that is not
    one of the tenant's wrapping keys is counted as a problem of the census.
    """
    versions: list[dict[str, Any]] = []
    problems: dict[str, list[str]] = {key_id: [] for key_id in bindings}
    unavailable: dict[str, str] = {}
    for (backend, key_id, number), count in sorted(census.stanzas.items()):
        row: dict[str, Any] = {"backend": backend, "key_id": key_id, "version": number}
        row["headers"] = count
        versions.append(row)
        binding = bindings.get(key_id)
        if binding is None or binding.backend_kind != backend:
            row["state"] = "unknown key"
            census.problems["stanza names a key that is not the tenant's"] += count
            continue
        try:
            info = ctx.describe(binding).version(number)
        except KeyBackendError as exc:
            row["state"] = "backend unavailable"
            unavailable[key_id] = exc.code
            continue
        row["state"] = str(info.state) if info is not None else "missing"
        if info is None or info.state == KeyState.DESTROYED:
            problems[key_id].append(f"version {number} ({row['state']}, {count} headers)")
    return versions, problems, unavailable


@register
class EnvelopeCensus(Check):
    """DATA-002: every stored header is a valid envelope under live keys, with its body."""

    id = "DATA-002"
    title = (
        "Every live object version and blob is a valid envelope with an approved AEAD, under "
        "existing key versions, with its body stored"
    )
    description = (
        "Parses the envelope header of every live version (of objects neither deleted nor "
        "shredded), blob and deduplication key of the tenant: it must be a valid format-1 "
        "envelope with an approved AEAD (AES-256-GCM), made for its own place (encryption "
        "context), and its stored body must exist with the recorded length. The key versions "
        "that gateway stanzas name must be the tenant's primary or recovery keys, exist in the "
        "backend and not be destroyed. Client-side envelopes are checked as far as the vault "
        "can: structure, algorithm, context and body; their keys are the client's."
    )
    risk = (
        "Data stored outside a valid envelope, or under a destroyed or unknown key, is either "
        "unprotected or already lost; a missing body is lost data."
    )
    severity = "high"
    scope = "tenant"
    requirements = ("3.5.1",)
    remediation = (
        "Restore missing bodies from backup; re-upload or delete objects whose headers are "
        "invalid; for headers under a destroyed or unknown key version, rotate the key "
        "(POST /api/v1/keys/campaigns/) so the rewrap campaign moves every header to the "
        "current version before any version is destroyed."
    )
    evidence_captured = (
        "Census of stored headers by kind and algorithm, header counts per key version with the "
        "version's state, client-side stanzas by backend kind, problem counts and up to 50 "
        "sample locations."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        tenant = ctx.tenant
        census = _take_census(ctx)
        total = sum(census.headers.values())
        if not total:
            yield self.not_applicable(
                "tenant", tenant.slug, f"Tenant {tenant.slug} stores no envelope."
            )
            return
        bindings = {b.key_id: b for b in ctx.bindings if b.role in WRAP_ROLES}
        versions, key_problems, unavailable = _judge_key_versions(ctx, census, bindings)
        digest = ctx.evidence(
            "envelope-census",
            {
                "headers": dict(census.headers),
                "algorithms": dict(census.algorithms),
                "key_versions": versions,
                "client_stanzas": dict(census.client_stanzas),
                "problems": dict(census.problems),
                "samples": census.samples,
            },
        )
        yield self._tenant_outcome(ctx, census, total, digest)
        for key_id, binding in sorted(bindings.items()):
            resource = _key_resource(ctx, binding)
            used = sum(n for (_, kid, _), n in census.stanzas.items() if kid == key_id)
            if key_id in unavailable:
                yield self.error(
                    "key",
                    resource,
                    f"The {binding.role} key {key_id} of tenant {tenant.slug} could not be "
                    f"described by backend {binding.backend_alias} ({unavailable[key_id]}).",
                    digest,
                )
            elif key_problems[key_id]:
                yield self.failed(
                    "key",
                    resource,
                    f"Stored headers of tenant {tenant.slug} name versions of its "
                    f"{binding.role} key {key_id} that are destroyed or missing: "
                    f"{'; '.join(key_problems[key_id])}.",
                    digest,
                    versions=key_problems[key_id],
                )
            else:
                yield self.passed(
                    "key",
                    resource,
                    f"The {used} stanza(s) under the {binding.role} key {key_id} of tenant "
                    f"{tenant.slug} name versions that exist and are not destroyed.",
                    digest,
                    stanzas=used,
                )

    def _tenant_outcome(self, ctx: Context, census: _Census, total: int, digest: str) -> Outcome:
        slug = ctx.tenant.slug
        kinds = ", ".join(f"{n} {kind}(s)" for kind, n in sorted(census.headers.items()))
        if census.problems:
            found = "; ".join(f"{kind}: {n}" for kind, n in sorted(census.problems.items()))
            return self.failed(
                "tenant",
                slug,
                f"Of tenant {slug}'s {total} stored header(s) ({kinds}), some fail the census "
                f"({found}).",
                digest,
                problems=dict(census.problems),
            )
        return self.passed(
            "tenant",
            slug,
            f"All {total} stored header(s) of tenant {slug} ({kinds}) are valid envelopes "
            f"with an approved AEAD, and every body is stored with its recorded length.",
            digest,
            headers=dict(census.headers),
        )
