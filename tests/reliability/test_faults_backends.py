"""Key-backend outages through the REST API, with the real components (issue 9, item 1).

Each case binds a tenant to one real backend (a SoftHSM2 token, swtpm, a PyKMIP server), stores
objects through the API (single-request gateway uploads and a resumable upload left half-way),
then takes the component away by acting on the real process or resource:

* ``pkcs11-token-moved``: the token's directory (SoftHSM's token store) is renamed away (SoftHSM
  is a library in the vault's process: there is no process of its own to stop or freeze);
* ``tpm-stopped``: swtpm is stopped (SIGTERM) and started again with its state;
* ``*-frozen-mid-request``: the component's process group is frozen (SIGSTOP), a request is
  sent (for KMIP on the vault's established TLS connection), and it must come back as a 503
  once the backend's TIMEOUT has passed; the component is thawed afterwards;
* ``*-killed-mid-request``: the same, but once the request's bytes sit unread in the frozen
  component's socket the group is killed (SIGKILL), as a crash in the middle of the request
  would; the component is started again on its state (swtpm's state directory, PyKMIP's
  database).

During the outage every request that needs the tenant's key answers 503 with the one error
shape, the stable code ``key_backend_unavailable`` and ``Retry-After``, within the backend's
TIMEOUT (a watchdog breaks and fails a request that hangs); nothing partial appears (no version
row, no stored file, the object list and the upload session as before); key health reports the
backend down without suspending the tenant's key. After the component returns, with the same
backend instance in the vault process (no restart, no manual step), writes and reads succeed
again and everything stored before reads back byte for byte.

A second test covers the one write that needs the backend again after bytes were written (a
deduplicating tenant's upload: spool first, then the deduplication key): the component goes
away as soon as the spool file appears, and the spool must be gone when the 503 is answered.

``VAULT_TORTURE=1`` repeats the outage cycle several times per case, sends every request during
frozen outages too, spools more, and adds the KMIP case of the second test.
"""

# mypy: disable-error-code="attr-defined"

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from kms_plugins.base import KeyBackend
from kms_plugins.testing import BackendHarness
from tests.factories import make_membership
from vault.keys.models import KeyBinding, KeyRole
from vault.keys.registry import key_backend
from vault.keys.services import keys_health_check
from vault.objects.models import Blob, ObjectVersion
from vault.tenants.models import Role, Tenant
from vault.tenants.services import tenant_update
from vault.tokens.services import token_create

pytestmark = pytest.mark.django_db

TORTURE = os.environ.get("VAULT_TORTURE") == "1"
#: Outage cycles per case: one in CI, several under ``make torture``.
ROUNDS = 3 if TORTURE else 1
#: How long the vault may take to serve again once the component is back (polled, not timed).
RECOVERY_SECONDS = 45.0
ALIAS = "customer"
UNAVAILABLE = "key_backend_unavailable"

COMPONENTS = {
    "pkcs11": ("kms_plugins.testing.softhsm", "softhsm"),
    "tpm": ("kms_plugins.testing.swtpm", "tpm"),
    "kmip": ("kms_plugins.testing.kmip_server", "kmip"),
}
# (backend kind, how the component goes away, the request sent as it goes: "put", "get", None)
CASES = [
    ("pkcs11", "token-moved", None),
    ("tpm", "stopped", None),
    ("tpm", "frozen-mid-request", "put"),
    ("tpm", "killed-mid-request", "get"),
    ("kmip", "killed-mid-request", "put"),
    ("kmip", "frozen-mid-request", "get"),
]


@pytest.fixture(scope="module")
def faults_backend_harnesses(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], BackendHarness]]:
    """The real component of a backend kind, started on first use and kept for the module."""
    with contextlib.ExitStack() as stack:
        made: dict[str, BackendHarness] = {}

        def get(kind: str) -> BackendHarness:
            if kind not in made:
                module = importlib.import_module(COMPONENTS[kind][0])
                reason = module.available()
                if reason is not None:
                    pytest.skip(f"[{COMPONENTS[kind][1]}] {reason}")
                made[kind] = stack.enter_context(
                    module.session_harness(tmp_path_factory.mktemp(f"faults-{kind}"))
                )
            return made[kind]

        yield get


# -- the vault side -------------------------------------------------------------------------------


@dataclass
class _Vault:
    """A tenant bound to the backend under test, its API client and what it stored."""

    kind: str
    tenant: Tenant
    client: APIClient
    backend: KeyBackend
    #: (object id, version number) -> plaintext, for everything stored so far.
    stored: dict[tuple[int, int], bytes] = field(default_factory=dict)
    growing: int = 0  # an object that gets a new version in every round
    empty: int = 0  # an object with no version yet
    upload: str = ""  # a resumable upload with its first part sent
    upload_object: int = 0
    upload_data: bytes = b""
    upload_cut: int = 0


def _vault_on(kind: str, harness: BackendHarness, settings: Any) -> _Vault:
    settings.VAULT_KEY_BACKENDS = {
        **settings.VAULT_KEY_BACKENDS,
        ALIAS: {"BACKEND": kind, "OPTIONS": dict(harness.backend._options)},
    }
    membership = make_membership(role=Role.MEMBER)
    tenant = membership.tenant
    call_command(
        "tenant_bind_backend", "--tenant", tenant.slug, "--backend", ALIAS, stdout=StringIO()
    )
    issued = token_create(tenant=tenant, name="t", role=Role.MEMBER, user=membership.user)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.clear}")
    return _Vault(kind=kind, tenant=tenant, client=client, backend=key_backend(ALIAS))


def _create(vault: _Vault, name: str) -> int:
    response = vault.client.post("/api/v1/objects/", {"name": name}, format="json")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def _put(vault: _Vault, object_id: int, data: bytes) -> Any:
    return vault.client.put(
        f"/api/v1/objects/{object_id}/content/",
        data,
        content_type="application/octet-stream",
        CONTENT_LENGTH=str(len(data)),
    )


def _get(vault: _Vault, object_id: int, version: int | None = None) -> tuple[Any, bytes]:
    query = f"?version={version}" if version is not None else ""
    response = vault.client.get(f"/api/v1/objects/{object_id}/content/{query}")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def _part(vault: _Vault, offset: int, data: bytes) -> Any:
    return vault.client.put(
        f"/api/v1/uploads/{vault.upload}/parts/{offset}/",
        data,
        content_type="application/octet-stream",
        CONTENT_LENGTH=str(len(data)),
    )


def _store(vault: _Vault, object_id: int, data: bytes) -> None:
    response = _put(vault, object_id, data)
    assert response.status_code == 201, response.content
    vault.stored[(object_id, response.json()["number"])] = data


def _seed(vault: _Vault) -> None:
    """Objects of several shapes, stored before any outage."""
    vault.growing = _create(vault, "growing")
    _store(vault, vault.growing, os.urandom(70_000))
    _store(vault, vault.growing, b"x")  # a second version
    _store(vault, _create(vault, "multi-segment"), os.urandom(200_001))
    _store(vault, _create(vault, "empty-content"), b"")
    vault.empty = _create(vault, "no-version-yet")
    _open_upload(vault)


def _open_upload(vault: _Vault) -> None:
    vault.upload_object = _create(vault, f"resumable-{len(vault.stored)}")
    vault.upload_data = os.urandom(120_000)
    vault.upload_cut = 50_000
    opened = vault.client.post(
        "/api/v1/uploads/",
        {"object": vault.upload_object, "length": len(vault.upload_data)},
        format="json",
    )
    assert opened.status_code == 201, opened.content
    vault.upload = opened.json()["id"]
    first = _part(vault, 0, vault.upload_data[: vault.upload_cut])
    assert first.status_code == 200, first.content
    assert first.json()["offset"] == vault.upload_cut


def _names() -> set[str]:
    """The names of the files in the object store (cheap enough to poll)."""
    root = storages["default"].location
    return {
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _, names in os.walk(root)
        for name in names
    }


def _files() -> dict[str, str]:
    """Every file in the object store, by name, with its SHA-256."""
    root = Path(storages["default"].location)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in root.rglob("*")
        if path.is_file()
    }


def _snapshot(vault: _Vault) -> dict[str, Any]:
    """What a partial write could change: rows, files, and what the API lists."""
    listing = vault.client.get("/api/v1/objects/?page_size=100")
    assert listing.status_code == 200
    upload = vault.client.get(f"/api/v1/uploads/{vault.upload}/")
    assert upload.status_code == 200
    return {
        "versions": sorted(
            ObjectVersion.objects.filter(object__tenant=vault.tenant).values_list(
                "pk", "object_id", "number", "storage_name", "size"
            )
        ),
        "blobs": sorted(
            Blob.objects.filter(tenant=vault.tenant).values_list("pk", "storage_name", "size")
        ),
        "files": _files(),
        "listing": listing.json(),
        "upload": upload.json(),
    }


# -- the outage -----------------------------------------------------------------------------------


@dataclass
class _Down:
    """An outage in progress: where a request reaches the component, and what to do then."""

    #: The component's TCP port whose unread bytes show a request has arrived (None: in-process).
    port: int | None = None
    #: Called once the request has arrived (kills the frozen server, for a kill mid-request).
    on_arrival: Callable[[], None] | None = None
    #: Breaks a request that hangs beyond the watchdog (kills the component).
    unblock: Callable[[], None] | None = None


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _down(harness: Any, outage: str) -> Iterator[_Down]:
    """Take the real component away (see the module docstring); bring it back on exit."""
    if outage == "token-moved":
        with harness.outage("move"):
            yield _Down()
    elif outage == "stopped":
        with harness.outage("stop"):
            yield _Down()
    elif harness.name == "tpm":
        yield from _process_down(
            harness.swtpm.pid,
            harness.swtpm.port,
            kill=outage == "killed-mid-request",
            restart=lambda: (harness.swtpm.stop(), harness.swtpm.start()),
            thaw=harness.swtpm.thaw,
            wait=harness._wait_until_answering,
        )
    elif harness.name == "kmip":
        server = harness.server
        yield from _process_down(
            server.process.pid,
            server.port,
            kill=outage == "killed-mid-request",
            restart=lambda: (server.kill(), server.start()),
            thaw=lambda: server.signal_group(signal.SIGCONT),
            wait=harness._wait_answering,
        )
    else:
        raise AssertionError(outage)


def _process_down(
    pid: int,
    port: int,
    *,
    kill: bool,
    restart: Callable[[], object],
    thaw: Callable[[], object],
    wait: Callable[[], object],
) -> Iterator[_Down]:
    """Freeze the component's process group; kill it once a request arrives if ``kill``.

    On exit: a killed component is started again on its state (``restart`` reaps the old
    process first), a frozen one is thawed; then wait until the harness's backend answers.
    """
    os.killpg(pid, signal.SIGSTOP)
    killed = threading.Event()

    def kill_now() -> None:
        killed.set()
        _killpg(pid)

    try:
        yield _Down(port=port, on_arrival=kill_now if kill else None, unblock=kill_now)
    finally:
        if killed.is_set():
            restart()
        else:
            thaw()
        wait()


def _unread_bytes(port: int) -> int:
    """Bytes received and not yet read by the sockets listening on ``port`` (their peers' end).

    A frozen process reads nothing: bytes queued there are a request that has reached it.
    """
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                state = fields[3]
                if local_port == port and state in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                    total += int(fields[4].split(":")[1], 16)
    return total


def _in_flight(down: _Down, send: Callable[[], Any], limit: float) -> tuple[Any, bool]:
    """Send a request to the frozen component; note when it arrives; break it if it hangs.

    Returns:
        The response, and whether the request's bytes reached the component. Fails the test if
        the request had to be broken after ``limit`` seconds (a hang, not a 503).
    """
    assert down.port is not None
    done = threading.Event()
    seen = {"arrived": False, "hung": False}

    def watch() -> None:
        deadline = time.monotonic() + limit
        while not done.wait(0.005):
            if not seen["arrived"] and _unread_bytes(down.port) > 0:  # type: ignore[arg-type]
                seen["arrived"] = True
                if down.on_arrival is not None:
                    down.on_arrival()
            if time.monotonic() > deadline:
                seen["hung"] = True
                if down.unblock is not None:
                    down.unblock()
                return

    watcher = threading.Thread(target=watch, name="faults-backend-watch", daemon=True)
    watcher.start()
    try:
        response = send()
    finally:
        done.set()
        watcher.join()
    assert not seen["hung"], f"the request hung for more than {limit:.0f} s instead of failing"
    return response, seen["arrived"]


# -- what must hold -------------------------------------------------------------------------------


def _assert_unavailable(response: Any, harness: BackendHarness) -> None:
    """A clear 503: the one error shape, the stable code, Retry-After, no secret in it."""
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "status", "request_id"}, error
    assert error["code"] == UNAVAILABLE
    assert error["status"] == 503
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]
    assert int(response["Retry-After"]) > 0
    for secret in harness.secrets:
        assert secret.encode() not in response.content


def _assert_fails_closed(vault: _Vault, harness: BackendHarness, *, thorough: bool) -> None:
    """Every request that needs the tenant's key answers 503; metadata still answers.

    ``thorough``: also a new version, a first version, a read and an upload's last part (each
    of which waits out the backend's TIMEOUT against a frozen component, so the CI size leaves
    them to the cases where they fail at once, and to the request sent as the component froze).
    """
    if thorough:
        _assert_unavailable(_put(vault, vault.growing, b"a new version, refused"), harness)
        _assert_unavailable(_put(vault, vault.empty, b"a first version, refused"), harness)
        (object_id, number), _ = next(iter(vault.stored.items()))
        _assert_unavailable(_get(vault, object_id, number)[0], harness)
        rest = vault.upload_data[vault.upload_cut :]
        _assert_unavailable(_part(vault, vault.upload_cut, rest), harness)
    session = vault.client.get(f"/api/v1/uploads/{vault.upload}/").json()
    assert (session["offset"], session["complete"]) == (vault.upload_cut, False)
    # Metadata needs no key: listing still answers (and is compared with the snapshot).
    assert vault.client.get("/api/v1/objects/").status_code == 200
    # The process stays ready: a key backend belongs to its tenants, not to every request.
    assert vault.client.get("/readyz").status_code == 200
    # Key health reports the backend down; an outage is not a substitution: nothing suspended.
    out = StringIO()
    with pytest.raises(CommandError, match="unhealthy"):
        call_command("key_backends", stdout=out)
    assert f"{ALIAS}: {vault.kind}" in out.getvalue()
    assert "UNHEALTHY" in next(
        line for line in out.getvalue().splitlines() if line.startswith(f"{ALIAS}:")
    )
    problems = {binding.pk for binding, _ in keys_health_check()}
    if vault.kind != "tpm":
        # The TPM backend describes keys from its state files without reaching the TPM, so the
        # scheduled check cannot see a TPM outage (``key_backends`` above does).
        primary = KeyBinding.objects.get(tenant=vault.tenant, role=KeyRole.PRIMARY)
        assert primary.pk in problems
    assert not KeyBinding.objects.filter(tenant=vault.tenant, suspended_at__isnull=False).exists()


def _wait_until_served(vault: _Vault) -> None:
    """Poll a write until it succeeds; each refused attempt must have stored nothing."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    data = os.urandom(30_000)
    while True:
        before = ObjectVersion.objects.filter(object_id=vault.growing).count()
        response = _put(vault, vault.growing, data)
        if response.status_code == 201:
            vault.stored[(vault.growing, response.json()["number"])] = data
            return
        assert response.status_code == 503, response.content
        assert response.json()["error"]["code"] == UNAVAILABLE
        assert ObjectVersion.objects.filter(object_id=vault.growing).count() == before
        assert time.monotonic() < deadline, "the vault did not serve again after the outage"
        time.sleep(0.5)


def _assert_recovered(vault: _Vault) -> None:
    """Writes and reads succeed again; everything stored reads back; no file is orphaned."""
    _wait_until_served(vault)
    _store(vault, vault.empty, b"the first version, after the outage")
    finished = _part(vault, vault.upload_cut, vault.upload_data[vault.upload_cut :])
    assert finished.status_code == 200, finished.content
    assert finished.json()["complete"] is True
    vault.stored[(vault.upload_object, finished.json()["version"]["number"])] = vault.upload_data
    for (object_id, number), data in vault.stored.items():
        response, body = _get(vault, object_id, number)
        assert response.status_code == 200, (object_id, number, response.content)
        assert body == data, (object_id, number)
    names = set(
        ObjectVersion.objects.filter(object__tenant=vault.tenant).values_list(
            "storage_name", flat=True
        )
    ) | set(Blob.objects.filter(tenant=vault.tenant).values_list("storage_name", flat=True))
    names.discard("")  # a deduplicated version's body is its blob's
    assert set(_files()) == names, "every stored file is a body or a blob, and nothing else"
    health = StringIO()
    call_command("key_backends", stdout=health)
    assert f"{ALIAS}: {vault.kind}" in health.getvalue()
    # The same backend instance served throughout: nothing on the vault side was restarted.
    assert key_backend(ALIAS) is vault.backend


def _first(vault: _Vault, request: str) -> Any:
    """The request sent while the component is frozen: a read or a new version."""
    if request == "get":
        object_id, number = next(iter(vault.stored))
        return _get(vault, object_id, number)[0]
    return _put(vault, vault.growing, b"in flight")


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "outage", "in_flight"),
    [
        pytest.param(
            kind,
            outage,
            in_flight,
            marks=getattr(pytest.mark, COMPONENTS[kind][1]),
            id=f"{kind}-{outage}",
        )
        for kind, outage, in_flight in CASES
    ],
)
def test_a_key_backend_outage_answers_503_loses_nothing_and_service_resumes(
    kind: str,
    outage: str,
    in_flight: str | None,
    faults_backend_harnesses: Callable[[str], BackendHarness],
    settings: Any,
) -> None:
    harness = faults_backend_harnesses(kind)
    vault = _vault_on(kind, harness, settings)
    _seed(vault)
    limit = vault.backend.timeout * 3 + 30
    for _ in range(ROUNDS):
        before = _snapshot(vault)
        with _down(harness, outage) as down:
            if in_flight is not None:
                # The first request meets the frozen component; it must come back as a 503.
                response, arrived = _in_flight(down, lambda: _first(vault, in_flight), limit)
                assert arrived, "the request reached the component before it failed"
                _assert_unavailable(response, harness)
            _assert_fails_closed(vault, harness, thorough=TORTURE or in_flight is None)
            assert _snapshot(vault) == before, "nothing partial is visible during the outage"
        assert _snapshot(vault) == before, "nothing partial is visible after the outage"
        _assert_recovered(vault)
        _open_upload(vault)  # a half-done upload for the next round


# -- a backend lost between two calls of one request ----------------------------------------------

#: A body big enough that spooling it takes far longer than the watcher's reaction.
SPOOLED_BYTES = (64 if TORTURE else 16) * 1024 * 1024
#: KMIP's restart takes seconds and its kill is also covered mid-request above: torture only.
LOST_CASES = [("pkcs11", "token-moved"), ("tpm", "killed")] + (
    [("kmip", "killed")] if TORTURE else []
)


@contextlib.contextmanager
def _lost_once_spooling(harness: Any, known: set[str]) -> Iterator[dict[str, bool]]:
    """Take the component away as soon as a new file appears in the object store.

    A deduplicating tenant's upload first wraps a spool key (one backend call), then writes the
    encrypted body to a spool file, then needs the backend again (the deduplication key): the
    file's appearance means the first call is done and the next is yet to come. On exit, the
    component is brought back (started again on its state after a kill) and answers.
    """
    done = threading.Event()
    seen = {"fired": False}
    moved = contextlib.ExitStack()

    def take_away() -> None:
        if harness.name == "pkcs11":
            moved.enter_context(harness.outage("move"))
        elif harness.name == "tpm":
            _killpg(harness.swtpm.pid)
        else:
            _killpg(harness.server.process.pid)

    def watch() -> None:
        while not done.wait(0.002):
            if _names() - known:
                take_away()
                seen["fired"] = True
                return

    watcher = threading.Thread(target=watch, name="faults-backend-spool-watch", daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()
        if seen["fired"]:
            if harness.name == "pkcs11":
                moved.close()
            elif harness.name == "tpm":
                harness.swtpm.stop()
                harness.swtpm.start()
                harness._wait_until_answering()
            else:
                harness.server.kill()
                harness.server.start()
                harness._wait_answering()


@pytest.mark.parametrize(
    ("kind", "outage"),
    [
        pytest.param(
            kind, outage, marks=getattr(pytest.mark, COMPONENTS[kind][1]), id=f"{kind}-{outage}"
        )
        for kind, outage in LOST_CASES
    ],
)
def test_a_backend_lost_after_a_body_was_spooled_leaves_no_file_and_service_resumes(
    kind: str,
    outage: str,
    faults_backend_harnesses: Callable[[str], BackendHarness],
    settings: Any,
) -> None:
    harness = faults_backend_harnesses(kind)
    vault = _vault_on(kind, harness, settings)
    tenant_update(tenant=vault.tenant, deduplicate=True)
    _seed(vault)
    target = _create(vault, "spooled")
    data = os.urandom(SPOOLED_BYTES)
    before = _snapshot(vault)
    with _lost_once_spooling(harness, set(before["files"])) as seen:
        response = _put(vault, target, data)
        assert seen["fired"], f"the upload finished before the backend went ({response})"
        _assert_unavailable(response, harness)
        assert _snapshot(vault) == before, "the spooled body is gone, nothing else appeared"
    assert _snapshot(vault) == before
    _store(vault, target, data)
    _assert_recovered(vault)
