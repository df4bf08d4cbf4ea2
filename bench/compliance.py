"""A full compliance run over a large tenant: every check, the full audit verification included.

Usage:

    .venv/bin/python bench/compliance.py [--objects 100000] [--keys 1000] [--events 1000000]

It runs on a fresh SQLite database in a temporary directory (or on the PostgreSQL database that
``DATABASE_URL`` names, used as Django's test database is: create, use, drop). It makes:

- a tenant ``big`` bound to the local keystore, with ``--objects`` gateway objects (one version
  each, a real envelope header whose data key its primary key wrapped, and a stored body) and
  ``--events`` audit events in its log, integrated and checkpointed as the scheduler would;
- further tenants, each with a primary and a signing key, until the platform holds ``--keys``
  keys (the checks that compare keys across tenants see them all).

Then it times ``compliance_run`` for ``big`` (target: under 120 s on 2 cores), prints the slowest
checks, and times ``audit_verify`` of the same log alone as the baseline measured in the same
run: the run's cost beyond verifying the log is what the checks add.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _django import setup
from audit import fill
from rotation import make_objects

# The project's root before this directory: ``compliance`` is the app, not this script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.modules.pop("compliance", None)


def store_bodies(tenant: Any) -> None:
    """A stored body of the recorded size for each version (the census reads them)."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from vault.objects.models import ObjectVersion

    rows = ObjectVersion.objects.filter(object__tenant=tenant).values_list(
        "storage_name", "body_size"
    )
    for done, (name, size) in enumerate(rows.iterator(chunk_size=5000), start=1):
        default_storage.save(name, ContentFile(os.urandom(size)))
        if done % 20_000 == 0:
            print(f"  {done} bodies stored", file=sys.stderr)


def more_keys(count: int) -> None:
    """Tenants with a primary and a signing key each, until the platform has ``count`` keys."""
    from vault.keys.models import KeyBinding
    from vault.keys.services import tenant_bind_backend
    from vault.tenants.services import tenant_create

    made = 0
    while KeyBinding.objects.count() < count:
        tenant = tenant_create(slug=f"t{made:05d}")
        tenant_bind_backend(tenant=tenant, backend_alias="local")
        made += 1
        if made % 100 == 0:
            print(f"  {KeyBinding.objects.count()} keys", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvault-bench-compliance-") as directory:
        setup(Path(directory))
        from django.core.management import call_command
        from django.db import connection
        from django.test.utils import setup_databases, teardown_databases

        postgres = bool(os.environ.get("DATABASE_URL"))
        names = setup_databases(verbosity=0, interactive=False) if postgres else None
        if not postgres:
            call_command("migrate", verbosity=0)
        try:
            from compliance.engine import compliance_run
            from vault.audit.services import audit_integrate, audit_verify, log_of
            from vault.keys.models import KeyBinding
            from vault.keys.services import tenant_bind_backend
            from vault.tenants.services import tenant_create

            print(
                f"bench: {connection.vendor} database, Python {sys.version.split()[0]}, "
                f"{os.cpu_count()} CPUs"
            )
            tenant = tenant_create(slug="big")
            tenant_bind_backend(tenant=tenant, backend_alias="local")
            make_objects(tenant, args.objects)
            store_bodies(tenant)
            more_keys(args.keys)
            fill(tenant, args.events)
            log = log_of(tenant)
            audit_integrate(log)
            print(
                f"data: {args.objects} objects, {KeyBinding.objects.count()} keys, "
                f"{args.events} events (+ those the set-up recorded)"
            )
            marks: list[tuple[float, str]] = []

            def progress(line: str) -> None:
                marks.append((time.perf_counter(), line))

            start = time.perf_counter()
            run = compliance_run(tenant, requested_by="bench", progress=progress)
            took = time.perf_counter() - start
            marks.append((start + took, "end"))
            spans = sorted(
                ((marks[i + 1][0] - marks[i][0], marks[i][1]) for i in range(len(marks) - 1)),
                reverse=True,
            )
            start = time.perf_counter()
            report = audit_verify(log)
            verify = time.perf_counter() - start
            print(f"full run: {took:.1f} s (target under 120 s); results {run.summary['results']}")
            print("slowest checks:")
            for seconds, line in spans[:6]:
                print(f"  {seconds:6.1f} s  {line.split('] ', 1)[-1][:70]}")
            print(
                f"baseline, audit_verify of the same log alone: {verify:.1f} s "
                f"({report.leaves} leaves); the run takes {took / verify:.2f}x that"
            )
        finally:
            if names is not None:
                teardown_databases(names, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
