"""Console pages for a tenant's data: its objects and its audit log.

The roles are the API's, imported from it so the two cannot drift: owners, members and auditors
see object metadata; owners and members read (download) and delete objects; owners and auditors
read the audit log. Every change and every content read goes through the same services as the
API, which write the audit events (``object.delete``, ``object.read``); every read of the audit
pages is itself recorded (``audit.read``, ``audit.export``; PCI-DSS 10.2.1.3).

The event page shows an event's inclusion proof and the checkpoint it is proved against, and the
commands that check it offline with ``cvault``. It does not check the proof itself: a check run
by the server would only be the server vouching for itself.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import content_disposition_header
from django.views.decorators.cache import never_cache

from kms_plugins.errors import KeyBackendError
from vault.api.permissions import READERS as AUDIT_READERS
from vault.audit import exports
from vault.audit import services as audit_services
from vault.audit.events import EVENT_TYPES
from vault.audit.models import AuditEvent, Outcome
from vault.console.tenancy import TenantRequest, require_role, tenant_page
from vault.objects import services as object_services
from vault.objects.api.views import READERS as OBJECT_READERS
from vault.objects.api.views import WRITERS as OBJECT_WRITERS
from vault.objects.models import ObjectMode, ObjectVersion, StoredObject

OBJECTS_PER_PAGE = 25
EVENTS_PER_PAGE = 50
EXPORT_FILE = "audit-export.json"
CLIENT_SIDE_NOTE = "Encrypted on the client; the server cannot read it."


def _attachment(filename: str) -> str:
    """A Content-Disposition header that makes the browser save the answer as ``filename``."""
    return content_disposition_header(True, filename) or "attachment"


def _page(request: TenantRequest, items: Any, per_page: int) -> Page[Any]:
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def _query_without_page(request: TenantRequest) -> str:
    """The current filters as a query string, for the pagination links."""
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


# --- objects -------------------------------------------------------------------------------------


def _live_objects(request: TenantRequest) -> QuerySet[StoredObject]:
    return StoredObject.objects.filter(tenant=request.tenant, deleted_at__isnull=True)


def _object_or_404(request: TenantRequest, pk: int) -> StoredObject:
    """A live object of the caller's tenant; another tenant's id is simply not found."""
    return get_object_or_404(_live_objects(request).select_related("tenant"), pk=pk)


@never_cache
@tenant_page({"GET": OBJECT_READERS})
def objects_list(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's live objects, searchable by name."""
    query = request.GET.get("q", "").strip()[:1024]
    latest = ObjectVersion.objects.filter(object=OuterRef("pk")).order_by("-number")
    found = (
        _live_objects(request)
        .annotate(
            version_count=Count("versions"),
            total_size=Sum("versions__size"),
            latest_size=Subquery(latest.values("size")[:1]),
        )
        .order_by("name", "pk")
    )
    if query:
        found = found.filter(name__icontains=query)
    context = {
        "query": query,
        "page_obj": _page(request, found, OBJECTS_PER_PAGE),
        "page_query": _query_without_page(request),
        "client_side_note": CLIENT_SIDE_NOTE,
    }
    return render(request, "console/objects.html", context)


@never_cache
@tenant_page({"GET": OBJECT_READERS})
def object_detail(request: TenantRequest, slug: str, pk: int) -> HttpResponse:
    """One object: its mode, its versions, and (for owners and members) download and delete."""
    obj = _object_or_404(request, pk)
    context = {
        "obj": obj,
        "versions": obj.versions.order_by("-number"),
        "gateway": obj.mode == ObjectMode.GATEWAY,
        "can_write": request.role in OBJECT_WRITERS,
        "client_side_note": CLIENT_SIDE_NOTE,
    }
    return render(request, "console/objects_detail.html", context)


def _download_name(obj: StoredObject, version: ObjectVersion, *, chosen: bool) -> str:
    base = obj.name.rsplit("/", 1)[-1] or f"object-{obj.pk}"
    return f"v{version.number}-{base}" if chosen else base


@never_cache
@tenant_page({"GET": OBJECT_READERS})
def object_download(request: TenantRequest, slug: str, pk: int) -> HttpResponse:
    """The plaintext of a gateway object's version, streamed and decrypted as it is sent.

    The auditor sees metadata only, as over the API: it may open this address but is refused
    (403, audited). Client-side objects have no plaintext here: the server holds an envelope it
    cannot open, which ``cvault`` fetches and opens.
    """
    obj = _object_or_404(request, pk)
    require_role(request, OBJECT_WRITERS, action="object.read")
    if obj.mode != ObjectMode.GATEWAY:
        raise Http404("Only gateway objects are downloaded here.")
    versions = obj.versions.order_by("-number")
    number = request.GET.get("version", "")
    if number:
        versions = versions.filter(number=int(number) if number.isdigit() else -1)
    version = versions.first()
    if version is None:
        raise Http404("No such version.")
    try:
        download = object_services.version_read(version=version)
    except (object_services.ObjectError, KeyBackendError) as exc:
        if isinstance(exc, KeyBackendError) and exc.transient:
            problem = "The tenant's key backend is unavailable; try again later."
        elif isinstance(exc, KeyBackendError):
            problem = "The tenant's key backend refused to open this object."
        else:
            problem = f"This version cannot be downloaded: {exc}."
        messages.error(request, problem)
        return redirect("console:object_detail", slug=slug, pk=obj.pk)
    response = StreamingHttpResponse(download.chunks, content_type=version.content_type)
    response["Content-Length"] = str(download.length)
    response["Cache-Control"] = "no-store"
    response["Content-Disposition"] = _attachment(_download_name(obj, version, chosen=bool(number)))
    # Streamed, never held whole; tenant_page's View type names only HttpResponse.
    return cast(HttpResponse, response)


@never_cache
@tenant_page({"GET": OBJECT_READERS, "POST": OBJECT_WRITERS})
def object_delete(request: TenantRequest, slug: str, pk: int) -> HttpResponse:
    """Confirm (GET) and delete (POST) an object, with the API's service (``object.delete``)."""
    obj = _object_or_404(request, pk)
    if request.method == "POST":
        object_services.object_delete(obj=obj)
        messages.success(request, f"Deleted {obj.name}. Its storage is purged after retention.")
        return redirect("console:objects", slug=slug)
    context = {"obj": obj, "can_write": request.role in OBJECT_WRITERS}
    return render(request, "console/objects_delete.html", context)


# --- audit log -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)


class EventFilterForm(forms.Form):
    """The event browser's filters (a GET form; times without a zone are UTC)."""

    type = forms.ChoiceField(
        label="Event type",
        required=False,
        choices=[("", "Any type"), *((name, name) for name in sorted(EVENT_TYPES))],
    )
    outcome = forms.ChoiceField(
        label="Outcome", required=False, choices=[("", "Any outcome"), *Outcome.choices]
    )
    actor = forms.CharField(label="Actor contains", required=False, max_length=200)
    start = forms.DateTimeField(
        label="From (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
        help_text="Events at or after this time.",
    )
    end = forms.DateTimeField(
        label="Until (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
        help_text="Events before this time.",
    )

    def events(self, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """``queryset`` narrowed by the valid filters."""
        data = self.cleaned_data
        if data.get("type"):
            queryset = queryset.filter(type=data["type"])
        if data.get("outcome"):
            queryset = queryset.filter(outcome=data["outcome"])
        if data.get("actor"):
            queryset = queryset.filter(actor_id__icontains=data["actor"])
        if data.get("start"):
            queryset = queryset.filter(time__gte=_utc(data["start"]))
        if data.get("end"):
            queryset = queryset.filter(time__lt=_utc(data["end"]))
        return queryset


def _tenant_events(request: TenantRequest) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(tenant=request.tenant).select_related("leaf_entry")


@never_cache
@tenant_page({"GET": AUDIT_READERS})
def audit_list(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's audit events, newest first, filtered by type, outcome, actor and time."""
    audit_services.audit_record("audit.read", tenant=request.tenant, details={"view": "events"})
    form = EventFilterForm(request.GET)
    events = _tenant_events(request).order_by("-time", "-pk")
    events = form.events(events) if form.is_valid() else events.none()
    log = audit_services.log_of(request.tenant)
    context = {
        "form": form,
        "page_obj": _page(request, events, EVENTS_PER_PAGE),
        "page_query": _query_without_page(request),
        "checkpoint": audit_services.latest_checkpoint(log),
    }
    return render(request, "console/audit.html", context)


def _z(moment: datetime) -> str:
    """A time as the export's ``from``/``to`` take it: ISO 8601 in UTC, to the microsecond."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@never_cache
@tenant_page({"GET": AUDIT_READERS})
def audit_detail(request: TenantRequest, slug: str, event_id: Any) -> HttpResponse:
    """One event: its record, its inclusion proof, the checkpoint and how to verify offline."""
    event = get_object_or_404(_tenant_events(request), uuid=event_id)
    audit_services.audit_record(
        "audit.read", tenant=request.tenant, resource_type="audit_event", resource_id=event.uuid
    )
    log = audit_services.log_of(request.tenant)
    checkpoint = audit_services.latest_checkpoint(log)
    entry = getattr(event, "leaf_entry", None)
    proof: list[str] | None = None
    if entry is not None and checkpoint is not None and entry.index < checkpoint.size:
        tree = audit_services.log_tree(log, checkpoint.size)
        hashes = tree.inclusion_proof(entry.index, checkpoint.size)
        proof = [base64.b64encode(h).decode("ascii") for h in hashes]
    # The bundle of this event alone: the events in [time, time + 1 µs).
    window = urlencode({"from": _z(event.time), "to": _z(event.time + timedelta(microseconds=1))})
    api_export = request.build_absolute_uri(reverse("v1:audit-export")) + "?" + window
    context = {
        "event": event,
        "leaf": bytes(event.leaf).decode("utf-8"),
        "entry": entry,
        "checkpoint": checkpoint if proof is not None else None,
        "latest_checkpoint": checkpoint,
        "proof": proof,
        "console_export": reverse("console:audit_export", kwargs={"slug": slug}) + "?" + window,
        "curl_command": (
            f'curl -fsS -H "Authorization: Bearer $CVAULT_TOKEN" -o {EXPORT_FILE} "{api_export}"'
        ),
        "verify_command": f"cvault audit verify {EXPORT_FILE}",
        "export_file": EXPORT_FILE,
    }
    return render(request, "console/audit_detail.html", context)


def _export_time(request: TenantRequest, name: str) -> datetime | None:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return None
    parsed = parse_datetime(raw)
    if parsed is None:
        raise ValueError(name)
    return _utc(parsed)


@never_cache
@tenant_page({"GET": AUDIT_READERS})
def audit_export(request: TenantRequest, slug: str) -> HttpResponse:
    """The export bundle of the API (``GET /api/v1/audit/export/``), recorded as audit.export.

    ``from`` and ``to`` are ISO 8601 times; without a zone they are UTC.
    """
    try:
        start, end = _export_time(request, "from"), _export_time(request, "to")
    except ValueError:
        messages.error(request, "Give the times of the export as dates and times (UTC).")
        return redirect("console:audit", slug=slug)
    audit_services.audit_record(
        "audit.export",
        tenant=request.tenant,
        details={
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
        },
    )
    log = audit_services.log_of(request.tenant)
    try:
        bundle = exports.export_bundle(log, start=start, end=end)
    except exports.NothingToExport:
        messages.error(
            request, "The log has no signed checkpoint yet, so there is nothing to export."
        )
        return redirect("console:audit", slug=slug)
    response = HttpResponse(bundle, content_type="application/json")
    response["Content-Disposition"] = _attachment(EXPORT_FILE)
    response["Cache-Control"] = "no-store"
    return response
