"""Rewrap campaign throughput with the PKCS#11 backend (SoftHSM2), on 1 and 2 worker processes,
against the backend's own unwrap-plus-wrap rate with the same mechanism, in the same run.

Usage (after `make test` has installed SoftHSM2):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
      .venv/bin/python bench/rotation.py [--objects 100000]

It uses a test database on the PostgreSQL server ``DATABASE_URL`` names (created and dropped, as
Django's tests do) or, without ``DATABASE_URL``, a temporary SQLite file (two SQLite writers
serialize, so the 2-process figure is only meaningful on PostgreSQL). A SoftHSM2 token is made in
a temporary directory. ``--objects`` gateway versions get real headers, each with its data key
wrapped on the token; the bodies are not stored (a campaign never reads them), and PostgreSQL
gathers statistics on them (``ANALYZE``, which autovacuum does after a bulk load). Then:

1. baseline: unwrap then wrap of a data key on the token, the same calls a campaign makes,
   per second, on 1 and on 2 processes;
2. a rotation and its campaign, run by 1 worker process;
3. another rotation and its campaign, run by 2 worker processes sharing the campaign's slices.

Each campaign figure is data keys rewrapped per second, from the rotation to the last slice
done, and its share of the baseline with as many processes. Each worker's peak memory growth is
printed, to compare runs of different sizes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _django import setup


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_objects(tenant: Any, count: int) -> None:
    """``count`` gateway objects with one version each, their DEKs wrapped on the token."""
    from vault.crypto import envelope
    from vault.keys.models import KeyBinding, KeyRole
    from vault.keys.registry import key_backend
    from vault.objects.models import ObjectVersion, StoredObject

    binding = KeyBinding.objects.get(tenant=tenant, role=KeyRole.PRIMARY)
    backend = key_backend(binding.backend_alias)
    made = 0
    while made < count:
        size = min(2000, count - made)
        objects = StoredObject.objects.bulk_create(
            StoredObject(tenant=tenant, name=f"o{made + i:08d}", mode="gateway")
            for i in range(size)
        )
        versions = []
        for obj in objects:
            context = {"tenant": tenant.slug, "object": str(obj.pk), "version": "1"}
            dek = os.urandom(32)
            header = envelope.Encryptor(
                dek, context, [backend.wrap(binding.key_id, dek, context)]
            ).header
            versions.append(
                ObjectVersion(
                    object=obj,
                    number=1,
                    size=0,
                    body_size=16,
                    header=header,
                    storage_name=f"bench/{obj.pk}",
                )
            )
        ObjectVersion.objects.bulk_create(versions)
        made += size
        print(f"  {made} objects made", file=sys.stderr)
    from django.db import connection

    if connection.vendor == "postgresql":
        # What autovacuum would do after a bulk load: planner statistics for the new rows.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def _baseline_child(seconds: float, out: Any) -> None:
    from vault.keys.models import KeyBinding, KeyRole
    from vault.keys.registry import key_backend

    binding = KeyBinding.objects.filter(role=KeyRole.PRIMARY).order_by("pk").first()
    assert binding is not None  # noqa: S101
    backend = key_backend(binding.backend_alias)
    context = {"tenant": "bench", "object": "1", "version": "1"}
    dek = os.urandom(32)
    wrapped = backend.wrap(binding.key_id, dek, context)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend.unwrap(wrapped, context)
        wrapped = backend.wrap(binding.key_id, dek, context)
        count += 1
    out.put(count / (time.perf_counter() - start))


def _campaign_child(name: str, out: Any) -> None:
    from django.db import connections

    from vault.lifecycle.services import campaigns_run

    connections.close_all()
    before = _peak_mib()
    campaigns_run(worker=name, max_seconds=3600)
    out.put(_peak_mib() - before)


def _in_processes(target: Any, arguments: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*arguments[i], queue)`` in one forked process per entry; their results."""
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [context.Process(target=target, args=(*args, out)) for args in arguments]
    for child in children:
        child.start()
    results = [out.get(timeout=7200) for _ in children]
    for child in children:
        child.join()
    return results


def campaign_rate(tenant: Any, processes: int) -> tuple[float, list[float]]:
    from vault.lifecycle.models import CampaignState
    from vault.lifecycle.services import campaign_status, key_rotate

    start = time.perf_counter()
    campaign = key_rotate(tenant=tenant)
    growth = _in_processes(_campaign_child, [(f"worker-{i}",) for i in range(processes)])
    took = time.perf_counter() - start
    campaign.refresh_from_db()
    status = campaign_status(campaign)
    if campaign.state != CampaignState.COMPLETE:
        raise SystemExit(f"the campaign did not complete: {status}")
    return status["rewrapped"] / took, growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per baseline measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvault-bench-rotation-") as directory:
        setup(Path(directory))
        from django.core.management import call_command
        from django.db import connection
        from django.test.utils import override_settings, setup_databases, teardown_databases

        from kms_plugins.testing import softhsm

        reason = softhsm.available()
        if reason is not None:
            raise SystemExit(f"SoftHSM2 is needed: {reason}")
        postgres = bool(os.environ.get("DATABASE_URL"))
        names = setup_databases(verbosity=0, interactive=False) if postgres else None
        if not postgres:
            call_command("migrate", verbosity=0)
        try:
            with (
                softhsm.session_harness(Path(directory) / "hsm") as harness,
                override_settings(
                    VAULT_KEY_BACKENDS={
                        "hsm": {"BACKEND": "pkcs11", "OPTIONS": dict(harness.backend._options)}
                    },
                    VAULT_CAMPAIGN_SLICES=8,
                    VAULT_REWRAP_BATCH=200,
                    VAULT_REWRAP_RATE=0,
                ),
            ):
                from vault.keys.services import tenant_bind_backend
                from vault.tenants.services import tenant_create

                print(
                    f"bench: {connection.vendor} database, SoftHSM2 over PKCS#11, "
                    f"{os.cpu_count()} CPUs, {args.objects} objects"
                )
                tenant = tenant_create(slug="rotation")
                tenant_bind_backend(tenant=tenant, backend_alias="hsm")
                make_objects(tenant, args.objects)
                base = {
                    n: sum(_in_processes(_baseline_child, [(args.seconds,)] * n)) for n in (1, 2)
                }
                print(f"{'measure':<52}{'per s':>10}{'vs baseline':>13}")
                for n in (1, 2):
                    print(f"{f'backend unwrap + wrap, {n} process(es)':<52}{base[n]:>10.0f}")
                for n in (1, 2):
                    rate, growth = campaign_rate(tenant, n)
                    label = f"campaign, {n} worker process(es)"
                    print(f"{label:<52}{rate:>10.0f}{rate / base[n]:>12.0%}")
                    print(
                        f"  worker peak memory growth: {', '.join(f'{g:.1f} MiB' for g in growth)}"
                    )
        finally:
            if names is not None:
                teardown_databases(names, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
