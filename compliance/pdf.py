"""The PDF form of a compliance report: WeasyPrint renders ``compliance/report.html`` from the
report JSON (docs/compliance.md, "Report JSON"), with the JSON and CSV exports attached.

Every value goes through Django's template autoescaping; the renderer fetches nothing (no
network, no files), so a report's text can never pull content into the PDF. Signing is
``compliance.signing.sign_pdf``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.template.loader import render_to_string

TEMPLATE = "compliance/report.html"
# WeasyPrint's run-time libraries on Debian (and a font to render with).
DEBIAN_PACKAGES = (
    "libpango-1.0-0",
    "libpangoft2-1.0-0",
    "libharfbuzz-subset0",
    "fonts-dejavu-core",
)
RESULT_ORDER = ("PASS", "FAIL", "MANUAL", "ERROR", "NOT_APPLICABLE", "WAIVED")
FINDING_ORDER = ("IN_PLACE", "NOT_IN_PLACE", "NOT_TESTED", "NOT_APPLICABLE")
POPULATION_ORDER = ("keys", "members", "tokens", "rotations", "approvals")
KEY_COLUMNS = (
    ("backend", "Backend"),
    ("kind", "Kind"),
    ("algorithm", "Algorithm"),
    ("size", "Size"),
    ("state", "State"),
    ("versions", "Versions"),
    ("production_safe", "Production-safe"),
)
EVIDENCE_COLUMNS = (
    ("ref", "Ref"),
    ("sha256", "SHA-256"),
    ("kind", "Kind"),
    ("check", "Check"),
    ("media_type", "Media type"),
    ("size", "Size"),
    ("collected_at", "Collected at"),
)
# Statuses and findings get a colour in the stylesheet; anything else is shown plainly.
KNOWN_MARKS = frozenset(RESULT_ORDER) | frozenset(FINDING_ORDER)


class PdfError(Exception):
    """Base of the PDF rendering errors; ``code`` is the stable error code."""

    code = "pdf_error"


class PdfUnavailable(PdfError):
    """WeasyPrint cannot run here: its system libraries (Pango) are missing."""

    code = "pdf_unavailable"
    status = 503


def _weasyprint() -> Any:
    """The weasyprint module, or ``PdfUnavailable`` naming the packages that bring Pango."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise PdfUnavailable(
            "PDF rendering needs WeasyPrint's system libraries; on Debian or Ubuntu: "
            f"apt-get install {' '.join(DEBIAN_PACKAGES)} ({type(exc).__name__}: {exc})"
        ) from exc
    return weasyprint


def _text(value: Any) -> str:
    """One table cell's text (escaped later by the template).

    Nested records become one ``key: value`` line each, so a generic table stays readable.
    """
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_text(item)}" for key, item in value.items()) or "—"
    if isinstance(value, Sequence):
        if all(isinstance(item, Mapping) for item in value):
            return "\n".join(_text(item) for item in value) or "—"
        return ", ".join(_text(item) for item in value) or "—"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _words(value: Any) -> list[str]:
    """A list of short identifiers (check ids, evidence refs), each kept on one line."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [_text(item) for item in value]
    return []


def _mark(value: Any) -> str:
    """The CSS class of a status or finding cell (only ever one of the known words)."""
    return f"mark-{value}" if isinstance(value, str) and value in KNOWN_MARKS else ""


def _counts(found: Mapping[str, Any] | None, order: Sequence[str]) -> list[dict[str, str]]:
    found = dict(found or {})
    names = list(order) + sorted(name for name in found if name not in order)
    return [
        {"name": name, "count": _text(found.get(name, 0)), "mark": _mark(name)} for name in names
    ]


def _generic_table(rows: Any) -> dict[str, Any]:
    """Columns (the union of the rows' keys, in order of appearance) and cell texts."""
    rows = [row for row in rows or [] if isinstance(row, Mapping)]
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return {
        "columns": [column.replace("_", " ") for column in columns],
        "rows": [[_text(row.get(column)) for column in columns] for row in rows],
    }


def _current_version(key: Mapping[str, Any]) -> Mapping[str, Any]:
    """The key version the inventory row describes: its current one, else its newest."""
    versions = [v for v in key.get("versions") or [] if isinstance(v, Mapping)]
    current = key.get("current_version")
    for version in versions:
        if version.get("version") == current:
            return version
    return versions[-1] if versions else {}


def _key_rows(keys: Any) -> list[dict[str, Any]]:
    """The scope table: one row per key of the inventory (``populations.keys``)."""
    rows = []
    for key in keys or []:
        if not isinstance(key, Mapping):
            continue
        version = _current_version(key)
        versions = key.get("versions")
        facts = {
            **{name: version.get(name) for name in ("algorithm", "size", "state")},
            **{name: key.get(name) for name, _ in KEY_COLUMNS if key.get(name) is not None},
            "versions": len(versions) if isinstance(versions, list) else versions,
        }
        label = " ".join(_text(key.get(name)) for name in ("owner", "role") if key.get(name))
        notes = []
        if key.get("production_safe") is False:
            notes.append("held by a backend that is not production-safe")
        if key.get("suspended"):
            notes.append("suspended")
        if key.get("unavailable"):
            notes.append(f"backend unavailable ({_text(key.get('unavailable'))})")
        rows.append(
            {
                "label": label or _text(key.get("key_id")),
                "key_id": _text(key.get("key_id")),
                "cells": [_text(facts.get(name)) for name, _ in KEY_COLUMNS],
                "notes": notes,
            }
        )
    return rows


def _checkpoint(checkpoint: Any) -> dict[str, str] | None:
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        return None
    return {
        "origin": _text(checkpoint.get("origin")),
        "size": _text(checkpoint.get("size")),
        "root": _text(checkpoint.get("root")),
        "note": str(checkpoint.get("note") or ""),
    }


def report_context(report: Mapping[str, Any]) -> dict[str, Any]:
    """What ``compliance/report.html`` shows, drawn from a report JSON document.

    Values become plain strings here; none is marked safe, so the template escapes them all.
    """
    run = report.get("run") or {}
    checks = {c.get("id"): c for c in report.get("checks") or [] if isinstance(c, Mapping)}
    requirements = [
        {
            "ref": _text(req.get("ref")),
            "title": _text(req.get("title")),
            "finding": _text(req.get("finding")),
            "mark": _mark(req.get("finding")),
            "narrative": _text(req.get("narrative")),
            "checks": _words(req.get("checks")),
            "evidence": _words(req.get("evidence")),
            "compensating": bool(req.get("compensating_control_used")),
            "violated": [
                _text(g.get("setting"))
                for g in req.get("guardrails") or []
                if isinstance(g, Mapping) and g.get("violated")
            ],
        }
        for req in report.get("requirements") or []
        if isinstance(req, Mapping)
    ]
    results = [
        {
            "check": _text(result.get("check")),
            "check_title": str((checks.get(result.get("check")) or {}).get("title") or ""),
            "status": _text(result.get("status")),
            "mark": _mark(result.get("status")),
            "severity": _text(result.get("severity")),
            "resource_type": _text(result.get("resource_type")),
            "resource_id": _text(result.get("resource_id")),
            "detail": _text(result.get("detail")),
            "evidence": _words(result.get("evidence")),
            "waived": bool(result.get("waiver")),
        }
        for result in report.get("results") or []
        if isinstance(result, Mapping)
    ]
    populations = report.get("populations") or {}
    names = [n for n in POPULATION_ORDER if n in populations] + sorted(
        n for n in populations if n not in POPULATION_ORDER
    )
    evidence = [
        [_text(item.get(name)) for name, _ in EVIDENCE_COLUMNS]
        for item in report.get("evidence") or []
        if isinstance(item, Mapping)
    ]
    integrity = report.get("integrity") or {}
    framework = report.get("framework") or {}
    tenant = report.get("tenant") or {}
    return {
        "title": f"{_text(framework.get('name'))} {_text(framework.get('version'))} "
        f"compliance report: {_text(tenant.get('name') or tenant.get('slug'))}",
        "format": _text(report.get("format")),
        "framework": {k: _text(framework.get(k)) for k in ("name", "version")},
        "tenant": {k: _text(tenant.get(k)) for k in ("slug", "name")},
        "run": {
            k: _text(run.get(k))
            for k in (
                "id",
                "trigger",
                "started_at",
                "finished_at",
                "requested_by",
                "engine_version",
                "catalog_sha256",
            )
        },
        "generated_at": _text(report.get("generated_at")),
        "generator": _text(report.get("generator")),
        "result_counts": _counts((report.get("summary") or {}).get("results"), RESULT_ORDER),
        "finding_counts": _counts((report.get("summary") or {}).get("requirements"), FINDING_ORDER),
        "key_columns": [title for _, title in KEY_COLUMNS],
        "keys": _key_rows(populations.get("keys")),
        "requirements": requirements,
        "results": results,
        "populations": [{"name": name, **_generic_table(populations.get(name))} for name in names],
        "waivers": _generic_table(report.get("waivers")),
        "attestations": _generic_table(report.get("attestations")),
        "integrity": {
            "verified": integrity.get("audit_verified") is True,
            "problems": [_text(p) for p in integrity.get("problems") or []],
            "anchor_event": _text(integrity.get("anchor_event")),
            "leaves": _text(integrity.get("leaves")),
        },
        "checkpoint_start": _checkpoint(run.get("checkpoint_start")),
        "checkpoint_end": _checkpoint(run.get("checkpoint_end")),
        "evidence_columns": [title for _, title in EVIDENCE_COLUMNS],
        "evidence": evidence,
    }


def render_html(report: Mapping[str, Any], attachments: Iterable[str] = ()) -> str:
    """The report's HTML, as WeasyPrint renders it (autoescaped throughout)."""
    context = report_context(report)
    context["attachments"] = sorted(attachments)
    return render_to_string(TEMPLATE, context)


def render_pdf(report: Mapping[str, Any], attachments: Mapping[str, bytes]) -> bytes:
    """Render a report JSON document as a PDF, with ``attachments`` embedded as files.

    Args:
        report: the report document (docs/compliance.md, "Report JSON").
        attachments: file name -> content, e.g. ``{"report.json": ..., "report.csv": ...}``.

    Returns:
        The PDF (unsigned; see ``compliance.signing.sign_pdf``).

    Raises:
        PdfUnavailable: WeasyPrint's system libraries are missing here.
    """
    weasyprint = _weasyprint()
    from weasyprint.urls import URLFetcher

    class _NoFetch(URLFetcher):
        """Refuses every URL: the report is self-contained and its text must not fetch."""

        def fetch(self, url: str, headers: Any = None) -> Any:
            raise ValueError("the compliance report fetches no external resources")

    html = render_html(report, attachments.keys())
    files = [
        weasyprint.Attachment(
            string=bytes(content),
            name=name,
            description=f"{name} of this report",
            relationship="Data",
            url_fetcher=_NoFetch(),
        )
        for name, content in sorted(attachments.items())
    ]
    document = weasyprint.HTML(string=html, url_fetcher=_NoFetch(), base_url=None)
    pdf: bytes = document.write_pdf(attachments=files)
    return pdf
