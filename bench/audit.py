"""The audit log's costs: audited appends, integration, and full verification of a large log.

Usage:

    .venv/bin/python bench/audit.py [--appends 5000] [--events 1000000]

It runs on a fresh SQLite database in a temporary directory (or on the PostgreSQL database that
``DATABASE_URL`` names, which it uses as Django's test database does: create, use, drop), with a
tenant bound to the local keystore, and prints:

1. Appends: ``audit_record`` (the canonical JSON, the event row, each in its own transaction) per
   second, against plain inserts of the same rows (the same column values and leaf bytes, made
   beforehand) in the same run, in alternating chunks of 250.
2. Integration: events given leaf indices and signed into a checkpoint per second, for a log of
   ``--events`` events inserted in bulk.
3. Full verification of that log (``audit_verify``: every leaf's bytes, hash, columns and index,
   every checkpoint's root and signature), in seconds, and its Merkle part (leaf hashes and the
   root over the same leaf bytes) against one raw SHA-256 over the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _django import setup


def _event_fields(index: int, moment: datetime, origin: str) -> dict[str, object]:
    from vault.crypto.auditbundle import format_time
    from vault.crypto.canonical import canonical_json

    event_id = uuid.uuid4()
    body = {
        "v": 1,
        "log": origin,
        "id": str(event_id),
        "time": format_time(moment),
        "type": "object.read",
        "outcome": "success",
        "actor": {"kind": "user", "id": f"person{index % 97}@acme.example", "auth": "token:ab12"},
        "origin": {
            "ip": "10.1.2.3",
            "user_agent": "cvault/0.1",
            "request_id": uuid.uuid4().hex,
        },
        "resource": {"type": "object", "id": str(index)},
        "details": {"version": 1, "mode": "gateway", "range": None},
    }
    return {
        "uuid": event_id,
        "time": moment,
        "type": "object.read",
        "outcome": "success",
        "actor_kind": "user",
        "actor_id": body["actor"]["id"],  # type: ignore[index]
        "auth": "token:ab12",
        "ip": "10.1.2.3",
        "user_agent": "cvault/0.1",
        "request_id": body["origin"]["request_id"],  # type: ignore[index]
        "resource_type": "object",
        "resource_id": str(index),
        "leaf": canonical_json(body),
    }


def bench_appends(tenant: Any, count: int, chunk: int = 250) -> tuple[float, float]:
    """(audited appends per second, plain inserts per second), measured in alternating chunks
    so that both see the same database size and the same background work."""
    from django.db import transaction

    from vault.audit.context import Actor
    from vault.audit.models import AuditEvent
    from vault.audit.services import audit_record, log_of, origin_of_log

    actor = Actor("user", "person@acme.example", "token:ab12")
    log = log_of(tenant)
    origin = origin_of_log(log, tenant)
    now = datetime.now(UTC)
    rows = [_event_fields(i, now, origin) for i in range(count)]
    audited_time = plain_time = 0.0
    for first in range(0, count, chunk):
        start = time.perf_counter()
        for index in range(first, min(first + chunk, count)):
            with transaction.atomic():
                audit_record(
                    "object.read",
                    tenant=tenant,
                    actor=actor,
                    resource_type="object",
                    resource_id=index,
                    details={"version": 1, "mode": "gateway", "range": None},
                )
        audited_time += time.perf_counter() - start
        start = time.perf_counter()
        for row in rows[first : first + chunk]:
            with transaction.atomic():
                AuditEvent.objects.create(log=log, tenant=tenant, **row)
        plain_time += time.perf_counter() - start
    return count / audited_time, count / plain_time


def fill(tenant: Any, count: int) -> None:
    """``count`` events in bulk, as the integrator finds them after a busy period."""
    from vault.audit.models import AuditEvent
    from vault.audit.services import log_of, origin_of_log

    log = log_of(tenant)
    origin = origin_of_log(log, tenant)
    base = datetime.now(UTC) - timedelta(days=1)
    batch: list[AuditEvent] = []
    for index in range(count):
        moment = base + timedelta(microseconds=index * 50)
        batch.append(AuditEvent(log=log, tenant=tenant, **_event_fields(index, moment, origin)))
        if len(batch) == 20_000:
            AuditEvent.objects.bulk_create(batch)
            batch = []
            print(f"  {index + 1} events inserted", file=sys.stderr)
    if batch:
        AuditEvent.objects.bulk_create(batch)


def merkle_part(log: str) -> tuple[float, float, int]:
    """Seconds for the leaf hashes and root, seconds for one raw SHA-256, and the bytes."""
    from vault.audit.models import AuditEvent
    from vault.crypto.merkle import root_from_leaves

    leaves = [
        bytes(leaf)
        for leaf in AuditEvent.objects.filter(log=log)
        .order_by("leaf_entry__index")
        .values_list("leaf", flat=True)
        .iterator(chunk_size=20_000)
    ]
    total = sum(len(leaf) for leaf in leaves)
    start = time.perf_counter()
    root_from_leaves(leaves)
    merkle = time.perf_counter() - start
    start = time.perf_counter()
    digest = hashlib.sha256()
    for leaf in leaves:
        digest.update(leaf)
    digest.digest()
    raw = time.perf_counter() - start
    return merkle, raw, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvault-bench-audit-") as directory:
        setup(Path(directory))
        from django.core.management import call_command
        from django.db import connection
        from django.test.utils import setup_databases, teardown_databases

        postgres = bool(os.environ.get("DATABASE_URL"))
        names = setup_databases(verbosity=0, interactive=False) if postgres else None
        if not postgres:
            call_command("migrate", verbosity=0)
        try:
            from vault.audit.services import audit_integrate, audit_verify, log_of
            from vault.keys.services import tenant_bind_backend
            from vault.tenants.services import tenant_create

            print(f"bench: {connection.vendor} database, Python {sys.version.split()[0]}")
            appends_tenant = tenant_create(slug="appends")
            tenant_bind_backend(tenant=appends_tenant, backend_alias="local")
            audited, plain = bench_appends(appends_tenant, args.appends)
            print(
                f"appends: audited {audited:.0f}/s, plain inserts of the same rows {plain:.0f}/s: "
                f"{audited / plain:.0%}"
            )
            tenant = tenant_create(slug="big")
            tenant_bind_backend(tenant=tenant, backend_alias="local")
            log = log_of(tenant)
            fill(tenant, args.events)
            start = time.perf_counter()
            audit_integrate(log)
            took = time.perf_counter() - start
            print(f"integration: {args.events} events in {took:.1f} s ({args.events / took:.0f}/s)")
            start = time.perf_counter()
            report = audit_verify(log)
            verify = time.perf_counter() - start
            if not report.ok:
                raise SystemExit(f"verification failed: {report.problems[:5]}")
            print(
                f"full verification: {report.leaves} leaves, {report.checkpoints} checkpoint(s) "
                f"in {verify:.1f} s"
            )
            merkle, raw, size = merkle_part(log)
            print(
                f"merkle part: leaf hashes and root over {size / 1e6:.0f} MB in {merkle:.2f} s; "
                f"raw SHA-256 of the same bytes {raw:.2f} s: {raw / merkle:.0%} of raw throughput"
            )
        finally:
            if names is not None:
                teardown_databases(names, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
