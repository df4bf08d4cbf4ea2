"""Audit logs (PCI-DSS 10.2 to 10.7): coverage, completeness, read access, integrity, retention,
and fail-closed writing.

A tenant's run judges the tenant's own log and the platform log (authentication failures,
tenant creation and platform keys are recorded there). The full verification of a log is the
costliest step of a run, so it is done once per log and shared through ``ctx.shared``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.urls import URLPattern, URLResolver

from compliance.checks import register
from compliance.checks.base import Check, Context, Outcome
from vault.api.permissions import READERS, HasTenantRole
from vault.audit.events import EVENT_TYPES, PCI_CATEGORIES
from vault.audit.models import (
    PLATFORM_LOG,
    AuditArchive,
    AuditCheckpoint,
    AuditEvent,
    AuditLeaf,
    AuditLogHead,
    AuditPrune,
)
from vault.audit.models import (
    Outcome as EventOutcome,
)
from vault.audit.services import (
    AuditUnavailable,
    VerifyReport,
    audit_record,
    audit_verify,
    latest_checkpoint,
    log_of,
)
from vault.crypto.auditbundle import format_time
from vault.tenants.models import Membership, Tenant
from vault.tokens.models import ApiToken

YEAR = timedelta(days=365)
PROBLEM_LIMIT = 50


def _logs(ctx: Context) -> list[tuple[str, str, Tenant | None]]:
    """(log, name in results, tenant) of the logs a tenant's run judges."""
    return [(log_of(ctx.tenant), ctx.tenant.slug, ctx.tenant), (PLATFORM_LOG, "platform", None)]


def _time(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def _period_start(ctx: Context) -> Any:
    """The start of the assessed period: a year ago, or the tenant's creation if later."""
    return max(ctx.now - YEAR, ctx.tenant.created_at)


# --- LOG-001 -------------------------------------------------------------------------------------


@register
class EventCoverage(Check):
    """LOG-001: every 10.2.1.x category has event types, and events of it were recorded."""

    id = "LOG-001"
    title = "Every PCI-DSS 10.2.1.1 to 10.2.1.7 category has audit event types and was recorded"
    description = (
        "Each 10.2.1.x category of vault/audit/events.py must be served by at least one event "
        "type (a missing mapping fails). Its events are counted in the tenant's log and the "
        "platform log over the last 365 days (or since the tenant was created): a mapped "
        "category with no event in the period is reported for review, since nothing having "
        "happened is not a failure of logging."
    )
    risk = "An activity the standard requires to be logged leaves no trace."
    severity = "high"
    scope = "tenant"
    requirements = ("10.2.1",)
    remediation = (
        "Map the category to the event types that record it in vault/audit/events.py and emit "
        "them with audit_record; for a category without events in the period, attest that "
        "nothing of the kind happened (or exercise it, e.g. GET /api/v1/audit/events/)."
    )
    evidence_captured = (
        "Category matrix: event types per category with their counts per log in the period."
    )

    # The catalogue this check judges (tests give it another one).
    categories: ClassVar[dict[str, str]] = PCI_CATEGORIES
    event_types: ClassVar[dict[str, tuple[str, ...]]] = EVENT_TYPES

    def run(self, ctx: Context) -> Iterator[Outcome]:
        start = _period_start(ctx)
        log = log_of(ctx.tenant)
        rows = (
            AuditEvent.objects.filter(
                log__in=[log, PLATFORM_LOG], time__gte=start, time__lte=ctx.now
            )
            .values_list("log", "type")
            .annotate(n=Count("pk"))
            .order_by()
        )
        counts: dict[str, dict[str, int]] = {}
        for event_log, kind, n in rows:
            counts.setdefault(kind, {})["tenant" if event_log == log else "platform"] = n
        matrix = {
            ref: {
                kind: counts.get(kind, {})
                for kind, refs in sorted(self.event_types.items())
                if ref in refs
            }
            for ref in sorted(self.categories)
        }
        digest = ctx.evidence(
            "event-coverage",
            {"from": _time(start), "to": _time(ctx.now), "matrix": matrix},
        )
        for ref, types in matrix.items():
            total = sum(sum(per_log.values()) for per_log in types.values())
            name = self.categories[ref]
            if not types:
                yield self.failed(
                    "event_category",
                    ref,
                    f"No audit event type records category {ref} ({name}).",
                    digest,
                )
            elif total:
                yield self.passed(
                    "event_category",
                    ref,
                    f"Category {ref} ({name}) is recorded by {len(types)} event type(s), with "
                    f"{total} event(s) since {start:%Y-%m-%d}.",
                    digest,
                    events=total,
                )
            else:
                yield self.manual(
                    "event_category",
                    ref,
                    f"Category {ref} ({name}) is mapped to {len(types)} event type(s) but none "
                    f"was recorded since {start:%Y-%m-%d}; confirm that nothing of the kind "
                    f"happened.",
                    digest,
                    events=0,
                )


# --- LOG-002 -------------------------------------------------------------------------------------

# Events whose subject is the log itself (its log column names it) or the sign-in service (an
# attempt on an unknown identity has no resource of its own; the identity is kept as an HMAC).
_IMPLIED_RESOURCE = Q(type__startswith="audit.") | Q(
    type__in=("auth.token.failure", "auth.signin.failure")
)
# 10.2.2.1.1 to 10.2.2.1.6: an event lacks a field when it matches the condition.
INCOMPLETE: dict[str, Q] = {
    # Anonymous attempts have no user; their origin (below) identifies them.
    "user": Q(actor_kind="") | (Q(actor_id="") & ~Q(actor_kind="anonymous")),
    "type": ~Q(type__in=sorted(EVENT_TYPES)),
    "time": Q(time__isnull=True),
    "outcome": ~Q(outcome__in=EventOutcome.values),
    # Jobs and commands run on the platform itself: the system actor is their origin.
    "origin": Q(ip="") & ~Q(actor_kind="system"),
    "resource": Q(resource_type="") & ~_IMPLIED_RESOURCE,
}


@register
class EventCompleteness(Check):
    """LOG-002: every event records who, what, when, the outcome, the origin and the target."""

    id = "LOG-002"
    title = "Every audit event records the user, type, time, outcome, origin and affected resource"
    description = (
        "Counts, over every stored event of the tenant's log and of the platform log, those "
        "missing a 10.2.2 field: the actor's id (anonymous attempts excepted), a known event "
        "type, the time, a success or failure outcome, the origin IP (system jobs excepted) and "
        "the affected resource (events about the log itself, or sign-in attempts on an unknown "
        "identity, name their subject by their log and type). 100% must be complete."
    )
    risk = "Incomplete events cannot tell who did what to which resource, from where."
    severity = "high"
    scope = "tenant"
    requirements = ("10.2.2",)
    remediation = (
        "Events are written only by vault.audit.services.audit_record; an incomplete event was "
        "written or changed outside it. Investigate with manage.py audit_verify and restore "
        "the database from a verified backup."
    )
    evidence_captured = "Completeness counts per field and log, with up to 5 sample event ids."

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for log, name, _tenant in _logs(ctx):
            events = AuditEvent.objects.filter(log=log)
            # Aliases that are not column names: a filter on "type" must mean the column.
            found = events.aggregate(
                total=Count("pk"),
                **{f"without_{f}": Count("pk", filter=q) for f, q in INCOMPLETE.items()},
            )
            total = found.pop("total")
            counts = {key.removeprefix("without_"): n for key, n in found.items()}
            missing = {field: n for field, n in counts.items() if n}
            samples = {
                field: [
                    f"{uuid} {kind}"
                    for uuid, kind in events.filter(INCOMPLETE[field]).values_list("uuid", "type")[
                        :5
                    ]
                ]
                for field in missing
            }
            digest = ctx.evidence(
                "event-completeness",
                {"log": name, "events": total, "missing": counts, "samples": samples},
            )
            if not total:
                yield self.not_applicable(
                    "audit_log", name, f"The {name} audit log holds no event yet.", digest
                )
            elif missing:
                lacking = ", ".join(f"{n} without {field}" for field, n in sorted(missing.items()))
                yield self.failed(
                    "audit_log",
                    name,
                    f"Of the {total} event(s) of the {name} audit log, some are incomplete "
                    f"({lacking}).",
                    digest,
                    missing=missing,
                )
            else:
                yield self.passed(
                    "audit_log",
                    name,
                    f"All {total} event(s) of the {name} audit log record the user, type, time, "
                    f"outcome, origin and affected resource.",
                    digest,
                    events=total,
                )


# --- LOG-003 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiView:
    """An API view of the audit log: its route, its class, and the actions it serves."""

    route: str
    cls: type
    actions: tuple[str, ...]


def _patterns(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for item in patterns:
        if isinstance(item, URLResolver):
            yield from _patterns(item.url_patterns, prefix + str(item.pattern))
        elif isinstance(item, URLPattern):
            yield prefix + str(item.pattern), item.callback


def audit_api_views() -> list[ApiView]:
    """The views of ``vault.audit.api.urls``, one per class, with the actions they serve."""
    from vault.audit.api import urls

    found: dict[type, tuple[str, set[str]]] = {}
    for route, callback in _patterns(urls.urlpatterns):
        cls = getattr(callback, "cls", None)
        if cls is None:
            continue
        mapping = getattr(callback, "actions", None)  # a viewset route: {method: action}
        if mapping:
            actions = set(mapping.values())
        else:
            actions = {m for m in cls.http_method_names if m != "options" and hasattr(cls, m)}
            actions = {"get" if m == "head" else m for m in actions}
        entry = found.setdefault(cls, (route, set()))
        entry[1].update(actions)
    return [ApiView(route, cls, tuple(sorted(acts))) for cls, (route, acts) in found.items()]


def _records_the_read(method: Any) -> bool | None:
    """Whether a view method records the read (calls audit_record); None: no source to read."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return None
    return "audit_record(" in source


def _token_prefix(kind: str, actor_id: str, auth: str) -> str | None:
    """The prefix of the token an actor used (a person's token, or an integration's)."""
    if auth.startswith("token:"):
        return auth.removeprefix("token:")
    return actor_id if kind == "token" else None


def _readers(ctx: Context, start: Any) -> list[dict[str, Any]]:
    """Who read or exported the tenant's log since ``start``, with the role they held."""
    rows = list(
        AuditEvent.objects.filter(
            log=log_of(ctx.tenant),
            type__in=("audit.read", "audit.export"),
            outcome=EventOutcome.SUCCESS,
            time__gte=start,
        )
        .values_list("actor_kind", "actor_id", "auth")
        .annotate(n=Count("pk"))
        .order_by()
    )
    prefixes = {_token_prefix(kind, actor_id, auth) for kind, actor_id, auth, _ in rows} - {None}
    token_roles = dict(
        ApiToken.objects.filter(
            tenant=ctx.tenant, key_id__in=[str(p).removeprefix("cvt_") for p in prefixes]
        ).values_list("key_id", "role")
    )
    member_roles = dict(
        Membership.objects.filter(tenant=ctx.tenant).values_list("user__email", "role")
    )
    readers = []
    for kind, actor_id, auth, n in rows:
        prefix = _token_prefix(kind, actor_id, auth)
        if prefix is not None:
            who, role = prefix, token_roles.get(prefix.removeprefix("cvt_"), "unknown")
        elif kind == "system":
            who, role = actor_id, "system"
        else:
            who, role = actor_id, member_roles.get(actor_id, "unknown")
        readers.append({"actor": who, "kind": kind, "role": role, "reads": n})
    return sorted(readers, key=lambda r: (r["actor"], r["role"]))


@register
class AuditLogReadAccess(Check):
    """LOG-003: only owners and auditors read the audit log, and every read is recorded."""

    id = "LOG-003"
    title = "Only owners and auditors can read the audit log, and every read of it is recorded"
    description = (
        "For every view of the audit API (vault/audit/api): the tenant-role permission guards "
        "it, its allowed roles are owner and auditor only, and each action it serves records "
        "the read (audit.read or audit.export) in its code. From the data: every successful "
        "read or export of the tenant's log in the last 365 days was made by a token or member "
        "holding the owner or auditor role (or by a platform job)."
    )
    risk = "People without a job need read the audit log, or read it without leaving a trace."
    severity = "high"
    scope = "tenant"
    requirements = ("10.3.1", "10.2.1.3")
    remediation = (
        "Restore allowed_roles = READERS (owner, auditor) on the audit API views and record "
        "every read with audit_record; revoke tokens (DELETE /api/v1/tokens/{id}/) of roles "
        "that read the log, and review who holds the owner and auditor roles."
    )
    evidence_captured = (
        "Per audit API view: route, allowed roles per action, whether each action records the "
        "read; readers of the log in the period with their roles and read counts; the members "
        "and live tokens holding owner or auditor."
    )

    def audit_views(self) -> list[ApiView]:
        """The audit API's views (a seam: tests hand the check other views)."""
        return audit_api_views()

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for view in self.audit_views():
            yield self._judge_view(ctx, view)
        yield self._judge_readers(ctx)

    def _judge_view(self, ctx: Context, view: ApiView) -> Outcome:
        allowed = getattr(view.cls, "allowed_roles", {})
        roles = {action: sorted(allowed.get(action, ())) for action in view.actions}
        recorded = {
            action: _records_the_read(getattr(view.cls, action, None)) for action in view.actions
        }
        permissions = getattr(view.cls, "permission_classes", ())
        guarded = any(issubclass(p, HasTenantRole) for p in permissions)
        wider = sorted({r for rs in roles.values() for r in rs} - set(READERS))
        unrecorded = sorted(a for a, ok in recorded.items() if ok is False)
        digest = ctx.evidence(
            "audit-view-access",
            {
                "route": view.route,
                "view": f"{view.cls.__module__}.{view.cls.__qualname__}",
                "guarded_by_role": guarded,
                "roles": roles,
                "records_read": recorded,
            },
        )
        name = f"{view.cls.__qualname__} ({view.route})"
        reasons = []
        if not guarded:
            reasons.append("it is not guarded by the tenant-role permission")
        if wider:
            reasons.append(f"it lets role(s) {', '.join(wider)} read the log")
        if unrecorded:
            reasons.append(f"action(s) {', '.join(unrecorded)} do not record the read")
        if reasons:
            return self.failed("api_view", view.route, f"{name}: {'; '.join(reasons)}.", digest)
        if any(ok is None for ok in recorded.values()):
            return self.manual(
                "api_view",
                view.route,
                f"{name} allows only owners and auditors, but its source is not available to "
                f"confirm that it records each read.",
                digest,
            )
        return self.passed(
            "api_view",
            view.route,
            f"{name} allows only owners and auditors, and each of its actions records the read.",
            digest,
        )

    def _judge_readers(self, ctx: Context) -> Outcome:
        slug = ctx.tenant.slug
        start = ctx.now - YEAR
        readers = _readers(ctx, start)
        holders = sorted(
            Membership.objects.filter(tenant=ctx.tenant, role__in=READERS).values_list(
                "user__email", "role"
            )
        )
        tokens = sorted(
            (f"cvt_{key_id}", role)
            for key_id, role in ApiToken.objects.filter(
                tenant=ctx.tenant,
                role__in=READERS,
                revoked_at__isnull=True,
                expires_at__gt=ctx.now,
            ).values_list("key_id", "role")
        )
        digest = ctx.evidence(
            "audit-log-readers",
            {
                "from": _time(start),
                "readers": readers,
                "members_with_read_roles": [list(h) for h in holders],
                "live_tokens_with_read_roles": [list(t) for t in tokens],
            },
        )
        bad = [r for r in readers if r["role"] not in (*READERS, "system", "unknown")]
        unknown = [r for r in readers if r["role"] == "unknown"]
        reads = sum(r["reads"] for r in readers)
        if bad:
            who = ", ".join(f"{r['actor']} ({r['role']}, {r['reads']} read(s))" for r in bad)
            return self.failed(
                "tenant",
                slug,
                f"Tenant {slug}'s audit log was read by actors without the owner or auditor "
                f"role: {who}.",
                digest,
                readers=len(bad),
            )
        if unknown:
            who = ", ".join(f"{r['actor']} ({r['reads']} read(s))" for r in unknown)
            return self.manual(
                "tenant",
                slug,
                f"Tenant {slug}'s audit log was read by actors whose role is no longer known "
                f"(removed members or revoked tokens): {who}; confirm they held the owner or "
                "auditor role then.",
                digest,
                readers=len(unknown),
            )
        return self.passed(
            "tenant",
            slug,
            f"The {reads} recorded read(s) of tenant {slug}'s audit log in the last 365 days "
            f"were by owners, auditors or platform jobs; {len(holders)} member(s) and "
            f"{len(tokens)} live token(s) hold those roles.",
            digest,
            reads=reads,
        )


# --- the verification, shared by LOG-004, LOG-006 ---------------------------------------------

_REPORTS = "logs.verify_reports"


def _verify(ctx: Context, log: str) -> VerifyReport:
    head = AuditLogHead.objects.filter(log=log).values_list("size", flat=True).first() or 0
    stored = AuditLeaf.objects.filter(log=log).count()
    if not head and not stored and not AuditCheckpoint.objects.filter(log=log).exists():
        # Nothing was ever integrated: there is nothing signed to check (and asking for the
        # log's signer could create a platform key as a side effect).
        report = VerifyReport(log=log)
        report.pending = AuditEvent.objects.filter(log=log).count()
        return report
    report = audit_verify(log, now=ctx.now)
    if head > stored:  # leaves removed after the last checkpoint: no signature covers them
        report.problems.append(f"the log's head records {head} leaves, only {stored} are stored")
    return report


def verified(ctx: Context, log: str) -> VerifyReport | Exception:
    """The verification report of ``log``, computed once per run (an exception: it could not
    be verified: no signing key, a backend down)."""
    reports: dict[str, VerifyReport | Exception] = ctx.shared.setdefault(_REPORTS, {})
    if log not in reports:
        try:
            reports[log] = _verify(ctx, log)
        except Exception as exc:  # the check reports ERROR, never FAIL, for these
            reports[log] = exc
    return reports[log]


# --- LOG-004 -------------------------------------------------------------------------------------

_TRIGGERS_MIGRATION = "vault.audit.migrations.0002_append_only_triggers"


def expected_triggers(vendor: str) -> list[str]:
    """The append-only triggers the audit migration installs on this database."""
    tables = importlib.import_module(_TRIGGERS_MIGRATION).TABLES
    if vendor == "postgresql":
        return [f"{t}_{kind}" for t in tables for kind in ("append_only", "no_truncate")]
    if vendor == "sqlite":
        return [f"{t}_{kind}" for t in tables for kind in ("no_update", "no_delete")]
    return []


def present_triggers(vendor: str) -> dict[str, bool]:
    """The audit triggers present, each with whether it is enabled."""
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute(
                "SELECT t.tgname, t.tgenabled FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND c.relname LIKE %s",
                ["audit\\_%"],
            )
            return {name: state in ("O", "A") for name, state in cursor.fetchall()}
        if vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            return {name: True for (name,) in cursor.fetchall()}
    return {}


@register
class AuditLogIntegrity(Check):
    """LOG-004: the logs verify against their signed checkpoints; the triggers are in place."""

    id = "LOG-004"
    title = "The audit logs verify against their signed checkpoints and the tables are append-only"
    description = (
        "Runs the full verification (vault.audit.services.audit_verify) of the tenant's log and "
        "of the platform log: every leaf's bytes against its hash and its columns, contiguous "
        "indices, every signed checkpoint's root recomputed from the leaves and its signature "
        "under the log's keys. Checks that the append-only triggers of the audit tables exist "
        "and are enabled (PostgreSQL: <table>_append_only and <table>_no_truncate; SQLite: "
        "<table>_no_update and <table>_no_delete). The summary becomes the run's integrity "
        "statement."
    )
    risk = "Audit history is changed or removed without anyone noticing."
    severity = "critical"
    scope = "tenant"
    requirements = ("10.3.2", "10.3.4")
    remediation = (
        "Investigate with manage.py audit_verify [--tenant SLUG] (without it: every log) and "
        "compare with the last archived export (cvault audit verify); restore the audit tables "
        "from a verified backup; recreate missing or disabled triggers as the migration "
        "vault/audit/migrations/0002_append_only_triggers.py defines them."
    )
    evidence_captured = (
        "The verifier's report per log (leaves, checkpoints, pending events, problems) and the "
        "expected and present trigger names."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        summary: dict[str, Any] = {"ok": True, "leaves": 0, "checkpoints": 0, "problems": []}
        for log, name, _tenant in _logs(ctx):
            result = verified(ctx, log)
            yield self._judge_log(ctx, name, result, summary)
        summary["problems"] = summary["problems"][:PROBLEM_LIMIT]
        ctx.shared["audit_verify"] = summary
        yield self._judge_triggers(ctx)

    def _judge_log(
        self, ctx: Context, name: str, result: VerifyReport | Exception, summary: dict[str, Any]
    ) -> Outcome:
        if isinstance(result, Exception):
            summary["ok"] = False
            summary["problems"].append(f"{name}: not verified ({type(result).__name__})")
            return self.error(
                "audit_log",
                name,
                f"The {name} audit log could not be verified ({type(result).__name__}).",
            )
        summary["ok"] = summary["ok"] and result.ok
        summary["leaves"] += result.leaves
        summary["checkpoints"] += result.checkpoints
        summary["problems"].extend(f"{name}: {p}" for p in result.problems)
        digest = ctx.evidence(
            "audit-verify",
            {
                "log": name,
                "ok": result.ok,
                "leaves": result.leaves,
                "checkpoints": result.checkpoints,
                "pending": result.pending,
                "problems": result.problems[:PROBLEM_LIMIT],
            },
        )
        if result.problems:
            shown = "; ".join(result.problems[:3])
            return self.failed(
                "audit_log",
                name,
                f"The {name} audit log fails verification with {len(result.problems)} "
                f"problem(s), e.g. {shown}.",
                digest,
                problems=len(result.problems),
            )
        if not result.leaves and not result.checkpoints:
            return self.not_applicable(
                "audit_log",
                name,
                f"The {name} audit log has no integrated event yet ({result.pending} pending).",
                digest,
            )
        return self.passed(
            "audit_log",
            name,
            f"The {name} audit log verifies: {result.leaves} leaves against "
            f"{result.checkpoints} signed checkpoint(s).",
            digest,
            leaves=result.leaves,
            checkpoints=result.checkpoints,
        )

    def _judge_triggers(self, ctx: Context) -> Outcome:
        vendor = connection.vendor
        expected = expected_triggers(vendor)
        present = present_triggers(vendor)
        missing = [t for t in expected if t not in present]
        disabled = [t for t in expected if t in present and not present[t]]
        digest = ctx.evidence(
            "audit-triggers",
            {"database": vendor, "expected": expected, "missing": missing, "disabled": disabled},
        )
        if not expected:
            return self.manual(
                "platform",
                "platform",
                f"The database ({vendor}) has no append-only triggers this check knows; confirm "
                f"by other means that the audit tables refuse changes.",
                digest,
            )
        if missing or disabled:
            return self.failed(
                "platform",
                "platform",
                f"Audit table triggers are missing ({', '.join(missing) or 'none'}) or disabled "
                f"({', '.join(disabled) or 'none'}): the audit tables accept changes.",
                digest,
                missing=missing,
                disabled=disabled,
            )
        note = (
            " SQLite has no roles or grants: whoever can write the database file can drop "
            "them, so the signed checkpoints remain the real control."
            if vendor == "sqlite"
            else ""
        )
        return self.passed(
            "platform",
            "platform",
            f"All {len(expected)} append-only triggers of the audit tables are installed and "
            f"enabled ({vendor}).{note}",
            digest,
        )


# --- LOG-006 -------------------------------------------------------------------------------------


def _retention_facts(ctx: Context, log: str) -> tuple[dict[str, Any], list[str]]:
    """What the log keeps and what retention removed, and what is wrong with it."""
    problems = []
    prunes = list(
        AuditPrune.objects.filter(log=log)
        .order_by("below_index")
        .values_list("below_index", "cutoff", "created_at")
    )
    for below, cutoff, created in prunes:
        if cutoff > ctx.now - YEAR:
            problems.append(
                f"the retention run of {created:%Y-%m-%d} removed the events below leaf {below}, "
                f"up to {cutoff:%Y-%m-%d}: some may be younger than 365 days"
            )
    pruned = max((below for below, _, _ in prunes), default=0)
    archived = (
        AuditArchive.objects.filter(log=log).order_by("-size").values_list("size", flat=True)
    ).first() or 0
    if pruned > archived:
        problems.append(
            f"events below leaf {pruned} were removed but the archive covers only {archived}"
        )
    oldest = AuditEvent.objects.filter(log=log).aggregate(t=Min("time"))["t"]
    facts = {
        "oldest_event_in_database": _time(oldest),
        "database_days": (ctx.now - oldest).days if oldest else 0,
        "pruned_below_leaf": pruned,
        "archived_up_to_leaf": archived,
        "prunes": [[b, _time(c), _time(t)] for b, c, t in prunes],
    }
    return facts, problems


@register
class AuditLogRetention(Check):
    """LOG-006: a year of audit history is kept, without gaps."""

    id = "LOG-006"
    title = "Audit history of at least 12 months is kept, complete and without gaps"
    description = (
        "VAULT_AUDIT_RETENTION_DAYS is at least 365. Per log (the tenant's and the platform's): "
        "no retention run removed events of the last 365 days (its cutoff is older than a "
        "year); every removed event lies in an "
        "archived export (AuditArchive), so the history since the log started stays "
        "retrievable; and the leaf indices have no gap and no leaf lost its event (from the "
        "LOG-004 verification). The database keeps everything younger than the retention "
        "period, so the 3 months at hand are covered too."
    )
    risk = "Audit history needed for an investigation is gone."
    severity = "high"
    scope = "tenant"
    requirements = ("10.5.1",)
    remediation = (
        "Set VAULT_AUDIT_RETENTION_DAYS to 365 or more; archive before pruning (manage.py "
        "audit_export --archive); recover lost events from the archived exports."
    )
    evidence_captured = (
        "Retention setting; per log the oldest event in the database, pruning records, archive "
        "coverage and gap problems."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        days = int(ctx.setting("VAULT_AUDIT_RETENTION_DAYS"))
        digest = ctx.evidence("audit-retention-setting", {"VAULT_AUDIT_RETENTION_DAYS": days})
        if days < 365:
            yield self.failed(
                "platform",
                "platform",
                f"VAULT_AUDIT_RETENTION_DAYS is {days}: retention deletes archived events "
                f"younger than 365 days.",
                digest,
                days=days,
            )
        else:
            yield self.passed(
                "platform",
                "platform",
                f"VAULT_AUDIT_RETENTION_DAYS is {days}, at least 365.",
                digest,
                days=days,
            )
        for log, name, _tenant in _logs(ctx):
            yield self._judge_log(ctx, log, name)

    def _judge_log(self, ctx: Context, log: str, name: str) -> Outcome:
        facts, problems = _retention_facts(ctx, log)
        report = verified(ctx, log)
        if isinstance(report, Exception):
            return self.error(
                "audit_log",
                name,
                f"The {name} audit log could not be verified for gaps ({type(report).__name__}).",
            )
        gaps = [p for p in report.problems if "missing" in p]
        problems.extend(gaps[:PROBLEM_LIMIT])
        digest = ctx.evidence("audit-retention", {"log": name, **facts, "problems": problems})
        if problems:
            return self.failed(
                "audit_log",
                name,
                f"The {name} audit log does not keep its history: {'; '.join(problems[:3])}.",
                digest,
                problems=len(problems),
            )
        if not facts["oldest_event_in_database"] and not facts["pruned_below_leaf"]:
            return self.not_applicable(
                "audit_log", name, f"The {name} audit log holds no event yet.", digest
            )
        return self.passed(
            "audit_log",
            name,
            f"The {name} audit log keeps its whole history: {facts['database_days']} day(s) in "
            f"the database, {facts['pruned_below_leaf']} older leaves archived, no gaps.",
            digest,
        )


# --- LOG-008 -------------------------------------------------------------------------------------

INTEGRATION_LAG = timedelta(minutes=15)  # the integrator runs every minute


class _RollBack(Exception):
    """Undoes the probe's transaction."""


def probe_transactional_write(tenant: Tenant | None) -> str | None:
    """Write a canary event in a transaction and roll it back; what went wrong, or None.

    Passing means: the event was written (the log accepts writes now), inside the caller's
    transaction (visible there), and went with it (gone after the rollback), so a change and
    its event commit together or not at all. Nothing is left behind.
    """
    seen: list[tuple[int, bool]] = []
    try:
        with transaction.atomic():
            event = audit_record(
                "compliance.run",
                tenant=tenant,
                resource_type="probe",
                resource_id="LOG-008",
                details={"probe": True},
            )
            seen.append((event.pk, AuditEvent.objects.filter(pk=event.pk).exists()))
            raise _RollBack
    except _RollBack:
        pass
    except AuditUnavailable:
        return "the audit log refuses to record events (audit_unavailable)"
    pk, visible = seen[0]
    if not visible:
        return "the event written was not visible inside its own transaction"
    if AuditEvent.objects.filter(pk=pk).exists():
        return "the event outlived the rollback of the transaction that wrote it"
    return None


def pending_events(log: str) -> dict[str, Any]:
    """Events not yet integrated: the integrator takes them in primary-key order, so they are
    those after the last integrated one."""
    last = (
        AuditLeaf.objects.filter(log=log).order_by("-index").values_list("event_id", flat=True)
    ).first()
    events = AuditEvent.objects.filter(log=log, leaf_entry__isnull=True)
    if last is not None:
        events = events.filter(pk__gt=last)
    found = events.aggregate(count=Count("pk"), oldest=Min("time"))
    checkpoint = latest_checkpoint(log)
    return {
        "pending": found["count"],
        "oldest_pending": found["oldest"],
        "newest_checkpoint": checkpoint.created_at if checkpoint else None,
    }


@register
class AuditFailClosed(Check):
    """LOG-008: audit writing fails closed, and the checkpointing pipeline keeps up."""

    id = "LOG-008"
    title = "Audit events are written with the change they record, and are checkpointed promptly"
    description = (
        "Per log (the tenant's and the platform's), a live probe: a canary event is recorded "
        "through audit_record inside a transaction that is then rolled back; it must be written "
        "(the log accepts writes), visible inside that transaction and gone after the rollback "
        "(the event shares its change's transaction: neither commits without the other). "
        "Nothing is left behind. And the integrator that signs checkpoints (every minute) must "
        "keep up: no event may wait more than 15 minutes for its leaf, which would mean the "
        "checkpointing and alerting pipeline has failed."
    )
    risk = (
        "Actions happen without their audit trail, or recorded events stay unsigned and "
        "alterable while nobody notices the pipeline stopped."
    )
    severity = "high"
    scope = "platform"
    requirements = ("10.7.2",)
    remediation = (
        "Restore database writes to the audit tables; make sure Celery beat runs "
        "vault.audit.integrate (or run manage.py audit_checkpoint) and that the signing key's "
        "backend is reachable; alert on audit_unavailable errors."
    )
    evidence_captured = (
        "Per log: the probe's result, pending events and the oldest one's time, and the newest "
        "checkpoint's time."
    )

    def run(self, ctx: Context) -> Iterator[Outcome]:
        for log, name, tenant in _logs(ctx):
            problem = probe_transactional_write(tenant)
            # As the run found the log before it integrated it (the engine records that at the
            # start); a check run on its own looks now.
            facts = ctx.shared.get("pending_at_start", {}).get(log) or pending_events(log)
            late = facts["oldest_pending"] is not None and (
                facts["oldest_pending"] < ctx.now - INTEGRATION_LAG
            )
            digest = ctx.evidence(
                "audit-fail-closed",
                {
                    "log": name,
                    "probe": problem or "ok",
                    "pending": facts["pending"],
                    "oldest_pending": _time(facts["oldest_pending"]),
                    "newest_checkpoint": _time(facts["newest_checkpoint"]),
                    "lag_limit_minutes": int(INTEGRATION_LAG.total_seconds() // 60),
                },
            )
            if problem:
                yield self.failed(
                    "audit_log", name, f"Probing the {name} audit log: {problem}.", digest
                )
            elif late:
                yield self.failed(
                    "audit_log",
                    name,
                    f"{facts['pending']} event(s) of the {name} audit log wait for a "
                    f"checkpoint, the oldest since {_time(facts['oldest_pending'])}: the "
                    f"integrator has not run for over 15 minutes.",
                    digest,
                    pending=facts["pending"],
                )
            else:
                yield self.passed(
                    "audit_log",
                    name,
                    f"The {name} audit log records events inside the transaction of their "
                    f"change, and its integrator keeps up ({facts['pending']} recent event(s) "
                    f"pending).",
                    digest,
                    pending=facts["pending"],
                )
