"""Load: concurrent clients doing put, get and list against gunicorn on PostgreSQL and Redis.

Usage::

    .venv/bin/python bench/load.py [--clients 32] [--seconds 60] [--json PATH]
        [--workers 2] [--worker-class gthread] [--threads 4] [--no-celery]
        [--postgres postgres://postgres@127.0.0.1:5432/postgres | --database-url URL]
        [--redis-url redis://127.0.0.1:6379/5]

Everything runs here, on loopback. A fresh database ``cvault_load_<random>`` is created on the
PostgreSQL server ``--postgres`` names (dropped at the end, also on Ctrl-C or failure) unless
``--database-url`` names one to use as it is; Redis (``--redis-url``) carries the cache (the
failed-authentication counters read on every request) and the Celery broker. The service gets
production-like settings (its own ``VAULT_SECRET_KEY``, ``VAULT_ALLOWED_HOSTS``, DEBUG off) and a
temporary ``VAULT_DATA_DIR`` for the ciphertext store and the local software keystore; it runs in
``VAULT_ENV=development`` only because production refuses the local keystore (``keys.E005``).

Set-up, the operator's commands run in one ``manage.py shell`` process: ``migrate``,
``tenant_create``, ``tenant_bind_backend --backend local`` (so every gateway upload wraps a fresh
data key with the tenant's key) and ``token_create --role member``. Then ``gunicorn vault.wsgi``
on a free port (by default as ``manage.py serve`` runs it on PostgreSQL: 2 gthread workers of 4
threads, access log on), and (unless ``--no-celery``) one Celery worker with the beat schedule
embedded (``-B``), as production runs them.

Each client is a thread with its own keep-alive ``http.client`` connection and its own objects
(names ``<phase>-c<NN>-<seq>``). Each step is one of: a new gateway object (``POST`` then ``PUT``
of its first version), a new version of one of its objects (``PUT``), a ``GET`` of one of its
versions (the latest four times in five) compared with the SHA-256 recorded at upload, or a list
of a random page of its own objects (``?prefix=``) whose count and latest versions are compared
with what it stored. Bodies are random, of sizes drawn log-uniformly from ``--min-size`` to
``--max-size``, unique per version. Every non-2xx answer, transport error or mismatch is an
error (operation, status, start of the body recorded).

Phases, all against the same server: ``GET /healthz`` over one connection and over
``--clients`` connections (the HTTP stack's ceiling on this machine); a warm-up of the mix with
all clients (2 s, not timed); the mix with one client (``--baseline-seconds``, the per-request
latency baseline); the mix with ``--clients`` clients for ``--seconds``. Afterwards every object
ever acknowledged is read back, every acknowledged version of it, and compared: ``lost`` counts
acknowledged versions the server no longer has, ``corrupted`` those it returns with other bytes.

CPU, per phase: the client's own (``getrusage``), the gunicorn and Celery process trees and the
PostgreSQL backends of the database (``/proc``; backends sampled twice a second, as Django
replaces its connections), and how busy the whole machine was (``/proc/stat``). Per request too:
on a shared machine the CPU per request holds better than the rates.

Exit status: 0 only when there were no errors, nothing lost and nothing corrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _processes import ROOT, free_port, manage, stop_group

KIB = 1024
MIB = 1024 * KIB
API = "/api/v1"
OPS = ("create", "put", "get", "list")
# The share of steps of each kind; a client with no object yet always makes one.
MIX = (("new", 0.15), ("version", 0.20), ("get", 0.45), ("list", 0.20))
PAGE = 50
WARM_UP_SECONDS = 2.0
HEALTHZ_SECONDS = 3.0
POOL = os.urandom(4 * MIB)


# -- helpers -------------------------------------------------------------------------------------


STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _cpu_of(pid: int) -> float:
    """User plus system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found.extend(_descendants(int(child)))
    return found


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of the live processes under ``pids`` (each process once)."""
    seen: set[int] = set()
    for pid in pids:
        seen.update(_descendants(pid))
    return sum(_cpu_of(pid) for pid in seen)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return float(total - idle), float(total)


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


# -- the database, the server, the worker --------------------------------------------------------


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server ``admin_url`` names; dropped afterwards."""
    import psycopg

    name = f"cvault_load_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlunsplit(urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresCpu:
    """CPU seconds of the PostgreSQL backends serving one database (the server is local).

    Backends come and go (Django closes connections older than ``CONN_MAX_AGE``), so a thread
    samples them twice a second and keeps each one's last reading: a backend that ends between
    two samples loses at most half a second of its CPU."""

    def __init__(self, database_url: str) -> None:
        import psycopg

        self.connection = psycopg.connect(database_url, autocommit=True)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sample()
        self.before = dict(self.seen)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
        with self.lock:
            for (pid,) in rows:
                self.seen[int(pid)] = max(self.seen.get(int(pid), 0.0), _cpu_of(int(pid)))

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def finish(self) -> tuple[float, int]:
        """CPU seconds used since the start, and how many backends were seen."""
        self.stop.set()
        self.thread.join()
        self.sample()
        self.connection.close()
        used = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self.seen.items())
        return used, len(self.seen)


# The operator's commands, in one process (each Django start-up costs seconds on a busy machine):
# migrate, a tenant bound to the local keystore, a member token (printed last).
SET_UP = """
import io
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("tenant_create", "{tenant}", stdout=io.StringIO())
call_command("tenant_bind_backend", tenant="{tenant}", backend="local", stdout=io.StringIO())
out = io.StringIO()
call_command("token_create", tenant="{tenant}", role="member", stdout=out, stderr=io.StringIO())
print(out.getvalue().strip())
"""


class Process:
    """A child in its own session, its output in a file; stopped with its whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")

    def stop(self) -> None:
        stop_group(self.process)


def wait_ready(server: Process, port: int, timeout: float = 90.0) -> None:
    """Until ``/readyz`` answers 200: the database and Redis both reachable from the server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"the server did not become ready:\n{server.tail()}")


@dataclass
class Settings:
    port: int
    workers: int
    worker_class: str
    threads: int
    celery: bool


def server_env(data_dir: Path, database_url: str, redis_url: str) -> dict[str, str]:
    drop = ("DATABASE_URL", "REDIS_URL", "VAULT_KEY_BACKENDS", "VAULT_ENV", "VAULT_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.endswith("_FILE")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "vault.settings",
            "VAULT_DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "VAULT_SECRET_KEY": secrets.token_urlsafe(48),
            "VAULT_ALLOWED_HOSTS": "127.0.0.1",
            "VAULT_DEBUG": "0",
            "VAULT_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_gunicorn(env: dict[str, str], settings: Settings, tmp: Path) -> Process:
    argv = [
        sys.executable, "-m", "gunicorn", "vault.wsgi:application",
        "--bind", f"127.0.0.1:{settings.port}",
        "--workers", str(settings.workers),
        "--worker-class", settings.worker_class,
        "--threads", str(settings.threads),
        "--timeout", "120",
        "--backlog", "2048",
        # As `manage.py serve` logs: paths and statuses, never headers or query strings.
        "--logger-class", "vault.core.server.RedactingLogger",
        "--access-logfile", str(tmp / "access.log"),
        "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
    ]  # fmt: skip
    return Process("gunicorn", argv, env, tmp / "gunicorn.log")


def start_celery(env: dict[str, str], tmp: Path) -> Process:
    argv = [
        sys.executable, "-m", "celery", "-A", "vault", "worker", "-B",
        "--pool", "solo", "--loglevel", "WARNING",
        "--schedule", str(tmp / "beat-schedule"),
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return Process("celery", argv, env, tmp / "celery.log")


# -- the clients ---------------------------------------------------------------------------------


class TransportError(Exception):
    pass


@dataclass
class Version:
    number: int
    size: int
    digest: bytes


@dataclass
class Tracked:
    """An object a client created and every version of it the server acknowledged."""

    id: int
    name: str
    versions: list[Version] = field(default_factory=list)
    uncertain: int = 0  # uploads whose outcome is unknown (the answer never came)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    sent: int = 0
    received: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    mismatches: int = 0

    def merge(self, other: Stats) -> None:
        for op in OPS:
            self.latencies[op].extend(other.latencies[op])
        self.sent += other.sent
        self.received += other.received
        self.errors.extend(other.errors)
        self.mismatches += other.mismatches


class Connection:
    """One keep-alive HTTP/1.1 connection with the bearer token; reopened after a failure."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = {"Authorization": f"Bearer {token}"}
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(
        self, method: str, path: str, body: bytes | None = None, json_body: Any = None
    ) -> tuple[int, bytes]:
        headers = dict(self.auth)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            self.http.request(method, path, body=body, headers=headers)
            response = self.http.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        return response.status, data

    def close(self) -> None:
        self.http.close()


class Client:
    """One simulated client: its connection, its objects, its random choices, its figures."""

    def __init__(self, port: int, token: str, prefix: str, seed: int, sizes: tuple[int, int]):
        self.connection = Connection(port, token)
        self.prefix = prefix
        self.random = random.Random(seed)  # noqa: S311  (load shape, not secrets)
        self.sizes = sizes
        self.objects: list[Tracked] = []
        self.uncertain_creates = 0
        self.stats = Stats()
        self.sequence = 0

    # -- recording

    def _error(self, op: str, status: int | str, detail: bytes | str) -> None:
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail
        self.stats.errors.append({"op": op, "status": status, "body": text[:300]})

    def _timed(
        self, op: str, method: str, path: str, expect: int, **kwargs: Any
    ) -> tuple[int, bytes] | None:
        """One request; its latency recorded when answered; None (an error recorded) unless
        the answer has the expected status."""
        start = time.perf_counter()
        try:
            status, data = self.connection.call(method, path, **kwargs)
        except TransportError as exc:
            self._error(op, "transport", str(exc))
            return None
        self.stats.latencies[op].append(time.perf_counter() - start)
        if status != expect:
            self._error(op, status, data)
            return None
        return status, data

    # -- the steps

    def _body(self) -> bytes:
        low, high = self.sizes
        size = int(math.exp(self.random.uniform(math.log(low), math.log(high))))
        # A random head makes every version unique; the rest is a random slice of a shared pool
        # of random bytes (cheaper for the client than fresh random bytes; nothing compresses).
        head = os.urandom(min(16, size))
        start = self.random.randrange(len(POOL) - size + 1)
        return head + POOL[start : start + size - len(head)]

    def step(self) -> None:
        choice = "new"
        if self.objects:
            roll = self.random.random()
            for choice, share in MIX:  # noqa: B007
                if roll < share:
                    break
                roll -= share
        {"new": self.new, "version": self.version, "get": self.get, "list": self.list}[choice]()

    def new(self) -> None:
        self.sequence += 1
        name = f"{self.prefix}{self.sequence:06d}"
        payload = {"name": name, "mode": "gateway", "content_type": "application/octet-stream"}
        answer = self._timed("create", "POST", f"{API}/objects/", 201, json_body=payload)
        if answer is None:
            self.uncertain_creates += 1
            return
        tracked = Tracked(id=int(json.loads(answer[1])["id"]), name=name)
        self.objects.append(tracked)
        self.put(tracked)

    def version(self) -> None:
        self.put(self.random.choice(self.objects))

    def put(self, tracked: Tracked) -> None:
        body = self._body()
        digest = hashlib.sha256(body).digest()
        path = f"{API}/objects/{tracked.id}/content/"
        answer = self._timed("put", "PUT", path, 201, body=body)
        if answer is None:
            tracked.uncertain += 1
            return
        self.stats.sent += len(body)
        row = json.loads(answer[1])
        expected = tracked.versions[-1].number + 1 if tracked.versions else 1
        if row["size"] != len(body) or (not tracked.uncertain and row["number"] != expected):
            self._error("put", 201, f"acknowledged as {row}, expected number {expected}")
        tracked.versions.append(Version(int(row["number"]), len(body), digest))

    def get(self) -> None:
        with_versions = [t for t in self.objects if t.versions]
        if not with_versions:
            return self.new()
        tracked = self.random.choice(with_versions)
        path = f"{API}/objects/{tracked.id}/content/"
        version = tracked.versions[-1]
        if len(tracked.versions) > 1 and self.random.random() < 0.2:
            version = self.random.choice(tracked.versions[:-1])
            path += f"?version={version.number}"
        elif tracked.uncertain:
            path += f"?version={version.number}"
        answer = self._timed("get", "GET", path, 200)
        if answer is None:
            return None
        data = answer[1]
        self.stats.received += len(data)
        if len(data) != version.size or hashlib.sha256(data).digest() != version.digest:
            self.stats.mismatches += 1
            self._error("get", 200, f"{tracked.name} v{version.number}: content differs")
        return None

    def list(self) -> None:
        pages = max(1, math.ceil(len(self.objects) / PAGE))
        page = self.random.randint(1, pages)
        query = urllib.parse.urlencode({"prefix": self.prefix, "page_size": PAGE, "page": page})
        answer = self._timed("list", "GET", f"{API}/objects/?{query}", 200)
        if answer is None:
            return
        self.stats.received += len(answer[1])
        listing = json.loads(answer[1])
        if not self.uncertain_creates and listing["count"] != len(self.objects):
            self.stats.mismatches += 1
            self._error("list", 200, f"count {listing['count']}, expected {len(self.objects)}")
        mine = {t.id: t for t in self.objects}
        for row in listing["results"]:
            tracked = mine.get(row["id"])
            if tracked is None:
                if not self.uncertain_creates:
                    self.stats.mismatches += 1
                    self._error("list", 200, f"unknown object {row['name']}")
                continue
            if tracked.uncertain or not tracked.versions:
                continue
            latest = row["latest_version"] or {}
            want = tracked.versions[-1]
            if (latest.get("number"), latest.get("size")) != (want.number, want.size):
                self.stats.mismatches += 1
                self._error("list", 200, f"{tracked.name}: latest {latest}, expected v{want}")

    def healthz(self) -> None:
        self._timed("get", "GET", "/healthz", 200)

    def close(self) -> None:
        self.connection.close()


def run_clients(
    clients: list[Client], seconds: float, action: Callable[[Client], Callable[[], None]]
) -> float:
    """Run ``action(client)()`` in a loop on every client, each in its own thread, all starting
    together, until ``seconds`` have passed. Returns the measured wall time."""
    barrier = threading.Barrier(len(clients) + 1)
    stop = threading.Event()
    state = {"deadline": 0.0}
    failures: list[BaseException] = []

    def loop(client: Client) -> None:
        operation = action(client)
        barrier.wait()
        try:
            while not stop.is_set() and time.monotonic() < state["deadline"]:
                operation()
        except BaseException as exc:  # a bug in the bench, not an answer of the server
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    state["deadline"] = start + seconds
    barrier.wait()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    finally:
        stop.set()
    if failures:
        raise RuntimeError("a client thread failed") from failures[0]
    return time.monotonic() - start


def summarize(stats: Stats, seconds: float) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    total = 0
    for op in OPS:
        values = sorted(stats.latencies[op])
        total += len(values)
        ops[op] = {
            "count": len(values),
            "per_s": len(values) / seconds,
            "p50_ms": percentile(values, 0.50) * 1000,
            "p95_ms": percentile(values, 0.95) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": (values[-1] if values else 0.0) * 1000,
        }
    every = sorted(v for op in OPS for v in stats.latencies[op])
    return {
        "seconds": seconds,
        "ops": ops,
        "total": {
            "count": total,
            "per_s": total / seconds,
            "p50_ms": percentile(every, 0.50) * 1000,
            "p99_ms": percentile(every, 0.99) * 1000,
        },
        "mib_per_s": (stats.sent + stats.received) / MIB / seconds,
        "uploaded_mib": stats.sent / MIB,
        "downloaded_mib": stats.received / MIB,
        "errors": len(stats.errors),
        "mismatches": stats.mismatches,
        "error_kinds": dict(Counter(f"{e['op']} {e['status']}" for e in stats.errors)),
        "error_samples": stats.errors[:20],
    }


# -- reading everything back ---------------------------------------------------------------------


@dataclass
class Verdict:
    objects: int = 0
    versions: int = 0
    bytes: int = 0
    lost: int = 0
    corrupted: int = 0
    unexpected: int = 0
    errors: list[str] = field(default_factory=list)  # answers that were neither right nor 404
    findings: list[str] = field(default_factory=list)  # what was lost or corrupted

    def merge(self, other: Verdict) -> None:
        self.objects += other.objects
        self.versions += other.versions
        self.bytes += other.bytes
        self.lost += other.lost
        self.corrupted += other.corrupted
        self.unexpected += other.unexpected
        self.errors.extend(other.errors)
        self.findings.extend(other.findings)


def verify_object(connection: Connection, tracked: Tracked, verdict: Verdict) -> None:
    """Every acknowledged version of ``tracked`` listed and read back with its bytes."""
    verdict.objects += 1
    status, data = connection.call("GET", f"{API}/objects/{tracked.id}/versions/?page_size=500")
    if status == 404:
        verdict.lost += len(tracked.versions)
        verdict.findings.append(f"{tracked.name}: the object is gone (404)")
        return
    if status != 200:
        verdict.errors.append(f"{tracked.name} versions: {status} {data[:200]!r}")
        return
    listed = {row["number"]: row for row in json.loads(data)["results"]}
    acknowledged = {v.number for v in tracked.versions}
    verdict.unexpected += len(set(listed) - acknowledged)
    for version in tracked.versions:
        verdict.versions += 1
        if version.number not in listed:
            verdict.lost += 1
            verdict.findings.append(f"{tracked.name} v{version.number}: not listed")
            continue
        path = f"{API}/objects/{tracked.id}/content/?version={version.number}"
        status, body = connection.call("GET", path)
        if status == 404:
            verdict.lost += 1
            verdict.findings.append(f"{tracked.name} v{version.number}: 404 {body[:200]!r}")
        elif status != 200:
            verdict.errors.append(f"{tracked.name} v{version.number}: {status} {body[:200]!r}")
        elif len(body) != version.size or hashlib.sha256(body).digest() != version.digest:
            verdict.corrupted += 1
            verdict.findings.append(f"{tracked.name} v{version.number}: content differs")
        else:
            verdict.bytes += len(body)


def verify_all(port: int, token: str, tracked: list[Tracked], threads: int) -> Verdict:
    """Read back everything, on ``threads`` connections; plus the tenant's object count."""
    total = Verdict()
    lock = threading.Lock()
    queue = list(tracked)

    def work() -> None:
        verdict = Verdict()
        connection = Connection(port, token)
        try:
            while True:
                with lock:
                    if not queue:
                        break
                    item = queue.pop()
                try:
                    verify_object(connection, item, verdict)
                except TransportError as exc:
                    verdict.errors.append(f"{item.name}: {exc}")
        finally:
            connection.close()
            with lock:
                total.merge(verdict)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        while worker.is_alive():
            worker.join(0.5)
    connection = Connection(port, token)
    try:
        status, data = connection.call("GET", f"{API}/objects/?page_size=1")
    finally:
        connection.close()
    if status != 200:
        total.errors.append(f"object count: {status} {data[:200]!r}")
    else:
        count = int(json.loads(data)["count"])
        total.unexpected += max(0, count - len(tracked))
        if count < len(tracked):
            total.findings.append(f"the tenant lists {count} objects, {len(tracked)} were created")
    return total


# -- main ----------------------------------------------------------------------------------------


def _versions(name: str, *argv: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # noqa: S603
            [name, *argv], capture_output=True, text=True, check=False, timeout=10
        ).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    return "?"


@dataclass
class Target:
    """What a phase runs against: the server, its token, and the processes whose CPU counts."""

    port: int
    token: str
    sizes: tuple[int, int]
    processes: list[Process]
    database_url: str


def phase(
    label: str, target: Target, clients: int, seconds: float, action: str = "step"
) -> tuple[dict[str, Any], list[Client]]:
    """One timed phase with ``clients`` fresh clients: its summary (CPU use included) and the
    clients (with the objects they stored)."""
    crowd = [
        Client(
            target.port, target.token, f"{label}-c{index:02d}-", secrets.randbits(64), target.sizes
        )
        for index in range(clients)
    ]
    servers = {p.name: tree_cpu([p.pid]) for p in target.processes}
    pg = PostgresCpu(target.database_url)
    try:
        mine, machine = client_cpu(), machine_cpu()
        wall = run_clients(crowd, seconds, lambda c: getattr(c, action))
        mine_after, machine_after = client_cpu(), machine_cpu()
        for process in target.processes:
            servers[process.name] = tree_cpu([process.pid]) - servers[process.name]
    finally:
        postgres, backends = pg.finish()
        for client in crowd:
            client.close()
    stats = Stats()
    for client in crowd:
        stats.merge(client.stats)
    summary = summarize(stats, wall)
    busy = machine_after[0] - machine[0]
    total = machine_after[1] - machine[1]
    requests = max(1, summary["total"]["count"])
    summary["cpu"] = {
        "client_cores": (mine_after - mine) / wall,
        **{f"{name}_cores": value / wall for name, value in servers.items()},
        "postgres_cores": postgres / wall,
        "postgres_backends": backends,
        "machine_busy": busy / total if total else 0.0,
        # Per request, so comparable across phases whatever else the machine is doing.
        "gunicorn_ms_per_request": servers.get("gunicorn", 0.0) * 1000 / requests,
        "postgres_ms_per_request": postgres * 1000 / requests,
    }
    return summary, crowd


def print_ops(title: str, summary: dict[str, Any]) -> None:
    print(title)
    print(
        f"  {'op':8} {'count':>7} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8}"
    )
    for op in OPS:
        row = summary["ops"][op]
        if not row["count"]:
            continue
        print(
            f"  {op:8} {row['count']:7d} {row['per_s']:8.1f} {row['p50_ms']:8.1f} "
            f"{row['p95_ms']:8.1f} {row['p99_ms']:8.1f} {row['max_ms']:8.1f}"
        )
    total = summary["total"]
    print(
        f"  {'all':8} {total['count']:7d} {total['per_s']:8.1f} {total['p50_ms']:8.1f} "
        f"{'':>8} {total['p99_ms']:8.1f}   {summary['mib_per_s']:.1f} MiB/s "
        f"(up {summary['uploaded_mib']:.0f} MiB, down {summary['downloaded_mib']:.0f} MiB)"
    )


def measure(args: argparse.Namespace, database_url: str, tmp: Path) -> dict[str, Any]:
    sizes = (args.min_size, args.max_size)
    settings = Settings(free_port(), args.workers, args.worker_class, args.threads, args.celery)
    env = server_env(tmp / "data", database_url, args.redis_url)
    tenant = f"load-{secrets.token_hex(3)}"
    progress("migrating the database; a tenant on the local keystore, a member token")
    token = manage(env, "shell", "--command", SET_UP.format(tenant=tenant)).strip().splitlines()[-1]
    processes: list[Process] = []
    try:
        server = start_gunicorn(env, settings, tmp)
        processes.append(server)
        if settings.celery:
            processes.append(start_celery(env, tmp))
        wait_ready(server, settings.port)
        port = settings.port
        progress(f"gunicorn ready on port {port}; GET /healthz, warm-up, 1-client baseline")

        target = Target(port, token, sizes, processes, database_url)
        healthz_1, _ = phase("healthz", target, 1, args.healthz_seconds, "healthz")
        healthz_n, _ = phase("healthz", target, args.clients, args.healthz_seconds, "healthz")
        warm_up, warm = phase("warm", target, args.clients, WARM_UP_SECONDS)
        single, one = phase("one", target, 1, args.baseline_seconds)
        progress(f"{args.clients} clients for {args.seconds:g} s")
        loaded, crowd = phase("run", target, args.clients, args.seconds)
        for process in processes:
            process.check_alive()

        tracked = [t for c in (*warm, *one, *crowd) for t in c.objects]
        progress(f"reading back {len(tracked)} objects, every version")
        started = time.monotonic()
        verdict = verify_all(port, token, tracked, args.clients)
        verify_seconds = time.monotonic() - started
    finally:
        for process in reversed(processes):
            process.stop()
    failed_log = [p.tail(20) for p in processes if p.process.returncode not in (0, -15)]
    server_errors = "\n".join(
        line
        for line in (tmp / "gunicorn.log").read_text(errors="replace").splitlines()
        if "Traceback" in line or "[ERROR]" in line or "WORKER TIMEOUT" in line
    )
    return {
        "clients": args.clients,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": args.loadavg_before,
            "python": platform.python_version(),
            "postgres": _versions("psql", "--version"),
            "redis": _versions("redis-server", "--version"),
        },
        "server": {
            "gunicorn": f"{settings.workers} {settings.worker_class} worker(s)"
            + (f" x {settings.threads} threads" if settings.worker_class == "gthread" else ""),
            "celery": "1 worker, solo pool, beat embedded (-B)" if settings.celery else "none",
            "database": redact(database_url),
            "redis": redact(args.redis_url),
            "environment": "VAULT_ENV=development (local keystore), DEBUG off, own SECRET_KEY, "
            "ALLOWED_HOSTS=127.0.0.1, access log to a file",
            "key_backend": "local software keystore (gateway mode: the server encrypts)",
            "body_sizes": f"{args.min_size} to {args.max_size} bytes, log-uniform",
            "mix": dict(MIX),
        },
        "healthz": {
            "one_client_per_s": healthz_1["total"]["per_s"],
            "n_clients_per_s": healthz_n["total"]["per_s"],
            "n_clients_p50_ms": healthz_n["total"]["p50_ms"],
            "gunicorn_ms_per_request": healthz_n["cpu"]["gunicorn_ms_per_request"],
        },
        "warm_up": warm_up,
        "baseline": single,
        "run": loaded,
        "verify": {
            "objects": verdict.objects,
            "versions": verdict.versions,
            "mib": verdict.bytes / MIB,
            "seconds": verify_seconds,
            "lost": verdict.lost,
            "corrupted": verdict.corrupted,
            "unexpected": verdict.unexpected,
            "errors": len(verdict.errors),
            "error_samples": verdict.errors[:20],
            "lost_or_corrupted_samples": verdict.findings[:20],
        },
        "errors": sum(s["errors"] for s in (healthz_1, healthz_n, warm_up, single, loaded)),
        "server_log_errors": server_errors[:4000],
        "process_failures": failed_log,
    }


def report(result: dict[str, Any]) -> int:
    run, single, verify = (result[k] for k in ("run", "baseline", "verify"))
    usage = run["cpu"]
    n, machine = result["clients"], result["machine"]
    print()
    print(f"Server: gunicorn {result['server']['gunicorn']}; Celery: {result['server']['celery']}")
    print(f"Database: {result['server']['database']}; Redis: {result['server']['redis']}")
    print()
    health = result["healthz"]
    print(
        f"GET /healthz: {health['one_client_per_s']:.0f}/s on 1 connection, "
        f"{health['n_clients_per_s']:.0f}/s on {n} (p50 {health['n_clients_p50_ms']:.1f} ms)"
    )
    print()
    print_ops(f"Baseline: 1 client, {single['seconds']:.1f} s", single)
    print()
    print_ops(f"Load: {n} clients, {run['seconds']:.1f} s", run)
    print()
    print(
        f"CPU during the load: client {usage['client_cores']:.2f} cores, gunicorn "
        f"{usage['gunicorn_cores']:.2f}, Celery {usage.get('celery_cores', 0):.2f}, "
        f"PostgreSQL ({usage['postgres_backends']} backends) "
        f"{usage['postgres_cores']:.2f}; machine {usage['machine_busy']:.0%} busy of "
        f"{machine['cpus']} cores (load average before: {machine['loadavg_before']})"
    )
    base_cpu = single["cpu"]
    print(
        f"Server CPU per request: gunicorn {usage['gunicorn_ms_per_request']:.1f} ms "
        f"(1 client: {base_cpu['gunicorn_ms_per_request']:.1f} ms; /healthz: "
        f"{health['gunicorn_ms_per_request']:.2f} ms), PostgreSQL "
        f"{usage['postgres_ms_per_request']:.1f} ms (1 client: "
        f"{base_cpu['postgres_ms_per_request']:.1f} ms)"
    )
    print()
    ratio = run["total"]["per_s"] / single["total"]["per_s"] if single["total"]["per_s"] else 0
    print(f"{'ratio':52} {'value':>8}")
    print(f"{f'{n}-client / 1-client throughput (requests/s)':52} {ratio:8.2f}")
    print(
        f"{f'{n}-client requests/s / {n}-client /healthz rate':52} "
        f"{run['total']['per_s'] / health['n_clients_per_s']:8.1%}"
    )
    if base_cpu["gunicorn_ms_per_request"]:
        print(
            f"{'gunicorn CPU per request, loaded / 1 client':52} "
            f"{usage['gunicorn_ms_per_request'] / base_cpu['gunicorn_ms_per_request']:8.2f}"
        )
    for op in OPS:
        row, base = run["ops"][op], single["ops"][op]
        if row["count"] and row["p50_ms"]:
            print(f"{f'{op}: p99 / p50 under load':52} {row['p99_ms'] / row['p50_ms']:8.1f}")
        if row["count"] and base["p50_ms"]:
            print(
                f"{f'{op}: p50 under load / p50 of 1 client':52} "
                f"{row['p50_ms'] / base['p50_ms']:8.1f}"
            )
    print()
    print(
        f"Read back: {verify['objects']} objects, {verify['versions']} versions, "
        f"{verify['mib']:.0f} MiB in {verify['seconds']:.1f} s"
    )
    errors = result["errors"] + verify["errors"]
    print(
        f"errors: {errors}   lost: {verify['lost']}   corrupted: {verify['corrupted']}   "
        f"unexpected versions: {verify['unexpected']}"
    )
    for kind, count in {**run["error_kinds"], **single["error_kinds"]}.items():
        print(f"  {count} x {kind}")
    samples = verify["error_samples"][:5] + verify["lost_or_corrupted_samples"][:5]
    for sample in run["error_samples"][:5] + samples:
        print(f"  e.g. {sample}")
    if result["server_log_errors"]:
        print("server log:\n" + result["server_log_errors"])
    bad = errors + verify["lost"] + verify["corrupted"] + verify["unexpected"]
    bad += len(result["process_failures"])
    print("verdict:", "ok" if not bad else "FAILED")
    return 0 if not bad else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="the loaded phase")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="the 1-client phase")
    parser.add_argument("--healthz-seconds", type=float, default=HEALTHZ_SECONDS)
    parser.add_argument(
        "--postgres",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="server on which to create (and drop) a fresh database",
    )
    parser.add_argument("--database-url", default=None, help="use this database as it is")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    # The defaults are what `manage.py serve` runs on PostgreSQL (docs/performance.md says why).
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--worker-class", default="gthread", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--no-celery", dest="celery", action="store_false")
    parser.add_argument("--min-size", type=int, default=1 * KIB)
    parser.add_argument("--max-size", type=int, default=256 * KIB)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or not 0 < args.min_size <= args.max_size:
        parser.error("need at least one client, a positive duration and 0 < min-size <= max-size")
    args.loadavg_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{args.loadavg_before}; {args.clients} clients for {args.seconds:g} s"
    )
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="cvault-load-") as name:
        tmp = Path(name)
        database = (
            contextlib.nullcontext(args.database_url)
            if args.database_url
            else fresh_database(args.postgres)
        )
        try:
            with database as database_url:
                result = measure(args, database_url, tmp)
        except KeyboardInterrupt:
            print("interrupted: server stopped, database dropped", file=sys.stderr)
            return 130
    status = report(result)
    if args.json:
        document = {"headline": headline(result, status), **result}
        args.json.write_text(json.dumps(rounded(document), indent=2) + "\n")
    return status


def headline(result: dict[str, Any], status: int) -> dict[str, Any]:
    """The figures a summary shows first."""
    run, verify = result["run"], result["verify"]
    single = result["baseline"]["total"]["per_s"]
    return {
        "verdict": "ok" if status == 0 else "FAILED",
        "clients": result["clients"],
        "seconds": run["seconds"],
        "requests_per_s": run["total"]["per_s"],
        "mib_per_s": run["mib_per_s"],
        **{f"{op}_p50_ms": run["ops"][op]["p50_ms"] for op in OPS},
        **{f"{op}_p99_ms": run["ops"][op]["p99_ms"] for op in OPS},
        "throughput_vs_1_client": run["total"]["per_s"] / single if single else 0.0,
        "errors": result["errors"] + verify["errors"],
        "objects_read_back": verify["objects"],
        "versions_read_back": verify["versions"],
        "lost": verify["lost"],
        "corrupted": verify["corrupted"],
        "server": result["server"]["gunicorn"],
        "machine_busy": run["cpu"]["machine_busy"],
        "loadavg_before": result["machine"]["loadavg_before"],
    }


def rounded(value: Any) -> Any:
    """``value`` with floats to 3 decimals (the JSON stays readable)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
