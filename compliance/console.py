"""Compliance pages of the console, contributed by the compliance app (issue 8, item 5).

The console never imports this app: these views use the console's ``tenant_page`` and register
their navigation entry from ``compliance.apps`` (the dependency runs compliance -> vault).

Roles mirror the API (``compliance.api.views``): owners, custodians and auditors read runs,
findings, evidence and exports; members see none of it. Waivers and attestations are people's
acts, for owners and custodians, through the same services as the API (which write the audit
events). One difference, on purpose: the API lets an auditor's token start a run, but a console
page never lets the auditor post anything (``tenant_page`` refuses it), so in the console only
owners and custodians press "Run the checks now". Runs also start daily on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from compliance import catalog, engine, services
from compliance.checks import all_checks
from compliance.exports import FORMATS, MEDIA_TYPES, ExportError, export_run
from compliance.models import (
    Attestation,
    ComplianceRun,
    Evidence,
    Finding,
    RunState,
    Status,
    Trigger,
    Waiver,
    WaiverApproval,
    WaiverState,
)
from vault.console.tenancy import TenantRequest, require_role, tenant_page
from vault.tenants.models import Role

READERS = frozenset({Role.OWNER, Role.CUSTODIAN, Role.AUDITOR})
DECIDERS = frozenset({Role.OWNER, Role.CUSTODIAN})
# Who presses "Run the checks now": the API's readers, less the auditor (see the docstring).
RUNNERS = DECIDERS
CHART_RUNS = 12
EXPORT_LABELS = {
    "pdf": "Signed PDF report",
    "json": "JSON report",
    "csv": "CSV report",
    "pack": "Signed evidence pack (ZIP)",
}
SUFFIXES = {"pdf": "pdf", "json": "json", "csv": "csv", "pack": "zip"}


def _failure(exc: Exception) -> str:
    """A refusal or failure as the page shows it: the message and its stable code."""
    code = getattr(exc, "code", "compliance_failed")
    return f"{exc} ({code})"


# --- runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartBar:
    """One run's stacked bar: segments of (finding, css class, y, height, count)."""

    run: ComplianceRun
    x: int
    label: str
    segments: list[tuple[str, str, int, int, int]]
    total: int


CHART_ORDER = (
    (Finding.IN_PLACE, "finding-in-place"),
    (Finding.NOT_IN_PLACE, "finding-not-in-place"),
    (Finding.NOT_TESTED, "finding-not-tested"),
    (Finding.NOT_APPLICABLE, "finding-not-applicable"),
)
CHART_HEIGHT = 200
CHART_BAR = 28
CHART_GAP = 16
CHART_LEFT = 36


def findings_chart(runs: list[ComplianceRun]) -> dict[str, Any]:
    """Stacked bars of the requirements' findings per finished run, oldest first, as numbers an
    inline SVG draws with presentation attributes (the CSP forbids inline styles)."""
    runs = list(reversed(runs))
    most = max(
        (sum(int(v) for v in (r.summary.get("requirements") or {}).values()) for r in runs),
        default=0,
    )
    scale = CHART_HEIGHT / most if most else 0.0
    bars = []
    for number, run in enumerate(runs):
        counts = run.summary.get("requirements") or {}
        y = CHART_HEIGHT
        segments = []
        for finding, css in CHART_ORDER:
            count = int(counts.get(str(finding), 0))
            height = round(count * scale)
            y -= height
            segments.append((str(finding.label), css, y, height, count))
        bars.append(
            ChartBar(
                run=run,
                x=CHART_LEFT + CHART_GAP + number * (CHART_BAR + CHART_GAP),
                label=run.started_at.strftime("%m-%d"),
                segments=segments,
                total=sum(s[4] for s in segments),
            )
        )
    return {
        "bars": bars,
        "most": most,
        "height": CHART_HEIGHT,
        "bar_width": CHART_BAR,
        "width": CHART_LEFT + CHART_GAP + len(bars) * (CHART_BAR + CHART_GAP),
        "legend": [(str(f.label), css) for f, css in CHART_ORDER],
        "axis_x": CHART_LEFT,
        "label_y": CHART_HEIGHT + 16,
        "view_height": CHART_HEIGHT + 24,
    }


def _run_of(request: TenantRequest, run_id: Any) -> ComplianceRun:
    """The tenant's run ``run_id``; 404 for another tenant's."""
    return get_object_or_404(ComplianceRun, pk=run_id, tenant=request.tenant)


@never_cache
@tenant_page({"GET": READERS, "POST": RUNNERS})
def runs(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's runs, a chart of findings over the last runs, and the button to start one."""
    if request.method == "POST":
        return _run_start(request)
    all_runs = list(ComplianceRun.objects.filter(tenant=request.tenant).order_by("-started_at"))
    finished = [r for r in all_runs if r.state == RunState.FINISHED][:CHART_RUNS]
    running = next(
        (r for r in all_runs if r.state == RunState.RUNNING and r.started_at >= _stale_before()),
        None,
    )
    context = {
        "runs": all_runs,
        "running": running,
        "chart": findings_chart(finished) if finished else None,
        "can_run": request.role in RUNNERS,
    }
    return render(request, "compliance/console/runs.html", context)


def _stale_before() -> datetime:
    return timezone.now() - engine.RUN_STALE_AFTER


def _run_start(request: TenantRequest) -> HttpResponse:
    from compliance.tasks import evaluate

    try:
        run = engine.run_start(
            request.tenant,
            trigger=Trigger.API,
            requested_by=request.user.email,
            exclusive=True,
        )
    except engine.RunInProgress as exc:
        # One run at a time, as over the API: show the one in progress instead.
        messages.info(request, "A run of the checks is already in progress; here it is.")
        return redirect("compliance:run", slug=request.tenant.slug, run_id=exc.run.pk)
    try:
        evaluate.delay(str(run.pk))
    except Exception as exc:
        # The job failed in-process, or could not be enqueued (the queue is down: 503
        # queue_unavailable): either way no run may stay "running" for nothing.
        engine.run_not_queued(run, exc)
        if not hasattr(exc, "code"):
            raise
        messages.error(request, f"The run could not finish: {_failure(exc)}")
        return redirect("compliance:run", slug=request.tenant.slug, run_id=run.pk)
    run.refresh_from_db()
    if run.state == RunState.FINISHED:
        messages.success(request, "The checks ran. Here are the findings.")
    else:
        messages.success(request, "The checks are running. Reload this page to see the findings.")
    return redirect("compliance:run", slug=request.tenant.slug, run_id=run.pk)


@never_cache
@tenant_page({"GET": READERS})
def run_detail(request: TenantRequest, slug: str, run_id: Any) -> HttpResponse:
    """One run: the requirement matrix, every result with its evidence, and the downloads."""
    run = _run_of(request, run_id)
    requirements = [
        {"row": row, "title": catalog.REQUIREMENTS.get(row.ref, "")}
        for row in run.requirements.order_by("pk")
    ]
    results = list(run.results.all().order_by("check_id", "resource_type", "resource_id"))
    context = {
        "run": run,
        "requirements": requirements,
        "results": results,
        "finished": run.state == RunState.FINISHED,
        "exports": [(fmt, EXPORT_LABELS[fmt]) for fmt in ("pdf", "json", "csv", "pack")],
        "can_waive": request.role in DECIDERS,
        "fail": Status.FAIL,
    }
    return render(request, "compliance/console/run_detail.html", context)


@never_cache
@tenant_page({"GET": READERS})
def run_export(request: TenantRequest, slug: str, run_id: Any) -> HttpResponse:
    """A run's export (``?type=pdf|json|csv|pack``), audited by ``export_run``; a refusal goes
    back to the run with its code."""
    run = _run_of(request, run_id)
    fmt = request.GET.get("type") or "pdf"
    if fmt not in FORMATS:
        raise Http404("No such export.")
    try:
        data = export_run(run, fmt)
    except Exception as exc:
        if not isinstance(exc, ExportError) and not hasattr(exc, "code"):
            raise
        messages.error(request, f"The {EXPORT_LABELS[fmt]} could not be made: {_failure(exc)}")
        return redirect("compliance:run", slug=request.tenant.slug, run_id=run.pk)
    response = HttpResponse(data, content_type=MEDIA_TYPES[fmt])
    response["Content-Disposition"] = (
        f'attachment; filename="compliance-{request.tenant.slug}-{run.pk}.{SUFFIXES[fmt]}"'
    )
    return response  # never_cache: no-store, as the API's export


@never_cache
@tenant_page({"GET": READERS})
def evidence(request: TenantRequest, slug: str, sha256: str) -> HttpResponse:
    """One piece of the tenant's evidence, as the JSON a check looked at."""
    item = Evidence.objects.filter(tenant=request.tenant, sha256=sha256.lower()).first()
    if item is None:
        raise Http404("No such evidence.")
    body = bytes(item.body)
    try:
        pretty = json.dumps(json.loads(body), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        pretty = body.decode("utf-8", errors="replace")
    context = {"item": item, "pretty": pretty}
    return render(request, "compliance/console/evidence.html", context)


# --- waivers -------------------------------------------------------------------------------------


def _check_choices() -> list[tuple[str, str]]:
    return [(c.id, f"{c.id}: {c.title}") for c in all_checks() if c.kind != "manual"]


class WaiverRequestForm(forms.Form):
    check_id = forms.ChoiceField(label="Check")
    finding_id = forms.CharField(
        label="Finding id (empty: every finding of the check)",
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    justification = forms.CharField(
        label="Why the risk is accepted",
        min_length=10,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    compensating_control = forms.CharField(
        label="Compensating control (optional)",
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    days = forms.IntegerField(
        label="Days until it expires",
        min_value=1,
        max_value=services.WAIVER_MAX_DAYS,
        initial=90,
        widget=forms.NumberInput(attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["check_id"].choices = _check_choices()  # type: ignore[attr-defined]


class DecisionForm(forms.Form):
    waiver = forms.IntegerField(widget=forms.HiddenInput)
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    reason = forms.CharField(required=False, max_length=2000)


def _waiver_of(request: TenantRequest, pk: Any) -> Waiver:
    """The tenant's waiver ``pk``; 404 for another tenant's (or none)."""
    try:
        number = int(pk)
    except (TypeError, ValueError):
        raise Http404("No such waiver.") from None
    return get_object_or_404(Waiver, pk=number, tenant=request.tenant)


@never_cache
@tenant_page({"GET": READERS, "POST": DECIDERS})
def waivers(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's waivers; ask for one; approve, reject or revoke one (owners, custodians)."""
    form = WaiverRequestForm(
        initial={
            "check_id": request.GET.get("check", ""),
            "finding_id": request.GET.get("finding", ""),
        }
    )
    if request.method == "POST":
        action = request.POST.get("action", "")
        here = reverse("compliance:waivers", kwargs={"slug": request.tenant.slug})
        if action == "request":
            form = WaiverRequestForm(request.POST)
            if form.is_valid():
                try:
                    waiver = services.waiver_request(
                        tenant=request.tenant,
                        user=request.user,
                        check_id=form.cleaned_data["check_id"],
                        finding_id=form.cleaned_data["finding_id"].strip().lower(),
                        justification=form.cleaned_data["justification"],
                        compensating_control=form.cleaned_data["compensating_control"],
                        days=form.cleaned_data["days"],
                    )
                except services.ComplianceError as exc:
                    form.add_error(None, _failure(exc))
                else:
                    messages.success(
                        request,
                        f"Waiver {waiver.pk} for {waiver.check_id} is waiting for "
                        f"{_approvals_required()} approvals by other owners or custodians.",
                    )
                    return HttpResponseRedirect(here)
        elif action in ("decide", "revoke"):
            return _waiver_act(request, action, here)
        else:
            messages.error(request, "Nothing was changed: unknown action.")
            return HttpResponseRedirect(here)
    items = list(
        Waiver.objects.filter(tenant=request.tenant)
        .select_related("requested_by")
        .prefetch_related("approvals__approver")
        .order_by("-requested_at", "-pk")
    )
    decided = set(
        WaiverApproval.objects.filter(waiver__in=items, approver=request.user).values_list(
            "waiver_id", flat=True
        )
    )
    rows = [
        {
            "waiver": w,
            "can_decide": request.role in DECIDERS
            and w.state == WaiverState.PENDING
            and w.requested_by_id != request.user.pk
            and w.pk not in decided,
            "can_revoke": request.role in DECIDERS
            and w.state in (WaiverState.PENDING, WaiverState.ACTIVE),
            "own": w.requested_by_id == request.user.pk,
        }
        for w in items
    ]
    context = {
        "rows": rows,
        "form": form,
        "can_change": request.role in DECIDERS,
        "approvals_required": _approvals_required(),
    }
    status = 400 if form.is_bound and form.errors else 200
    return render(request, "compliance/console/waivers.html", context, status=status)


def _approvals_required() -> int:
    return int(settings.VAULT_APPROVALS_REQUIRED)


def _waiver_act(request: TenantRequest, action: str, here: str) -> HttpResponse:
    require_role(request, DECIDERS, action=f"waiver_{action}")
    waiver = _waiver_of(request, request.POST.get("waiver"))
    try:
        if action == "revoke":
            waiver = services.waiver_revoke(waiver=waiver, user=request.user)
            messages.success(request, f"Waiver {waiver.pk} is revoked.")
        else:
            decision = request.POST.get("decision")
            if decision not in ("approve", "reject"):
                messages.error(request, "Nothing was changed: approve or reject.")
                return HttpResponseRedirect(here)
            waiver = services.waiver_decide(
                waiver=waiver,
                user=request.user,
                approve=decision == "approve",
                reason=request.POST.get("reason", "")[:2000],
            )
            done = "approved" if decision == "approve" else "rejected"
            messages.success(
                request, f"You {done} waiver {waiver.pk}; it is now {waiver.get_state_display()}."
            )
    except services.ComplianceError as exc:
        messages.error(request, f"Nothing was changed: {_failure(exc)}")
    return HttpResponseRedirect(here)


# --- attestations --------------------------------------------------------------------------------


class AttestationForm(forms.Form):
    requirement = forms.ChoiceField(
        label="PCI-DSS requirement",
        choices=[(ref, f"{ref}: {title}") for ref, title in catalog.REQUIREMENTS.items()],
    )
    kind = forms.ChoiceField(
        label="Kind",
        choices=[(k, k.replace("_", " ").capitalize()) for k in services.ATTESTATION_KINDS],
    )
    statement = forms.CharField(
        label="Statement: what was done",
        min_length=10,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    valid_days = forms.IntegerField(
        label="Days it stays valid",
        min_value=1,
        max_value=services.ATTESTATION_MAX_DAYS,
        initial=365,
        widget=forms.NumberInput(attrs={"autocomplete": "off"}),
    )
    document_sha256 = forms.CharField(
        label="SHA-256 of a supporting document (optional)",
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


@never_cache
@tenant_page({"GET": READERS, "POST": DECIDERS})
def attestations(request: TenantRequest, slug: str) -> HttpResponse:
    """The tenant's signed attestations, and a form to sign one (owners, custodians)."""
    form = AttestationForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        try:
            item = services.attestation_create(
                tenant=request.tenant,
                user=request.user,
                requirement=form.cleaned_data["requirement"],
                kind=form.cleaned_data["kind"],
                statement=form.cleaned_data["statement"],
                valid_days=form.cleaned_data["valid_days"],
                document_sha256=form.cleaned_data["document_sha256"].strip().lower(),
            )
        except Exception as exc:
            if not isinstance(exc, services.ComplianceError) and not hasattr(exc, "code"):
                raise
            form.add_error(None, _failure(exc))
        else:
            messages.success(
                request, f"Attestation {item.pk} for {item.requirement} is signed and recorded."
            )
            return redirect("compliance:attestations", slug=request.tenant.slug)
    items = list(
        Attestation.objects.filter(tenant=request.tenant)
        .select_related("signer")
        .order_by("-signed_at", "-pk")
    )
    kinds = dict(AttestationForm.base_fields["kind"].choices)  # type: ignore[attr-defined]
    rows = [
        {
            "item": item,
            "title": catalog.REQUIREMENTS.get(item.requirement, ""),
            "kind": kinds.get(item.kind, item.kind),
        }
        for item in items
    ]
    context = {"rows": rows, "form": form, "can_change": request.role in DECIDERS}
    status = 400 if form.is_bound and form.errors else 200
    return render(request, "compliance/console/attestations.html", context, status=status)
