"""Fault injection for the task queue (issue 9, item 1): Redis stopped or frozen, and a Celery
worker killed with SIGKILL in the middle of a rewrap campaign.

Everything runs as in production, in real processes: a private ``redis-server`` on a free
loopback port (the machine's Redis on 6379 is never touched), a fresh PostgreSQL database of
its own on the server ``DATABASE_URL`` names, ``manage.py serve`` (gunicorn), a real Celery
worker and, for campaigns, Celery beat. The faults are real too: the Redis process is killed
(SIGKILL) or frozen (SIGSTOP); the worker's process group is killed (SIGKILL).

One test works in-process: the queue's Redis stopped while the cache's still answers (separate
Redis servers, or Redis dying between a request's authentication and its enqueue), which is
the only way a request reaches the enqueue with the queue down; there the API's answer and the
rows the request leaves behind are checked in the test database.

Sizes: ``VAULT_TORTURE=1`` makes the campaign bigger (CI: 240 objects; torture: 1200).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.core.helpers import free_port, wait_until
from tests.core.test_serve import Server

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = "/usr/bin/redis-server"
TORTURE = os.environ.get("VAULT_TORTURE") == "1"
CAMPAIGN_OBJECTS = 1200 if TORTURE else 240

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


# --- real components ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port, that the test may break.

    It keeps an append-only file (fsync on every write) in its directory, as a production Redis
    that carries a task queue should, so a restart on the same port finds what was queued.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(self.answers, timeout=20, what=f"redis-server on port {self.port}")
        except AssertionError:
            self.close()
            raise

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """Stop the server the hard way (SIGKILL), as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class Celery:
    """``celery -A vault worker`` (or ``beat``) in its own process group, output collected."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.node = ""  # a worker's node name, for remote control
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "vault", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the worker gets no chance to ack or clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _worker(env: dict[str, str]) -> Celery:
    node = f"fq-{uuid.uuid4().hex[:12]}@{socket.gethostname()}"
    worker = Celery(
        [
            *("worker", "--pool=solo", "--loglevel=INFO", "--hostname", node),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        env,
    )
    worker.node = node
    try:
        wait_until(lambda: worker.said("ready."), timeout=90, what="the Celery worker to be ready")
    except AssertionError:
        worker.kill()
        raise
    return worker


def _control(redis_server: PrivateRedis, command: str, worker: Celery) -> bool:
    """Send a remote-control command to the worker through the private Redis, on a connection
    of its own; whether the worker acknowledged it."""
    from celery import Celery as CeleryApp

    # Not the current app: shared tasks (the product's) and ``celery.current_app`` would follow
    # it, to this private Redis, for the rest of the process.
    control = CeleryApp("faults-queue-control", broker=redis_server.url, set_as_current=False)
    try:
        with control.connection_for_write() as connection:
            send = getattr(control.control, command)
            replies = send("celery", destination=[worker.node], reply=True, connection=connection)
    except (redis.RedisError, OSError):
        return False
    finally:
        control.close()
    return bool(replies) and worker.node in replies[0]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    data: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.data)

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


@dataclass
class Vault:
    """The served vault and the processes around it, as an operator runs them."""

    server: Server
    env: dict[str, str]
    token: str
    database_url: str
    processes: list[Celery] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        raw: bytes | None = None,
        timeout: float = 60,
    ) -> Answer:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.port}{path}", method=method, data=data
        )
        bearer = self.token if token == "" else token
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if raw is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def start(self, command: Callable[[dict[str, str]], Celery]) -> Celery:
        process = command(self.env)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (SIGKILL after 30 s)."""
        running = [p.process for p in self.processes] + [self.server.process]
        for process in running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _sql(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the vault's database directly (the test only looks; it never writes there)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        return list(connection.execute(query, params).fetchall())


@pytest.fixture
def faults_queue_database() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, on the server DATABASE_URL names."""
    import psycopg

    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    name = f"faults_queue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def faults_queue_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _serve(
    tmp_path: Path, database_url: str, redis_server: PrivateRedis, extra: dict[str, str]
) -> Vault:
    data_dir = tmp_path / "vault"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "VAULT_LOG_LEVEL": "INFO",
        **extra,
    }
    server = Server(data_dir, free_port(), env)
    try:
        token = server.token()
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    process_env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        **env,
        "VAULT_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    return Vault(server, process_env, token, database_url)


@pytest.fixture
def faults_queue_vault(
    tmp_path: Path, faults_queue_database: str, faults_queue_redis: PrivateRedis
) -> Iterator[Vault]:
    """The vault served against the private Redis, with one real Celery worker."""
    vault = _serve(tmp_path, faults_queue_database, faults_queue_redis, {})
    try:
        vault.start(_worker)
        yield vault
    finally:
        vault.stop()


# --- Redis stopped, and frozen ------------------------------------------------------------------


def _run_finishes(vault: Vault, run_id: str) -> bool:
    answer = vault.call("GET", f"/api/v1/compliance/runs/{run_id}/")
    assert answer.status == 200, answer.body
    assert answer.body["state"] != "failed", answer.body
    return bool(answer.body["state"] == "finished")


def _assert_unavailable(answer: Answer, code: str) -> None:
    assert answer.status == 503, (answer.status, answer.body)
    assert answer.code == code, answer.body
    assert int(answer.headers["Retry-After"]) > 0


def test_a_stopped_redis_answers_503_and_the_vault_and_its_worker_resume_by_themselves(
    faults_queue_vault: Vault, faults_queue_redis: PrivateRedis
) -> None:
    vault = faults_queue_vault
    worker = vault.processes[0]
    first = vault.call("POST", "/api/v1/compliance/runs/")
    assert first.status == 202, first.body
    wait_until(
        lambda: _run_finishes(vault, first.body["id"]),
        timeout=90,
        what="the worker to finish the first compliance run",
    )
    kept = vault.call("POST", "/api/v1/objects/", {"name": "kept", "mode": "gateway"}).body
    content = os.urandom(3000)
    assert vault.call("PUT", f"/api/v1/objects/{kept['id']}/content/", raw=content).status == 201
    # A job accepted just before the crash: the worker stops taking jobs (it stays connected),
    # so the run's message waits in Redis when Redis is killed.
    assert _control(faults_queue_redis, "cancel_consumer", worker)
    # A BRPOP the worker had already sent would still take the next message: wait until no
    # client of Redis is blocked on the queue.
    wait_until(
        lambda: not _blocked_clients(faults_queue_redis),
        timeout=30,
        what="the worker's last wait on the queue to end",
    )
    queued = vault.call("POST", "/api/v1/compliance/runs/")
    assert queued.status == 202, queued.body
    assert _queued(faults_queue_redis) == 1, "the job waits in Redis, not in the worker"
    runs_before = vault.call("GET", "/api/v1/compliance/runs/").body["count"]
    campaigns_before = vault.call("GET", "/api/v1/keys/campaigns/").body["count"]

    faults_queue_redis.kill()

    # Every bearer-authenticated request needs Redis: the failed-authentication counter
    # (PCI-DSS 8.3.4 throttling) is read before any token is checked. It fails closed.
    _assert_unavailable(vault.call("GET", "/api/v1/tenant/"), "cache_unavailable")
    _assert_unavailable(vault.call("GET", "/api/v1/objects/"), "cache_unavailable")
    _assert_unavailable(
        vault.call("GET", f"/api/v1/objects/{kept['id']}/content/"), "cache_unavailable"
    )
    _assert_unavailable(vault.call("POST", "/api/v1/compliance/runs/"), "cache_unavailable")
    _assert_unavailable(vault.call("POST", "/api/v1/keys/campaigns/", {}), "cache_unavailable")
    _assert_unavailable(
        vault.call("POST", "/api/v1/objects/", {"name": "during-outage", "mode": "gateway"}),
        "cache_unavailable",
    )
    # A wrong token learns nothing either (no 401, and no attempt that escapes the counter).
    wrong = vault.call("GET", "/api/v1/tenant/", token="cvt_wrong")
    _assert_unavailable(wrong, "cache_unavailable")
    # What does not need Redis keeps answering: liveness, and the console's sign-in page
    # (sessions live in the database). Readiness says which component is missing.
    assert vault.call("GET", "/healthz", token=None).status == 200
    ready = vault.call("GET", "/readyz", token=None)
    assert ready.status == 503
    assert ready.body["error"]["details"] == {"database": "ok", "redis": "failed"}
    assert vault.call("GET", "/console/login/", token=None).status == 200

    # Redis comes back on the same port: no restart of the vault or of the worker.
    faults_queue_redis.start()
    wait_until(
        lambda: vault.call("GET", "/api/v1/tenant/").status == 200,
        timeout=30,
        what="the API to answer again",
    )
    assert vault.call("GET", "/readyz", token=None).status == 200
    # Nothing the refused requests asked for happened; what was stored before is intact.
    assert vault.call("GET", "/api/v1/compliance/runs/").body["count"] == runs_before
    assert vault.call("GET", "/api/v1/keys/campaigns/").body["count"] == campaigns_before
    names = [row["name"] for row in vault.call("GET", "/api/v1/objects/").body["results"]]
    assert names == ["kept"]
    assert vault.call("GET", f"/api/v1/objects/{kept['id']}/content/").data == content
    # The same worker, reconnected by itself, takes jobs again: first the one queued before
    # the crash (nothing lost), then a new one.
    wait_until(
        lambda: _control(faults_queue_redis, "add_consumer", worker),
        timeout=60,
        what="the worker to reconnect and take jobs again",
    )
    wait_until(
        lambda: _run_finishes(vault, queued.body["id"]),
        timeout=90,
        what="the reconnected worker to run the job queued before the crash",
    )
    again = vault.call("POST", "/api/v1/compliance/runs/")
    assert again.status == 202, again.body
    wait_until(
        lambda: _run_finishes(vault, again.body["id"]),
        timeout=90,
        what="the reconnected worker to finish a new compliance run",
    )
    assert worker.process.poll() is None, "the worker was not restarted"

    # A frozen Redis (SIGSTOP: the port still accepts connections) must not hang requests.
    faults_queue_redis.freeze()
    try:
        _assert_unavailable(vault.call("GET", "/api/v1/tenant/", timeout=60), "cache_unavailable")
    finally:
        faults_queue_redis.thaw()
    wait_until(
        lambda: vault.call("GET", "/api/v1/tenant/").status == 200,
        timeout=30,
        what="the API to answer after Redis thawed",
    )


# --- a worker killed mid-campaign --------------------------------------------------------------

MAKE_OBJECTS = """
import base64, io, json, os
from vault.objects.services import object_create, version_store_gateway
from vault.tenants.models import Tenant

tenant = Tenant.objects.get(slug="demo")
with open(os.environ["FAULTS_QUEUE_OBJECTS"], encoding="ascii") as handle:
    wanted = json.load(handle)
for name, encoded in wanted.items():
    data = base64.b64decode(encoded)
    made = object_create(
        tenant=tenant, name=name, mode="gateway", content_type="application/octet-stream",
        token=None,
    )
    version_store_gateway(
        obj=made, stream=io.BytesIO(data), length=len(data),
        content_type="application/octet-stream", token=None,
    )
"""


def _make_objects(vault: Vault, directory: Path, count: int) -> dict[str, bytes]:
    """Store ``count`` gateway objects of random content through the services, in a process
    of the vault's own (the fast way to have a campaign worth interrupting)."""
    wanted = {f"fq-{n:05d}": os.urandom(64 + (n * 37) % 2000) for n in range(count)}
    listing = directory / "objects.json"
    listing.write_text(
        json.dumps({k: base64.b64encode(v).decode("ascii") for k, v in wanted.items()}),
        encoding="ascii",
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", MAKE_OBJECTS],
        cwd=ROOT,
        env={**vault.env, "FAULTS_QUEUE_OBJECTS": str(listing)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wanted


def _slices(vault: Vault, campaign_id: int) -> list[tuple[int, bool, str]]:
    return [
        (number, bool(done), owner)
        for number, done, owner in _sql(
            vault.database_url,
            "SELECT number, done, lease_owner FROM lifecycle_campaignslice "
            "WHERE campaign_id = %s ORDER BY number",
            campaign_id,
        )
    ]


def _read_back(vault: Vault) -> dict[str, bytes]:
    """Every object the API lists, by name, with the content it answers."""
    page = "/api/v1/objects/?page_size=500"
    ids: dict[str, int] = {}
    while page:
        answer = vault.call("GET", page)
        assert answer.status == 200, answer.body
        ids.update({row["name"]: row["id"] for row in answer.body["results"]})
        following = answer.body.get("next")
        page = following.split(f":{vault.server.port}", 1)[1] if following else ""

    def read(object_id: int) -> bytes:
        answer = vault.call("GET", f"/api/v1/objects/{object_id}/content/")
        assert answer.status == 200, (object_id, answer.status)
        return answer.data

    # As many readers as the server has threads (two gunicorn workers of four threads).
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip(ids, pool.map(read, ids.values()), strict=True))
    return found


@pytest.fixture
def faults_queue_campaign_vault(
    tmp_path: Path, faults_queue_database: str, faults_queue_redis: PrivateRedis
) -> Iterator[Vault]:
    """The vault with a paced, sliced campaign set-up, Celery beat driving campaigns every
    second or two, and no worker yet."""
    extra = {
        "VAULT_CAMPAIGN_SLICES": "4",
        "VAULT_REWRAP_BATCH": "10",
        "VAULT_REWRAP_RATE": str(CAMPAIGN_OBJECTS // 8),  # about eight seconds of rewrapping
        "VAULT_CAMPAIGN_LEASE_SECONDS": "3",
        "VAULT_CAMPAIGN_INTERVAL_SECONDS": "2",
    }
    vault = _serve(tmp_path, faults_queue_database, faults_queue_redis, extra)
    schedule = tmp_path / "beat"
    schedule.mkdir()
    try:
        vault.start(
            lambda env: Celery(
                [
                    *("beat", "--loglevel=INFO", "--schedule", str(schedule / "schedule")),
                    *("--pidfile", str(schedule / "beat.pid")),
                ],
                env,
            )
        )
        yield vault
    finally:
        vault.stop()


def test_a_worker_killed_mid_campaign_loses_nothing_and_a_fresh_worker_completes_it(
    faults_queue_campaign_vault: Vault, tmp_path: Path
) -> None:
    from vault.crypto import envelope

    vault = faults_queue_campaign_vault
    wanted = _make_objects(vault, tmp_path, CAMPAIGN_OBJECTS)
    first = vault.start(_worker)

    rotated = vault.call("POST", "/api/v1/keys/campaigns/", {})
    assert rotated.status == 202, rotated.body
    campaign = rotated.body
    assert campaign["total"] == CAMPAIGN_OBJECTS

    # Kill the worker when some slices are done and others are not (it works slice by slice).
    def partly_done() -> bool:
        done = sum(1 for _, finished, _ in _slices(vault, campaign["id"]) if finished)
        assert done < campaign["slices"], "the campaign ended before the kill: slow it down"
        return done >= 1

    wait_until(partly_done, timeout=120, what="the first slice of the campaign to be done")
    first.kill()
    at_kill = _slices(vault, campaign["id"])
    assert 1 <= sum(done for _, done, _ in at_kill) < campaign["slices"], at_kill
    status = vault.call("GET", f"/api/v1/keys/campaigns/{campaign['id']}/").body
    assert status["state"] == "running", status
    # While no worker runs, every object still reads back (old and new stanzas alike).
    assert vault.call("GET", "/api/v1/objects/?page_size=1").body["count"] == CAMPAIGN_OBJECTS

    # A fresh worker; Celery beat's run_campaigns (the production driver) does the rest, taking
    # over the dead worker's slice once its lease has expired.
    second = vault.start(_worker)

    def complete() -> bool:
        answer = vault.call("GET", f"/api/v1/keys/campaigns/{campaign['id']}/")
        assert answer.status == 200, answer.body
        return bool(answer.body["state"] == "complete")

    wait_until(complete, timeout=120, what="the fresh worker to complete the campaign")
    assert second.said("vault.lifecycle.run_campaigns"), "the fresh worker ran the campaign"
    final = vault.call("GET", f"/api/v1/keys/campaigns/{campaign['id']}/").body
    headers = _sql(
        vault.database_url,
        "SELECT o.name, v.header FROM objects_objectversion v "
        "JOIN objects_storedobject o ON o.id = v.object_id ORDER BY o.name",
    )
    assert len(headers) == CAMPAIGN_OBJECTS
    # Counts add up: each header was rewrapped once or found current (a batch whose headers were
    # swapped just before the kill, but whose progress was not recorded, is found current).
    assert final["failed"] == 0, final
    assert final["rewrapped"] + final["already_current"] == final["total"] == len(headers), final
    assert final["rewrapped"] > 0
    # Every stored header's stanza of the rotated key is at the new version.
    for name, header in headers:
        stanzas = [
            stanza
            for stanza in envelope.parse_header(bytes(header)).stanzas
            if stanza.key.key_id == final["key"]
        ]
        assert [s.key.version for s in stanzas] == [final["target_version"]], name
    # Nothing lost, nothing changed: every object reads back byte for byte.
    assert _read_back(vault) == wanted


# --- the queue down while the cache answers (in-process) ----------------------------------------


@pytest.fixture
def faults_queue_split_redis(
    tmp_path: Path, settings: Any
) -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    """Two private Redis servers: one is this process's cache, the other its Celery broker and
    result store. The Celery app's connection pools are rebuilt for them and restored after."""
    from vault.celery import app as celery_app

    app: Any = celery_app  # its pools are private attributes
    cache, queue = PrivateRedis(tmp_path / "cache"), PrivateRedis(tmp_path / "queue")
    try:
        cache.start()
        queue.start()
    except BaseException:
        cache.close()
        queue.close()
        raise
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": cache.url,
        }
    }
    names = ("broker_url", "result_backend", "task_always_eager")
    before = {name: app.conf[name] for name in names}
    # The app's connection pool, its AMQP helper (producer pool, queues bound to channels) and
    # its result backend are set aside whole and put back afterwards, untouched: closing or
    # resetting them would hand later tests in this process closed pools or channels bound to
    # this test's servers. The test gets fresh ones, closed at the end.
    kept_pool, kept_amqp = app._pool, app.__dict__.get("amqp")
    kept_backend_cache, kept_backend = app._backend_cache, app._local.__dict__.get("backend")

    def set_aside() -> None:
        app._pool = None
        app.__dict__.pop("amqp", None)
        app._backend_cache = None
        app._local.__dict__.pop("backend", None)

    try:
        app.conf.update(broker_url=queue.url, result_backend=queue.url, task_always_eager=False)
        set_aside()
        yield cache, queue
    finally:
        queue.close()
        cache.close()
        if app._pool is not None:
            app._pool.force_close_all()
        test_amqp = app.__dict__.get("amqp")
        if test_amqp is not None and test_amqp._producer_pool is not None:
            test_amqp._producer_pool.force_close_all()
        app.conf.update(before)
        set_aside()
        app._pool = kept_pool
        if kept_amqp is not None:
            app.__dict__["amqp"] = kept_amqp
        app._backend_cache = kept_backend_cache
        if kept_backend is not None:
            app._local.backend = kept_backend


def _queued(queue: PrivateRedis) -> int:
    """Messages waiting in Celery's default queue on the broker."""
    client = redis.Redis(port=queue.port, socket_timeout=5)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


def _blocked_clients(server: PrivateRedis) -> list[dict[str, Any]]:
    """The server's clients blocked in a command (BRPOP on a queue)."""
    client = redis.Redis(port=server.port, socket_timeout=5)
    try:
        return [c for c in client.client_list() if "b" in str(c.get("flags", ""))]
    finally:
        client.close()


def _in_thread(call: Callable[[], Any], limit: float) -> Any:
    """``call()``'s result; fails the test, instead of hanging it, if it does not return.

    The thread shares this thread's database connection (and so the test's transaction), as
    Django's live server thread does.
    """
    from django.db import connections

    connection = connections["default"]
    box: list[Any] = []

    def run() -> None:
        connections["default"] = connection
        box.append(call())

    connection.inc_thread_sharing()
    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(limit)
    finally:
        connection.dec_thread_sharing()
    assert box, f"the request still hung after {limit:.0f}s (a frozen Redis must not hang it)"
    return box[0]


@pytest.mark.django_db
def test_a_stopped_queue_answers_503_queue_unavailable_and_leaves_no_run_in_progress(
    faults_queue_split_redis: tuple[PrivateRedis, PrivateRedis],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.test import Client
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from compliance.models import ComplianceRun, RunState
    from tests.console.conftest import sign_in
    from tests.factories import make_user
    from tests.objects.test_objects import _client
    from vault.keys.models import KeyBinding
    from vault.lifecycle.models import Campaign, CampaignState
    from vault.tenants.models import Membership, Role

    _, queue = faults_queue_split_redis
    api: Any = _client(Role.OWNER)
    tenant = api.tenant

    def runs(state: str) -> int:
        return ComplianceRun.objects.filter(tenant=tenant, state=state).count()

    queue.kill()
    # Starting a compliance run needs its job enqueued: the API answers 503 and the run it
    # had recorded is closed as failed, not left "running" (which would answer every later
    # start with a run that never ends).
    answer = api.post("/api/v1/compliance/runs/")
    assert answer.status_code == 503, answer.content
    assert answer.json()["error"]["code"] == "queue_unavailable"
    assert int(answer["Retry-After"]) > 0
    assert runs(RunState.RUNNING) == 0
    # The console's button, the same.
    person = make_user()
    device = TOTPDevice.objects.create(user=person, name="app", confirmed=True)
    Membership.objects.create(tenant=tenant, user=person, role=Role.OWNER)
    console = Client(raise_request_exception=False)
    assert sign_in(console, device, email=person.email).status_code == 302
    page = console.post(f"/console/t/{tenant.slug}/compliance/")
    assert page.status_code == 503, page.content[:500]
    assert int(page["Retry-After"]) > 0
    assert runs(RunState.RUNNING) == 0
    # A rotation does not need the queue: the rotation and its campaign are durable rows, and
    # Celery beat's run_campaigns drives the campaign once the queue is back. So it succeeds.
    version = KeyBinding.objects.get(tenant=tenant, role="primary").current_version
    # (The test runs in a transaction: the rotation's on-commit prompt to the queue runs when
    # this block ends, as it would right after the request's commit.)
    with django_capture_on_commit_callbacks(execute=True) as prompts:
        rotated = api.post("/api/v1/keys/campaigns/", {}, format="json")
    assert prompts, "the rotation prompted the queue"
    assert rotated.status_code == 202, rotated.content
    binding = KeyBinding.objects.get(tenant=tenant, role="primary")
    assert binding.current_version == version + 1
    assert Campaign.objects.get(pk=rotated.json()["id"]).state == CampaignState.RUNNING

    # A frozen Redis (SIGSTOP) accepts connections and never answers: the request must still
    # end, with the same 503.
    queue.start()
    queue.freeze()
    try:
        frozen = _in_thread(lambda: api.post("/api/v1/compliance/runs/"), limit=120)
    finally:
        queue.thaw()
    assert frozen.status_code == 503, frozen.content
    assert frozen.json()["error"]["code"] == "queue_unavailable"
    assert runs(RunState.RUNNING) == 0

    # The queue is back: the next start is enqueued, through the same process's pools.
    waiting = _queued(queue)
    started = api.post("/api/v1/compliance/runs/")
    assert started.status_code == 202, started.content
    assert runs(RunState.RUNNING) == 1
    assert _queued(queue) == waiting + 1
