"""Secrets hygiene: what the tests plant is found nowhere on the server side while the data exists.

The first test writes a plaintext marker in both modes and looks for it in the data directory and
the server's log. The others run a served instance through a fuller life (console sign-in with a
password set through a set-up link, API tokens made by the API and by the operator, uploads in
both modes, in parts, a deletion) and then look, before anything is torn down, for every secret
the run planted or produced:

- the plaintext, and the real name of the client-side object;
- every data key (DEK) the server and ``cvault`` made, recovered without any hook in the product:
  each envelope header found anywhere is unwrapped in the test with the keys the test legitimately
  holds (the server's keystore and passphrase, the client's keystore, the SoftHSM token and PIN),
  and a key counts only once it has passed the header's key commitment; plus ``cvault``'s name
  secret;
- the server keystore's passphrase, the client keystore's passphrase, the SoftHSM user and SO
  PINs, the demo owner's printed password and the password chosen through the set-up link;
- every API token (the printed demo token, one made through the API, one made by ``manage.py
  token_create``), the set-up link's token and the console session id.

Each is searched for raw, as hex (lower and upper case) and as base64 and base64url (with and
without padding, and at each of the three alignments inside a longer base64 text), in: the
database (SQLite with its ``-wal`` and ``-shm``, or every row of every table on PostgreSQL), the
storage, the keystore and the rest of the data directory, the server's output, and, with Redis,
every command any client sent to it (MONITOR, captured as it happened), the decoded bodies of the
Celery messages and the worker's output. Zero hits, with one documented exception: Django's
database session store keys each row by the clear session id (``django_session.session_key``),
so the session id is looked for everywhere except the database (see ``KNOWN_PLACES``). TOTP seeds
are not planted: they are stored unhashed by design today (threat model G3).

With ``VAULT_TORTURE_SUMMARY_DIR`` set, each run adds what it planted, how many bytes it scanned
in each place and its hits to ``secrets_scan.json`` there.
"""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kms_plugins.base import KeyBackend
from kms_plugins.errors import KeyBackendError
from kms_plugins.local import LocalKeyBackend
from tests.client.conftest import ROOT, Cvault, Running
from tests.core.helpers import free_port
from tests.core.test_serve import Server
from vault.client.errors import ClientError
from vault.client.keys import KeyRing
from vault.client.names import name_binding
from vault.client.sdk import NAME_BINDING_KEY
from vault.crypto import EnvelopeHeader
from vault.crypto.envelope import MAGIC, MAX_HEADER_SIZE, read_header
from vault.crypto.errors import EnvelopeError

MARKER = b"CVAULT-MARKER-5e1b0c77-PLAINTEXT"
TORTURE = os.environ.get("VAULT_TORTURE") == "1"

# Lines `manage.py serve` prints on purpose, once, for the person who started it.
PRINTED_ON_PURPOSE = ("API token: ", "Password: ")
# Where a planted secret is by design, not by leak (kind -> places it is not looked for in):
# Django's database session store keys each row by the clear session id, and Django's
# PasswordResetConfirmView keeps an opened set-up link's token in the session's data (signed,
# base64 JSON, not encrypted) until the password is set. Both are reported in the summary.
KNOWN_PLACES = {"session id": ("database",), "set-up token": ("database",)}


def test_the_marker_is_nowhere_on_the_server_while_the_data_exists(
    running: Running, cvault: Cvault, tmp_path: Path
) -> None:
    source = tmp_path / "secret.txt"
    source.write_bytes(MARKER * 4096)
    cvault.ok("put", str(source), "client-side-copy")
    cvault.ok("put", "--gateway", str(source), "gateway-copy")
    # The data still exists and reads back, in both modes.
    assert cvault.ok("cat", "client-side-copy").out == MARKER * 4096
    assert cvault.ok("cat", "--gateway", "gateway-copy").out == MARKER * 4096
    # The database (with its WAL), every stored file and the keystore.
    for path in running.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path
    # Everything the server logged so far (access log and application log).
    assert MARKER.decode() not in "\n".join(running.server.lines)


# --- how a secret can look ------------------------------------------------------------------


def _base64_cores(secret: bytes, encode: Callable[[bytes], bytes]) -> list[bytes]:
    """The characters of ``secret``'s base64 that depend on it alone, at each of the three
    alignments it can have inside a longer base64 text."""
    cores = []
    for shift in range(3):
        encoded = encode(b"\0" * shift + secret)
        first = -(-8 * shift // 6)
        last = 8 * (shift + len(secret)) // 6
        cores.append(encoded[first:last])
    return cores


def _forms(secret: bytes) -> list[bytes]:
    """Every form a secret is looked for in: raw, hex, base64 and base64url."""
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(secret)
        forms |= {whole, whole.rstrip(b"="), *_base64_cores(secret, encode)}
    return sorted(forms, key=len)


def _encodings(marker: bytes) -> list[bytes]:
    """The marker, and how it reads inside base64 (Celery's message bodies) at each alignment."""
    return _forms(marker)


@dataclass(frozen=True)
class Secret:
    """One planted or produced secret: what kind it is, a label, and its bytes."""

    kind: str
    label: str
    value: bytes


@dataclass
class Scan:
    """What one run planted, the places it looked in, and where it found something."""

    secrets: list[Secret] = field(default_factory=list)
    places: dict[str, list[bytes]] = field(default_factory=dict)

    def plant(self, kind: str, label: str, value: bytes | str) -> None:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        assert len(raw) >= 12, f"{label} is too short to search for without false hits"
        if all(s.value != raw for s in self.secrets):
            self.secrets.append(Secret(kind, label, raw))

    def add(self, place: str, blob: bytes) -> None:
        self.places.setdefault(place, []).append(blob)

    def hits(self) -> list[dict[str, Any]]:
        found = []
        for place, blobs in self.places.items():
            for secret in self.secrets:
                if place in KNOWN_PLACES.get(secret.kind, ()):
                    continue
                for form in _forms(secret.value):
                    count = sum(blob.count(form) for blob in blobs)
                    if count:
                        found.append(
                            {
                                "place": place,
                                "kind": secret.kind,
                                "secret": secret.label,
                                "form": form[:12].decode("latin-1") + "...",
                                "count": count,
                            }
                        )
        return found

    def report(self, name: str, hits: list[dict[str, Any]]) -> None:
        """Add this run to ``$VAULT_TORTURE_SUMMARY_DIR/secrets_scan.json`` when it is set."""
        directory = os.environ.get("VAULT_TORTURE_SUMMARY_DIR")
        if not directory:
            return
        path = Path(directory) / "secrets_scan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        kinds: dict[str, int] = {}
        for secret in self.secrets:
            kinds[secret.kind] = kinds.get(secret.kind, 0) + 1
        summary["runs"][name] = {
            "markers_planted": kinds,
            "forms_per_marker": "raw, hex lower/upper, base64 and base64url (padded, unpadded, "
            "at each alignment)",
            "bytes_scanned": {p: sum(len(b) for b in blobs) for p, blobs in self.places.items()},
            "not_looked_for": {k: list(v) for k, v in KNOWN_PLACES.items()},
            "hits": hits,
        }
        path.write_text(json.dumps(summary, indent=2, sort_keys=True))

    def assert_clean(self, name: str) -> None:
        hits = self.hits()
        self.report(name, hits)
        assert not hits, json.dumps(hits, indent=1)


def test_the_scan_finds_a_secret_in_every_form_it_claims() -> None:
    """The scanner itself: a DEK hidden raw, as hex, or inside a longer base64 or base64url text
    at any alignment (a Celery body, a signed session) is found; unrelated bytes are not."""
    dek = bytes(range(7, 39))
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            for leaked in (
                encode(os.urandom(10 + shift) + dek + os.urandom(9)),
                encode(dek),
                encode(dek).rstrip(b"="),
                b"x" * shift + dek.hex().encode(),
                dek.hex().upper().encode(),
                os.urandom(shift) + dek,
            ):
                scan = Scan()
                scan.plant("dek", "a data key", dek)
                scan.add("somewhere", b"{" + leaked + b"}")
                scan.add("elsewhere", os.urandom(4096))
                assert {h["place"] for h in scan.hits()} == {"somewhere"}, leaked
    scan = Scan()
    scan.plant("session id", "a session id", "s" * 32)
    scan.add("database", b"s" * 32)
    assert scan.hits() == [], "a known place is not looked in for that kind"


# --- a served instance with its secrets -------------------------------------------------------


class _RedisMonitor:
    """Every command any client sends to the Redis server, captured as it happens (MONITOR)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self._socket = socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=5
        )
        if parsed.password:
            self._socket.sendall(f"AUTH {parsed.password}\r\n".encode())
        self._socket.sendall(b"MONITOR\r\n")
        self.captured = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._socket.settimeout(None)
        while True:
            try:
                data = self._socket.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.captured += data

    def close(self) -> bytes:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
        self._socket.close()
        self._thread.join(timeout=10)
        return bytes(self.captured)


_MONITOR_ESCAPE = re.compile(rb'\\(x[0-9a-fA-F]{2}|[\\"nrtab])')
_MONITOR_SINGLE = {b"\\": b"\\", b'"': b'"', b"n": b"\n", b"r": b"\r", b"t": b"\t"}
_MONITOR_SINGLE |= {b"a": b"\a", b"b": b"\b"}


def _unescape_monitor(traffic: bytes) -> bytes:
    """MONITOR's output with Redis's quoting undone (``\\xNN`` and the C escapes), so binary
    values (a raw data key in a cache entry) can be searched in their own bytes."""

    def one(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        if escape.startswith(b"x"):
            return bytes([int(escape[1:], 16)])
        return _MONITOR_SINGLE[escape]

    return _MONITOR_ESCAPE.sub(one, traffic)


def _message_bodies(traffic: bytes) -> list[bytes]:
    """The decoded bodies of the Celery messages in the traffic (task arguments and results)."""
    bodies = []
    for match in re.finditer(rb'\\"body\\": \\"([A-Za-z0-9+/=]+)\\"', traffic):
        bodies.append(base64.b64decode(match.group(1)))
    return bodies


def _marker(what: str) -> str:
    """A distinctive secret for this run (letters and digits, so it passes any validator)."""
    return f"CvMarker{what}{uuid.uuid4().hex}"


class Instance:
    """``manage.py serve`` with its keystore under a passphrase, and the ``manage.py`` of the
    operator beside it (same data directory, database and backends)."""

    def __init__(
        self, data_dir: Path, *, env: dict[str, str] | None = None, backends: dict[str, Any]
    ) -> None:
        self.data_dir = data_dir
        self.passphrase = _marker("Passphrase")
        (data_dir / "keystore").mkdir(parents=True, mode=0o700)
        self.local_options = {
            "PATH": str(data_dir / "keystore" / "keys.json"),
            "PASSPHRASE": self.passphrase,
        }
        configured = {
            "local": {
                "BACKEND": "kms_plugins.local.LocalKeyBackend",
                "OPTIONS": self.local_options,
            },
            **backends,
        }
        self.env = {
            "VAULT_KEY_BACKENDS": json.dumps(configured),
            "VAULT_SIGNING_BACKEND": "local",
            "VAULT_OBJECT_RETENTION_DAYS": "0",
            **(env or {}),
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Server(data_dir, self.port, self.env)
        self.token = self.server.token()
        self.server.wait_ready()

    def manage(self, *args: str) -> str:
        """Run an operator command; its standard output (the operator's terminal, not a log)."""
        environment = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")
        }
        environment.update({"VAULT_DATA_DIR": str(self.data_dir), **self.env})
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def password(self) -> str:
        match = next(m for line in self.server.lines if (m := re.match(r"^Password: (\S+)", line)))
        return match.group(1)

    def api(
        self, method: str, path: str, token: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310 (http on loopback)
            f"{self.url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def log(self) -> bytes:
        """Everything the server wrote, less the two lines ``serve`` prints for its operator."""
        kept = [line for line in self.server.lines if not line.startswith(PRINTED_ON_PURPOSE)]
        return "\n".join(kept).encode()


class Browser:
    """A cookie-keeping HTTP client for the console's forms (CSRF token from each form)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str) -> tuple[str, str]:
        """The page's final URL (after redirects) and its HTML."""
        with self.opener.open(url, timeout=30) as response:
            return response.geturl(), response.read().decode()

    def submit(self, url: str, fields: dict[str, str]) -> tuple[str, str]:
        """GET the form at ``url``, then POST ``fields`` with its CSRF token."""
        final, page = self.get(url)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, f"no form at {final}"
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), **fields}).encode()
        with self.opener.open(final, data=data, timeout=30) as response:
            return response.geturl(), response.read().decode()

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name and c.value)


def _people_and_tokens(instance: Instance, scan: Scan) -> None:
    """Passwords, a set-up link, a console session and API tokens of every origin, each used."""
    scan.plant("token", "the printed demo API token", instance.token)
    scan.plant("password", "the printed demo owner password", instance.password())
    status, made = instance.api(
        "POST", "/api/v1/tokens/", instance.token, {"name": "scan", "role": "member"}
    )
    assert status == 201, made
    scan.plant("token", "an API token made through the API", made["token"])
    integration = instance.manage("token_create", "--tenant", "demo", "--role", "auditor")
    scan.plant("token", "a token made by manage.py token_create", integration.strip())
    for token in (made["token"], integration.strip()):
        assert instance.api("GET", "/api/v1/tenant/", token)[0] == 200

    email = f"member-{uuid.uuid4().hex[:8]}@demo.example"
    added = instance.manage(
        "member_add", "--tenant", "demo", "--email", email, "--role", "member",
        "--base-url", instance.url,
    )  # fmt: skip
    link = next(line for line in added.splitlines() if "/set-password/" in line)
    scan.plant("set-up token", "the set-up link's token", link.rstrip("/").rsplit("/", 1)[1])
    password = _marker("Password1")
    scan.plant("password", "the password chosen through the set-up link", password)
    browser = Browser(instance.url)
    landed, _ = browser.submit(link, {"new_password1": password, "new_password2": password})
    assert landed.endswith("/console/login/"), landed
    landed, _ = browser.submit(
        f"{instance.url}/console/login/", {"email": email, "password": password}
    )
    assert "/console/login/" in landed, "signed in: on to the second factor"
    assert landed.rstrip("/") != f"{instance.url}/console/login", "signed in"
    scan.plant("session id", "the console session id", browser.cookie("sessionid"))


@dataclass
class Client:
    """``cvault`` with its own local keystore under a passphrase, and what it stored."""

    cvault: Cvault
    config_dir: Path
    name: str
    content: bytes


def _objects(instance: Instance, base: Path, scan: Scan, *, token: str | None = None) -> Client:
    """Uploads in both modes, whole and in parts, a deletion; each read back."""
    base.mkdir(parents=True)
    cvault = Cvault(base / "config", base)
    cvault.ok("login", "--url", instance.url, "--token", token or instance.token)
    passphrase = _marker("ClientPassphrase")
    scan.plant("passphrase", "the cvault keystore passphrase", passphrase)
    (base / "passphrase").write_text(passphrase + "\n")
    cvault.ok("key", "init", "--backend", "local", "--passphrase-file", str(base / "passphrase"))
    name = f"reports/{_marker('Name')}.pdf"
    scan.plant("plaintext", "the client-side object's real name", name)
    content = MARKER * (160_000 if TORTURE else 40_000)
    scan.plant("plaintext", "the plaintext marker", MARKER)
    source = base / "secret.txt"
    source.write_bytes(content)
    parts = {"CVAULT_PART_SIZE": str(256 * 1024)}
    cvault.ok("put", str(source), name, env=parts)
    cvault.ok("put", "--gateway", str(source), "gateway-copy", env=parts)
    if TORTURE:  # second versions, each in one request
        cvault.ok("put", str(source), name)
        cvault.ok("put", "--gateway", str(source), "gateway-copy")
    cvault.ok("put", "--gateway", str(source), "deleted-copy")
    cvault.ok("rm", "--gateway", "deleted-copy")
    assert cvault.ok("cat", name).out == content
    assert cvault.ok("cat", "--gateway", "gateway-copy").out == content
    return Client(cvault, base / "config", name, content)


# --- recovering the data keys ---------------------------------------------------------------


def _headers(blob: bytes) -> Iterator[EnvelopeHeader]:
    """Every well-formed envelope header that starts anywhere in ``blob``."""
    start = blob.find(MAGIC)
    while start != -1:
        with contextlib.suppress(EnvelopeError, ValueError):
            yield read_header(io.BytesIO(blob[start : start + MAX_HEADER_SIZE]))[0]
        start = blob.find(MAGIC, start + 1)


def _recover_deks(
    scan: Scan, backends: list[KeyBackend], clients: list[Client]
) -> dict[bytes, EnvelopeHeader]:
    """The DEK of every envelope header found in the scanned places, unwrapped with the keys the
    test holds and checked against the header's key commitment; each is planted as a secret."""
    keyrings = [(KeyRing.load(c.config_dir), c.name) for c in clients]
    found: dict[bytes, EnvelopeHeader] = {}
    seen: set[bytes] = set()
    for blobs in list(scan.places.values()):
        for blob in blobs:
            for header in _headers(blob):
                if header.to_bytes() in seen:
                    continue
                seen.add(header.to_bytes())
                for dek in _unwraps(header, backends, keyrings):
                    header.verify_dek(dek)  # the very key that encrypted the data
                    found[dek] = header
    for keyring, _ in keyrings:
        scan.plant("dek", "cvault's name secret", keyring.name_secret())
        keyring.close()
    for number, dek in enumerate(found, 1):
        scan.plant("dek", f"data key {number} ({found[dek].context})", dek)
    return found


def _unwraps(
    header: EnvelopeHeader, backends: list[KeyBackend], keyrings: list[tuple[KeyRing, str]]
) -> Iterator[bytes]:
    for stanza in header.stanzas:
        for backend in backends:
            with contextlib.suppress(KeyBackendError):
                yield backend.unwrap(stanza, header.context)
    for keyring, name in keyrings:
        binding = name_binding(keyring.names().encrypt(name))
        with contextlib.suppress(ClientError):
            yield keyring.unwrap(header, {**header.context, NAME_BINDING_KEY: binding})


def _data_dir(scan: Scan, data_dir: Path, *, database: bool = True) -> None:
    """Every file of the data directory, by place."""
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(data_dir).parts
        if relative[0].startswith("vault.sqlite3"):
            assert database, path
            place = "database"
        elif relative[0] in ("storage", "keystore"):
            place = relative[0]
        else:
            place = "data directory, other files"
        scan.add(place, path.read_bytes())


def _live_headers_sqlite(data_dir: Path) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(data_dir / "vault.sqlite3")) as connection:
        return [bytes(h) for (h,) in connection.execute(_LIVE_HEADERS)]


_LIVE_HEADERS = (
    "SELECT v.header FROM objects_objectversion v JOIN objects_storedobject o "
    "ON v.object_id = o.id WHERE o.deleted_at IS NULL AND v.blob_id IS NULL"
)


def _check_every_version_key_found(found: dict[bytes, EnvelopeHeader], live: list[bytes]) -> None:
    recovered = {h.to_bytes() for h in found.values()}
    assert live, "the run stored versions"
    for header in live:
        assert header in recovered, "the data key of every live version is searched for"


# --- the runs -------------------------------------------------------------------------------


def test_no_planted_secret_is_anywhere_while_the_data_exists(tmp_path: Path) -> None:
    """SQLite, no Redis: the embedded default with a passphrase keystore."""
    scan = Scan()
    instance = Instance(tmp_path / "server", backends={})
    scan.plant("passphrase", "the server keystore passphrase", instance.passphrase)
    try:
        _people_and_tokens(instance, scan)
        client = _objects(instance, tmp_path / "client", scan)
        _data_dir(scan, instance.data_dir)  # while the server runs: the WAL is still there
    finally:
        instance.server.stop()
    scan.add("server log", instance.log())
    server_keys = LocalKeyBackend("local", instance.local_options)
    found = _recover_deks(scan, [server_keys], [client])
    server_keys.close()
    _check_every_version_key_found(found, _live_headers_sqlite(instance.data_dir))
    assert len(found) >= 4, "both modes' versions (and the gateway parts') keys were recovered"
    scan.assert_clean("sqlite")


@pytest.mark.redis
def test_the_marker_never_crosses_the_task_queue(tmp_path: Path) -> None:
    """With Redis as broker, cache and result store: uploads in both modes (one resumable, in
    parts), reads, a deletion and the objects' jobs run by a real worker through the queue; then
    every planted secret, not only the plaintext, is looked for in everything that crossed it."""
    redis_url = os.environ["REDIS_URL"]
    monitor = _RedisMonitor(redis_url)
    data_dir = tmp_path / "server"
    queue = f"marker-{uuid.uuid4().hex}"
    scan = Scan()
    worker: subprocess.Popen[bytes] | None = None
    instance: Instance | None = None
    try:
        instance = Instance(data_dir, env={"REDIS_URL": redis_url}, backends={})
        scan.plant("passphrase", "the server keystore passphrase", instance.passphrase)
        worker_env = {
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            **instance.env,
            "VAULT_DATA_DIR": str(data_dir),
        }
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "vault", "worker", "--pool=solo"),
                *("-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat"),
                "--loglevel=INFO",
            ],
            cwd=ROOT,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        _people_and_tokens(instance, scan)
        client = _objects(instance, tmp_path / "client", scan)
        # The objects' scheduled jobs, sent through Redis to the worker, results back the same way.
        from celery import current_app

        for name in (
            "vault.objects.purge_deleted",
            "vault.objects.sweep_orphans",
            "vault.objects.purge_expired_uploads",
        ):
            result = current_app.send_task(name, queue=queue)
            assert isinstance(result.get(timeout=60), int), name
        # The data still exists and reads back.
        assert client.cvault.ok("cat", "--gateway", "gateway-copy").out == client.content
        _data_dir(scan, data_dir)
    finally:
        if instance is not None:
            instance.server.stop()
        worker_log = b""
        if worker is not None:
            worker.terminate()
            worker_log, _ = worker.communicate(timeout=30)
        traffic = monitor.close()
    assert b"vault.objects.purge_deleted" in traffic, "the jobs crossed the queue"
    bodies = _message_bodies(traffic)
    assert bodies, "the messages' bodies were captured"
    scan.add("redis commands (MONITOR)", traffic)
    scan.add("redis commands (MONITOR, escapes undone)", _unescape_monitor(traffic))
    for body in bodies:
        scan.add("celery message bodies (decoded)", body)
    scan.add("worker log", worker_log)
    scan.add("server log", instance.log())
    server_keys = LocalKeyBackend("local", instance.local_options)
    found = _recover_deks(scan, [server_keys], [client])
    server_keys.close()
    _check_every_version_key_found(found, _live_headers_sqlite(data_dir))
    scan.assert_clean("redis")


@contextlib.contextmanager
def _postgres_database() -> Iterator[tuple[str, Callable[[], Any]]]:
    """A fresh database on the PostgreSQL server of ``DATABASE_URL``, dropped afterwards.

    Yields its URL and a function that opens a connection to it.
    """
    import dj_database_url
    import psycopg

    params = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = f"secrets_scan_{uuid.uuid4().hex[:12]}"

    def connect(dbname: str) -> Any:
        return psycopg.connect(
            host=params["HOST"] or None,
            port=params["PORT"] or None,
            user=params["USER"] or None,
            password=params["PASSWORD"] or None,
            dbname=dbname,
            autocommit=True,
        )

    with contextlib.closing(connect("postgres")) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()
    try:
        yield url, lambda: connect(name)
    finally:
        with contextlib.closing(connect("postgres")) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres_dump(connection: Any) -> bytes:
    """Every value of every row of every table of the public schema, bytes as they are stored."""
    out = bytearray()
    tables = connection.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    ).fetchall()
    for (table,) in tables:
        for row in connection.execute(f'SELECT * FROM "{table}"'):  # noqa: S608
            for value in row:
                if isinstance(value, bytes | bytearray | memoryview):
                    out += bytes(value)
                elif value is not None:
                    out += str(value).encode()
                out += b"\x1f"
            out += b"\n"
    return bytes(out)


@pytest.mark.postgres
def test_no_planted_secret_is_in_postgresql_while_the_data_exists(tmp_path: Path) -> None:
    """The same run on PostgreSQL: every row of every table is searched, with the data
    directory (storage, keystore) and the server's output."""
    scan = Scan()
    with _postgres_database() as (url, connect):
        instance = Instance(tmp_path / "server", env={"DATABASE_URL": url}, backends={})
        scan.plant("passphrase", "the server keystore passphrase", instance.passphrase)
        try:
            _people_and_tokens(instance, scan)
            client = _objects(instance, tmp_path / "client", scan)
        finally:
            instance.server.stop()
        _data_dir(scan, instance.data_dir, database=False)
        scan.add("server log", instance.log())
        with contextlib.closing(connect()) as connection:
            scan.add("database", _postgres_dump(connection))
            live = [bytes(h) for (h,) in connection.execute(_LIVE_HEADERS)]
        server_keys = LocalKeyBackend("local", instance.local_options)
        found = _recover_deks(scan, [server_keys], [client])
        server_keys.close()
        _check_every_version_key_found(found, live)
        scan.assert_clean("postgresql")


@pytest.mark.softhsm
def test_no_hsm_pin_or_data_key_is_anywhere_while_the_data_exists(tmp_path: Path) -> None:
    """A tenant whose primary key is on a SoftHSM2 token (the PIN given inline in the server's
    backend options) and whose recovery key is in the local keystore: neither PIN, nor any data
    key, nor the rest is found on the server side."""
    from kms_plugins.testing.softhsm import session_harness

    scan = Scan()
    with session_harness(tmp_path / "softhsm") as harness:
        token = harness.token
        scan.plant("pin", "the SoftHSM user PIN", token.pin)
        scan.plant("pin", "the SoftHSM SO PIN", token.so_pin)
        options = {"MODULE": token.options()["MODULE"], "TOKEN_LABEL": token.label}
        hsm: dict[str, Any] = {
            "BACKEND": "kms_plugins.pkcs11.Pkcs11KeyBackend",
            "OPTIONS": {**options, "PIN": token.pin},
        }
        instance = Instance(tmp_path / "server", backends={"hsm": hsm})
        scan.plant("passphrase", "the server keystore passphrase", instance.passphrase)
        try:
            instance.manage("tenant_create", "hsm-tenant")
            instance.manage(
                "tenant_bind_backend", "--tenant", "hsm-tenant",
                "--backend", "hsm", "--recovery-backend", "local",
            )  # fmt: skip
            owner = instance.manage("token_create", "--tenant", "hsm-tenant", "--role", "owner")
            scan.plant("token", "the HSM tenant's token", owner.strip())
            client = _objects(instance, tmp_path / "client", scan, token=owner.strip())
            _data_dir(scan, instance.data_dir)
        finally:
            instance.server.stop()
        scan.add("server log", instance.log())
        server_keys = LocalKeyBackend("local", instance.local_options)
        found = _recover_deks(scan, [harness.backend, server_keys], [client])
        server_keys.close()
    _check_every_version_key_found(found, _live_headers_sqlite(instance.data_dir))
    on_hsm = [h for h in found.values() if any(s.backend == "pkcs11" for s in h.stanzas)]
    assert on_hsm, "the gateway versions' keys were wrapped by the HSM and recovered through it"
    scan.assert_clean("softhsm")


def test_the_redis_capture_is_searched_in_its_own_bytes() -> None:
    """A binary value as MONITOR prints it (quoted, ``\\xNN`` escapes) is found once unescaped."""
    secret = bytes(range(256))
    quoted = b"".join(
        b"\\\\"
        if byte == 0x5C
        else b'\\"'
        if byte == 0x22
        else bytes([byte])
        if 0x20 <= byte < 0x7F
        else b"\\x%02x" % byte
        for byte in secret
    )
    line = b'1764250000.000000 [0 127.0.0.1:5000] "SET" "k" "' + quoted + b'"\r\n'
    assert secret not in line
    assert secret in _unescape_monitor(line)
