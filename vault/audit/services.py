"""Recording audit events, integrating them into each log's Merkle tree, signing checkpoints,
and checking the stored log. ``docs/audit.md`` describes the design; ``docs/audit-format.md``
the bytes.

Fail closed: ``audit_record`` writes the event in the caller's transaction, so a change and its
event commit together or not at all; if the event cannot be written
it raises ``AuditUnavailable`` (503 ``audit_unavailable``) and the caller's change rolls back.
Work outside the database (an unwrap for a download) records its event before any plaintext
is released. One tenant's failing log never blocks another's: each event is a row of its own,
and the integrator takes each log's lock separately.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from vault.audit.context import Actor, actor_of, current_request, origin_of
from vault.audit.events import EVENT_TYPES
from vault.audit.models import (
    PLATFORM_LOG,
    AuditArchive,
    AuditCheckpoint,
    AuditEvent,
    AuditLeaf,
    AuditLogHead,
    AuditPrune,
    AuditPruneGuard,
    Outcome,
)
from vault.crypto import canonical
from vault.crypto.auditbundle import format_time, leaf_columns, parse_leaf
from vault.crypto.checkpoint import Checkpoint, CheckpointKey, open_checkpoint, sign_checkpoint
from vault.crypto.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, node_hash
from vault.tenants.models import Tenant

logger = logging.getLogger(__name__)
INTEGRATE_BATCH = 5000


class AuditUnavailable(Exception):
    """An audit event could not be written; the action it records must not happen."""

    code = "audit_unavailable"
    status = 503


# --- logs ----------------------------------------------------------------------------------------


def log_of(tenant: Tenant | None) -> str:
    """The name of a tenant's log (``t<id>``), or the platform log's."""
    return f"t{tenant.pk}" if tenant is not None else PLATFORM_LOG


def tenant_of_log(log: str) -> Tenant | None:
    """The tenant of a log (None for the platform log)."""
    if log == PLATFORM_LOG:
        return None
    return Tenant.objects.get(pk=int(log[1:]))


def origin_of_log(log: str, tenant: Tenant | None = None) -> str:
    """The checkpoint origin of a log: ``<VAULT_AUDIT_ORIGIN>/audit/<slug or platform>``."""
    if log != PLATFORM_LOG and tenant is None:
        tenant = tenant_of_log(log)
    name = tenant.slug if tenant is not None else PLATFORM_LOG
    return f"{settings.VAULT_AUDIT_ORIGIN}/audit/{name}"


def hmac_value(log: str, value: str) -> str:
    """A sensitive value as stored in an event: HMAC-SHA256 under the log's audit key.

    The log's key derives (HKDF-SHA256) from ``VAULT_AUDIT_HMAC_KEY`` and the log's name, so
    "was this value used?" is answerable by whoever holds the key, and nobody else.
    """
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"ciphervault/v1/audit-hmac/" + log.encode("ascii"),
    ).derive(settings.VAULT_AUDIT_HMAC_KEY)
    return "hmac-sha256:" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


# --- recording -----------------------------------------------------------------------------------


def audit_record(
    event_type: str,
    *,
    tenant: Tenant | None = None,
    outcome: str = Outcome.SUCCESS,
    resource_type: str = "",
    resource_id: object = "",
    details: dict[str, Any] | None = None,
    sensitive: dict[str, str] | None = None,
    actor: Actor | None = None,
    request: HttpRequest | None = None,
) -> AuditEvent:
    """Write one audit event in the current transaction.

    Args:
        event_type: one of ``vault.audit.events.EVENT_TYPES``.
        tenant: whose log; None for the platform log.
        outcome: ``success`` or ``failure``.
        resource_type, resource_id: what was acted on.
        details: further facts (strings, integers, booleans, lists and objects of these).
        sensitive: values stored only as HMACs under the log's audit key (``hmac_value``).
        actor: who acted; by default the current request's principal, or the running job.
        request: the request, when it is not the one bound by the middleware.

    Raises:
        AuditUnavailable: the event could not be written (the caller's change must not happen).
        ValueError: an unknown event type or outcome, or details without a canonical form.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown audit event type {event_type!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown outcome {outcome!r}")
    request = request if request is not None else current_request()
    who = actor or actor_of(request)
    where = origin_of(request)
    log = log_of(tenant)
    facts = dict(details or {})
    for key, value in (sensitive or {}).items():
        facts[key] = hmac_value(log, value)
    moment = timezone.now()
    event_id = uuid.uuid4()
    body = {
        "v": 1,
        "log": origin_of_log(log, tenant),
        "id": str(event_id),
        "time": format_time(moment),
        "type": event_type,
        "outcome": str(outcome),
        "actor": {"kind": who.kind, "id": who.id, "auth": who.auth},
        "origin": {"ip": where.ip, "user_agent": where.user_agent, "request_id": where.request_id},
        "resource": {"type": resource_type, "id": str(resource_id)},
        "details": facts,
    }
    # Everything but the details is a str made here from Unicode sources (the database, the
    # request's headers, this module); only the details need checking.
    canonical.check(facts)
    leaf = canonical.encode(body)
    try:
        # No savepoint: if the insert fails, the caller's transaction is marked for rollback
        # (Django's atomic block without a savepoint), so the change it records cannot commit.
        # A request that is not in a transaction gets one of its own here.
        with transaction.atomic(savepoint=False):
            return AuditEvent.objects.create(
                uuid=event_id,
                log=log,
                tenant=tenant,
                time=moment,
                type=event_type,
                outcome=str(outcome),
                actor_kind=who.kind,
                actor_id=who.id,
                auth=who.auth,
                ip=where.ip,
                user_agent=where.user_agent,
                request_id=where.request_id,
                resource_type=resource_type,
                resource_id=str(resource_id),
                leaf=leaf,
            )
    except DatabaseError as exc:
        logger.error("audit event %s could not be written to log %s", event_type, log)
        raise AuditUnavailable("the audit log cannot record this action; try again later") from exc


# --- the tree's right edge ---------------------------------------------------------------------


class Frontier:
    """The hashes of the complete subtrees along a tree's right edge: enough to append leaves
    and compute the root without reading earlier leaves."""

    def __init__(self, nodes: list[tuple[int, bytes]] | None = None) -> None:
        self.nodes: list[tuple[int, bytes]] = list(nodes or [])

    @classmethod
    def load(cls, stored: list[list[Any]]) -> Frontier:
        return cls([(int(level), bytes.fromhex(str(value))) for level, value in stored])

    def dump(self) -> list[list[Any]]:
        return [[level, value.hex()] for level, value in self.nodes]

    def push(self, hashed_leaf: bytes) -> None:
        level, value = 0, hashed_leaf
        while self.nodes and self.nodes[-1][0] == level:
            _, left = self.nodes.pop()
            value = node_hash(left, value)
            level += 1
        self.nodes.append((level, value))

    @property
    def size(self) -> int:
        return sum(1 << level for level, _ in self.nodes)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        value = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            value = node_hash(left, value)
        return value


# --- integration and checkpoints ---------------------------------------------------------------


class Signer:
    """A log's checkpoint key: its public identity, a way to sign with it, and (read from the
    backend only when asked: verifiers need them, signing does not) every version's public key."""

    def __init__(
        self,
        key: CheckpointKey,
        sign: Callable[[bytes], bytes],
        versions: Callable[[], tuple[CheckpointKey, ...]],
    ) -> None:
        self.key = key
        self.sign = sign
        self._versions = versions

    @cached_property
    def all_keys(self) -> tuple[CheckpointKey, ...]:
        return self._versions()


def log_signer(log: str) -> Signer:
    """The key that signs a log's checkpoints: the tenant's signing key, else the platform's.

    Raises:
        vault.keys.services.NoSigningBackend: nothing can sign for this log.
        vault.keys.services.KeySuspended: that key is suspended.
        kms_plugins.errors.KeyBackendError: the backend is unavailable.
    """
    from vault.keys.registry import key_backend
    from vault.keys.services import (
        binding_check_usable,
        platform_signing_binding,
        signing_binding_for,
    )

    tenant = tenant_of_log(log)
    binding = signing_binding_for(tenant=tenant) if tenant else platform_signing_binding()
    binding_check_usable(binding)  # a possibly substituted key signs nothing
    backend = key_backend(binding.backend_alias)
    origin = origin_of_log(log, tenant)
    description = backend.describe(binding.key_id)
    primary = description.primary
    assert primary is not None  # noqa: S101  (a bound signing key has a primary version)
    key = CheckpointKey.from_pem(origin, backend.public_key(primary.ref))

    def every_version() -> tuple[CheckpointKey, ...]:
        found = [key]
        for info in description.versions:
            if info.ref != primary.ref:
                try:
                    found.append(CheckpointKey.from_pem(origin, backend.public_key(info.ref)))
                except Exception:
                    logger.info("audit log %s: no public key for version %s", log, info.ref)
        return tuple(found)

    return Signer(key, lambda message: backend.sign(binding.key_id, message)[1], every_version)


def logs_with_pending_events() -> list[str]:
    """Logs that have events not yet given a leaf index."""
    return sorted(
        set(
            AuditEvent.objects.filter(leaf_entry__isnull=True)
            .values_list("log", flat=True)
            .distinct()
        )
    )


def _head(log: str) -> AuditLogHead:
    try:
        with transaction.atomic():
            AuditLogHead.objects.get_or_create(log=log)
    except IntegrityError:  # made by a concurrent integrator
        pass
    return AuditLogHead.objects.select_for_update().get(log=log)


def audit_integrate(log: str) -> AuditCheckpoint | None:
    """Give pending events of ``log`` their leaf indices and sign a checkpoint of the result.

    The single writer: the log's head row is locked for the whole run, so indices are assigned
    once, in one order, with no gap, and every checkpoint extends the previous one.

    Returns:
        The new checkpoint, or None when there was nothing new to commit to.

    Raises:
        NoSigningBackend, KeyBackendError: nothing was integrated (the run rolls back).
    """
    signer = log_signer(log)
    with transaction.atomic():
        head = _head(log)
        frontier = Frontier.load(head.frontier)
        added = 0
        while True:
            batch = list(
                AuditEvent.objects.filter(log=log, leaf_entry__isnull=True)
                .order_by("pk")
                .values_list("pk", "leaf")[:INTEGRATE_BATCH]
            )
            if not batch:
                break
            rows = []
            for pk, leaf in batch:
                hashed = leaf_hash(bytes(leaf))
                rows.append(AuditLeaf(log=log, index=head.size + added, event_id=pk, hash=hashed))
                frontier.push(hashed)
                added += 1
            AuditLeaf.objects.bulk_create(rows)
        last = AuditCheckpoint.objects.filter(log=log).order_by("-size").first()
        if not added and last is not None:
            return None
        head.size += added
        head.frontier = frontier.dump()
        head.save(update_fields=["size", "frontier"])
        root = frontier.root()
        checkpoint = Checkpoint(origin=signer.key.name, size=head.size, root_hash=root)
        note = sign_checkpoint(checkpoint, key=signer.key, sign=signer.sign)
        made = AuditCheckpoint.objects.create(
            log=log, size=head.size, root=root, note=note.decode("utf-8")
        )
    logger.info("audit log %s: checkpoint at %d (%d new)", log, made.size, added)
    return made


def audit_integrate_all() -> int:
    """Integrate every log with pending events; a log whose signer fails does not stop the
    others. Returns how many checkpoints were made."""
    made = 0
    for log in logs_with_pending_events():
        try:
            if audit_integrate(log) is not None:
                made += 1
        except Exception:
            logger.exception("audit log %s could not be integrated; will retry", log)
    return made


def latest_checkpoint(log: str) -> AuditCheckpoint | None:
    """The log's newest checkpoint."""
    return AuditCheckpoint.objects.filter(log=log).order_by("-size").first()


def log_tree(log: str, size: int | None = None) -> MerkleTree:
    """The log's tree from its stored leaf hashes (up to ``size`` leaves)."""
    leaves = AuditLeaf.objects.filter(log=log).order_by("index")
    if size is not None:
        leaves = leaves.filter(index__lt=size)
    return MerkleTree(bytes(h) for h in leaves.values_list("hash", flat=True).iterator())


# --- verification of the stored log -----------------------------------------------------------


@dataclass
class VerifyReport:
    """What ``audit_verify`` checked and what it found wrong."""

    log: str
    leaves: int = 0
    checkpoints: int = 0
    pending: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_COLUMN_FIELDS = (
    "uuid",
    "time",
    "type",
    "outcome",
    "actor_kind",
    "actor_id",
    "auth",
    "ip",
    "user_agent",
    "request_id",
    "resource_type",
    "resource_id",
)


def _columns_of_row(row: tuple[Any, ...]) -> dict[str, str]:
    (event_id, moment, kind, outcome, actor_kind, actor_id, auth, ip, agent, request_id) = row[:10]
    return {
        "id": str(event_id),
        "time": format_time(moment),
        "type": kind,
        "outcome": outcome,
        "actor_kind": actor_kind,
        "actor_id": actor_id,
        "auth": auth,
        "ip": ip,
        "user_agent": agent,
        "request_id": request_id,
        "resource_type": row[10],
        "resource_id": row[11],
    }


def event_columns(event: AuditEvent) -> dict[str, str]:
    """The queryable columns of an event, as an export carries them."""
    return _columns_of_row(tuple(getattr(event, name) for name in _COLUMN_FIELDS))


def audit_verify(
    log: str,
    *,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Check a stored log against its own signed checkpoints.

    Every leaf's bytes against its hash and its columns; indices without gaps; the root at every
    checkpoint's size recomputed from the leaves; every checkpoint's signature under the log's
    keys and its text against its columns. Anything changed, inserted, deleted or reordered
    under a checkpoint shows up as a problem.
    """
    report = VerifyReport(log=log)
    problems = report.problems
    tenant = tenant_of_log(log)
    origin = origin_of_log(log, tenant)
    keys = log_signer(log).all_keys
    checkpoints = list(AuditCheckpoint.objects.filter(log=log).order_by("size"))
    report.checkpoints = len(checkpoints)
    fields = (
        "index",
        "hash",
        "event__leaf",
        "event__log",
        *(f"event__{f}" for f in _COLUMN_FIELDS),
    )
    rows = AuditLeaf.objects.filter(log=log).order_by("index").values_list(*fields)
    hashes: list[bytes] = []
    expected = 0
    pruned_below = _trusted_pruned_index(log, now or timezone.now(), problems)
    for index, stored_hash, raw_leaf, event_log, *columns in rows.iterator(chunk_size=5000):
        if index != expected:
            problems.append(f"leaf {expected}: missing (the next leaf is {index})")
            expected = index
        expected += 1
        if raw_leaf is None:
            if index >= pruned_below:
                problems.append(f"leaf {index}: its event is missing")
            hashes.append(bytes(stored_hash))
            continue
        leaf = bytes(raw_leaf)
        hashed = leaf_hash(leaf)
        hashes.append(hashed)
        if hashed != bytes(stored_hash):
            problems.append(f"leaf {index}: the event's bytes do not match its leaf hash")
        if event_log != log:
            problems.append(f"leaf {index}: the event belongs to another log")
        try:
            event = parse_leaf(leaf)
            signed = leaf_columns(event)
        except ValueError as exc:
            problems.append(f"leaf {index}: the event's bytes are not a valid event ({exc})")
            continue
        if event["log"] != origin:
            problems.append(f"leaf {index}: the event names another log")
        stored = _columns_of_row(tuple(columns))
        for name, value in stored.items():
            if signed.get(name) != value:
                problems.append(f"leaf {index}: column {name} disagrees with the signed event")
        report.leaves += 1
        if progress is not None and report.leaves % 100_000 == 0:
            progress(report.leaves)
    tree = MerkleTree(hashes)
    for point in checkpoints:
        try:
            opened = open_checkpoint(point.note.encode("utf-8"), keys=keys, origin=origin)
        except Exception as exc:
            problems.append(f"checkpoint {point.size}: {exc}")
            continue
        if opened.size != point.size or opened.root_hash != bytes(point.root):
            problems.append(f"checkpoint {point.size}: its columns disagree with its signed text")
        if opened.size > tree.size:
            problems.append(f"checkpoint {point.size}: the log has only {tree.size} leaves")
        elif tree.root(opened.size) != opened.root_hash:
            problems.append(f"checkpoint {point.size}: the leaves no longer give its root")
    report.pending = AuditEvent.objects.filter(log=log, leaf_entry__isnull=True).count()
    return report


# --- retention -----------------------------------------------------------------------------------


def _trusted_pruned_index(log: str, now: datetime, problems: list[str]) -> int:
    """How far retention may have removed events, as far as verification will believe.

    A pruning record is a row anyone with the database's write access could add. So a missing
    event is excused only if a signed checkpoint covering it is older than the retention period
    now: retention cannot have removed anything younger, and nor may anyone else unnoticed.
    """
    from datetime import timedelta

    claimed = pruned_index(log)
    if not claimed:
        return 0
    old_enough = now - timedelta(days=settings.VAULT_AUDIT_RETENTION_DAYS)
    covered = (
        AuditCheckpoint.objects.filter(log=log, created_at__lte=old_enough)
        .order_by("-size")
        .values_list("size", flat=True)
        .first()
    ) or 0
    if covered < claimed:
        problems.append(
            f"events below leaf {claimed} are said to be pruned, but only those below "
            f"{covered} are older than the retention period"
        )
    return min(claimed, covered)


def pruned_index(log: str) -> int:
    """Leaves below this index have had their events removed by retention."""
    last = AuditPrune.objects.filter(log=log).order_by("-below_index").first()
    return last.below_index if last is not None else 0


def audit_archive_record(log: str, *, size: int, sha256: str) -> AuditArchive:
    """Record that an operator keeps an export of ``log`` up to ``size`` leaves as its archive."""
    tenant = tenant_of_log(log)
    with transaction.atomic():
        archive = AuditArchive.objects.create(log=log, size=size, sha256=sha256)
        audit_record(
            "audit.export",
            tenant=tenant,
            resource_type="audit_log",
            resource_id=log,
            details={"archive": True, "size": size, "sha256": sha256},
        )
    return archive


def audit_prune(log: str, *, now: datetime | None = None) -> int:
    """Delete the events older than ``VAULT_AUDIT_RETENTION_DAYS`` that are both covered by a
    signed checkpoint and archived in an export (PCI-DSS 10.5.1); keep their leaves and every
    checkpoint, so the log still verifies.

    Only a prefix of the log is ever removed: from where the last run stopped up to the first
    event that is too young, not archived, or not yet checkpointed.

    Returns:
        How many events were deleted.
    """
    from datetime import timedelta

    cutoff = (now or timezone.now()) - timedelta(days=settings.VAULT_AUDIT_RETENTION_DAYS)
    archived = AuditArchive.objects.filter(log=log).order_by("-size").first()
    checkpoint = latest_checkpoint(log)
    if archived is None or checkpoint is None:
        return 0
    start = pruned_index(log)
    limit = min(archived.size, checkpoint.size)
    young = (
        AuditLeaf.objects.filter(
            log=log, index__gte=start, index__lt=limit, event__time__gte=cutoff
        )
        .order_by("index")
        .values_list("index", flat=True)
        .first()
    )
    below = young if young is not None else limit
    if below <= start:
        return 0
    tenant = tenant_of_log(log)
    with transaction.atomic():
        guard = AuditPruneGuard.objects.create()
        doomed = AuditLeaf.objects.filter(log=log, index__gte=start, index__lt=below)
        deleted, _ = AuditEvent.objects.filter(
            pk__in=doomed.values_list("event_id", flat=True)
        ).delete()
        AuditPruneGuard.objects.filter(pk=guard.pk).delete()
        AuditPrune.objects.create(log=log, below_index=below, cutoff=cutoff)
        audit_record(
            "audit.prune",
            tenant=tenant,
            resource_type="audit_log",
            resource_id=log,
            details={"below_index": below, "deleted": deleted, "cutoff": format_time(cutoff)},
        )
    logger.info("audit log %s: %d event(s) older than the retention period removed", log, deleted)
    return deleted


def audit_prune_all(*, now: datetime | None = None) -> int:
    """Retention over every log; returns the events removed."""
    logs = set(AuditArchive.objects.values_list("log", flat=True))
    return sum(audit_prune(log, now=now) for log in sorted(logs))
