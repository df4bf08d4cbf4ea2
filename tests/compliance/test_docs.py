"""docs/compliance.md lists every check of the registry, with its requirements."""

from __future__ import annotations

import re
from pathlib import Path

from compliance.checks import all_checks

DOC = Path(__file__).resolve().parents[2] / "docs" / "compliance.md"


def test_the_check_table_lists_every_check_with_its_requirements() -> None:
    row = re.compile(r"^\| `([A-Z]+-\d{3})` \|[^|]*\| ([^|]*) \|", re.M)
    rows = {match.group(1): match.group(2) for match in row.finditer(DOC.read_text())}
    registered = {check.id: check for check in all_checks()}
    assert set(rows) == set(registered)
    for check_id, refs in rows.items():
        assert refs.split(", ") == list(registered[check_id].requirements), check_id
