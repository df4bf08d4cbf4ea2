"""The embedded default's first compliance run: real findings on the demo tenant."""

from __future__ import annotations

import pytest

from tests.core.helpers import free_port, wait_until
from tests.core.test_serve import Server

pytestmark = pytest.mark.slow


def test_the_first_run_of_the_embedded_default_fails_key_001_for_the_software_keystore(
    tmp_path,
) -> None:
    server = Server(tmp_path, free_port())
    try:
        token = server.token()
        server.wait_ready()
        # The embedded scheduler starts the daily run on its first tick; no one asks for it.
        wait_until(
            lambda: any("scheduled task compliance.run_due ran" in x for x in server.lines),
            timeout=120,
            what="the embedded scheduler's first compliance run",
        )
        status, runs = server.get("/api/v1/compliance/runs/", token)
        assert status == 200
        [run] = runs["results"]
        assert run["trigger"] == "schedule"
        assert run["state"] == "finished"
        status, detail = server.get(f"/api/v1/compliance/runs/{run['id']}/", token)
        assert status == 200
        key_001 = [r for r in detail["results"] if r["check_id"] == "KEY-001"]
        assert key_001, "KEY-001 ran"
        assert {r["status"] for r in key_001 if r["resource_id"].startswith("tenant:")} == {"FAIL"}
        assert any("software" in r["detail"].lower() for r in key_001)
        findings = {r["ref"]: r["finding"] for r in detail["requirements"]}
        assert findings["3.6.1.2"] == "NOT_IN_PLACE"
        assert not any("compliance run failed" in line for line in server.lines)
    finally:
        server.stop()
