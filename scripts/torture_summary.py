"""Writes the summary of a ``make torture`` run: ``summary.md`` and ``summary.json`` in its folder.

Reads what the run left there: ``pytest.xml`` (JUnit, every test's outcome) and the JSON files
the tests and ``bench/load.py`` wrote (``load.json``, ``schemathesis.json``, ``isolation.json``,
``secrets_scan.json``, ``fuzz.json``, ...). Prints the Markdown summary too.

Usage: python scripts/torture_summary.py DIR [--status N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

AREAS = [
    ("Fault injection", "tests.reliability.test_faults_"),
    ("Backup and restore", "tests.reliability.test_backup_restore"),
    ("Load (smoke)", "tests.reliability.test_load_smoke"),
    ("Schemathesis", "tests.reliability.test_schemathesis"),
    ("Fuzzing (hypothesis)", "tests.fuzz."),
    ("Tenant isolation matrix", "tests.api.test_isolation"),
    ("Tenant isolation (console)", "tests.console.test_console_isolation"),
    ("Read-back check (objects_verify)", "tests.objects.test_objects_verify"),
    ("Secrets scan", "tests.client.test_marker"),
]


def _tests(junit: Path) -> list[dict[str, Any]]:
    if not junit.exists():
        return []
    root = ET.parse(junit).getroot()  # noqa: S314
    found = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        found.append(
            {
                "id": f"{case.get('classname', '')}::{case.get('name', '')}",
                "seconds": float(case.get("time", 0) or 0),
                "outcome": outcome,
            }
        )
    return found


def _area(test_id: str) -> str:
    for name, prefix in AREAS:
        if test_id.startswith(prefix):
            return name
    return "Other"


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``value`` as (dotted key, scalar) rows, lists of scalars joined."""
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows.extend(_flat(item, f"{prefix}{key}."))
        return rows
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return [(prefix.rstrip("."), ", ".join(str(v) for v in value))]
    if isinstance(value, list):
        rows = []
        for index, item in enumerate(value):
            rows.extend(_flat(item, f"{prefix}{index}."))
        return rows
    return [(prefix.rstrip("."), value)]


def summarize(folder: Path, status: int, seconds: int) -> tuple[str, dict[str, Any]]:
    tests = _tests(folder / "pytest.xml")
    reports = {
        path.stem: json.loads(path.read_text())
        for path in sorted(folder.glob("*.json"))
        if path.name != "summary.json"
    }
    by_area: dict[str, dict[str, int]] = {}
    for test in tests:
        counts = by_area.setdefault(_area(test["id"]), {"passed": 0, "failed": 0, "skipped": 0})
        counts[test["outcome"]] += 1
    failed = [t["id"] for t in tests if t["outcome"] != "passed"]
    verdict = "PASSED" if status == 0 and not failed and tests else "FAILED"
    lines = [
        f"# Torture run {folder.name}: {verdict}",
        "",
        f"{len(tests)} tests in {seconds} s in all; not passed: {len(failed)}.",
        "",
        "| area | passed | failed | skipped |",
        "|---|---:|---:|---:|",
    ]
    for name, _ in [*AREAS, ("Other", "")]:
        if name in by_area:
            c = by_area[name]
            lines.append(f"| {name} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    if failed:
        lines += ["", "## Not passed", ""] + [f"- `{t}`" for t in failed]
    for stem, report in reports.items():
        # A report may put the figures worth showing under "headline"; the rest stays in its file.
        shown = report.get("headline", report) if isinstance(report, dict) else report
        lines += ["", f"## {stem} (`{stem}.json`)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in _flat(shown)]
    lines += ["", "## Tests", ""]
    lines += [f"- {t['outcome']}: `{t['id']}` ({t['seconds']:.1f} s)" for t in tests]
    text = "\n".join(lines) + "\n"
    data = {"verdict": verdict, "seconds": seconds, "areas": by_area, "failed": failed}
    data["reports"] = reports
    return text, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--status", type=int, default=0, help="the run's exit status so far")
    parser.add_argument("--seconds", type=int, default=0, help="how long the run took")
    args = parser.parse_args()
    text, data = summarize(args.folder, args.status, args.seconds)
    (args.folder / "summary.md").write_text(text)
    (args.folder / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    head = text.split("\n## Tests")[0]
    print(head)
    print(f"Summary written to {args.folder / 'summary.md'}")
    return 0 if data["verdict"] == "PASSED" else 1


if __name__ == "__main__":
    sys.exit(main())
