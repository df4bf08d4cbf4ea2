"""The audit log end to end: a real server, `cvault trust save`, an export, `cvault audit verify`,
and an operator who rewrites history with the log's own key."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.client.conftest import ROOT, Cvault, Running


def _manage(running: Running, *args: str, code: str | None = None) -> str:
    """Run ``manage.py`` against the running server's data (as its operator would)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["VAULT_DATA_DIR"] = str(running.data_dir)
    command = [sys.executable, "manage.py", *args]
    if code is not None:
        command += ["-c", code]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _export(running: Running, target: Path) -> Path:
    request = urllib.request.Request(  # noqa: S310  (the test server's http URL)
        f"{running.url}/api/v1/audit/export/",
        headers={"Authorization": f"Bearer {running.token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        target.write_bytes(response.read())
    return target


REWRITE = """
from django.db import connection
from vault.audit.models import AuditCheckpoint, AuditEvent, AuditLeaf, AuditLogHead
from vault.audit.services import audit_integrate, log_of
from vault.tenants.models import Tenant

log = log_of(Tenant.objects.get(slug="demo"))
with connection.cursor() as cursor:
    cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit_%'")
    for (name,) in cursor.fetchall():
        cursor.execute(f'DROP TRIGGER "{name}"')
event = AuditEvent.objects.filter(log=log, type="object.read").order_by("pk").first()
AuditLeaf.objects.filter(log=log).delete()
AuditCheckpoint.objects.filter(log=log).delete()
AuditLogHead.objects.filter(log=log).delete()
AuditEvent.objects.filter(pk=event.pk).delete()
print(audit_integrate(log).size)
"""


def test_history_rewritten_after_trust_save_is_detected(
    running: Running, cvault: Cvault, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_bytes(b"audited content")
    cvault.ok("put", str(source), "audited")
    cvault.ok("cat", "audited")
    assert "checkpoint at size" in _manage(running, "audit_checkpoint", "--tenant", "demo")
    first = cvault.ok("trust", "save")
    assert "on first use" in first.text
    cvault.ok("cat", "audited")
    _manage(running, "audit_checkpoint", "--tenant", "demo")
    assert "grew from size" in cvault.ok("trust", "save").text

    verified = cvault.ok("audit", "verify", str(_export(running, tmp_path / "one.json")))
    assert verified.text.startswith("verified: ")
    assert "anchored to the checkpoint saved" in verified.text

    # An operator with the database and the signing key removes a read and re-signs the log.
    _manage(running, "shell", code=REWRITE)
    tampered = _export(running, tmp_path / "two.json")
    result = cvault("audit", "verify", str(tampered))
    assert result.code == 1, result.text
    assert result.text.startswith("FAILED: ")
    # Without the saved checkpoint the rewritten log would look fine: that is what trust is for.
    fresh = Cvault(tmp_path / "elsewhere", tmp_path)
    unanchored = fresh("audit", "verify", str(tampered))
    assert unanchored.code == 2
    assert unanchored.text.startswith("UNANCHORED: ")
    refused = cvault("trust", "save")
    assert refused.code == 1
