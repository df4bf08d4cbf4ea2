"""Backup and restore as ``docs/backup.md`` describes them, against real instances.

Each test runs ``manage.py serve`` in a subprocess on its own data directory (and, for PostgreSQL,
its own databases), fills it with several tenants' objects through the HTTP API, takes the backup
with the commands the document gives while the instance keeps serving, restores it into a fresh
directory (and a fresh database), starts a new instance from it and reads every version of every
object back byte for byte. The crypto-shred test restores a backup taken before a shred and shows
which backups a shred must reach. Nothing here uses the test database of pytest-django: the
instances are real processes with their own storage and key material.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from kms_plugins.testing.softhsm import _init_token
from kms_plugins.types import KeyRef, WrappedKey
from tests.core.helpers import free_port, wait_until
from vault.crypto import envelope

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "backup.md"
PYTHON = sys.executable

pytestmark = pytest.mark.slow

# The commands of docs/backup.md, word for word (a test checks that the document still says so).
SQLITE_BACKUP = (
    "import sqlite3, sys; src = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
    "dst = sqlite3.connect(sys.argv[2]); src.backup(dst); dst.close(); src.close()"
)
PG_DUMP = ["pg_dump", "--format=custom", "--no-owner", "--file"]
PG_RESTORE = ["pg_restore", "--no-owner", "--exit-on-error", "--dbname"]

# Run in the instance by ``manage.py shell``: tenants, people and their tokens, as an operator
# would set them up. The specification comes in BACKUP_SPEC; the tokens go out on one line.
SETUP_SCRIPT = """
import json, os
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from vault.keys.services import tenant_bind_backend
from vault.tenants.services import member_add, tenant_create, tenant_update
from vault.tokens.services import token_create
out = {}
for spec in json.loads(os.environ["BACKUP_SPEC"]):
    tenant = tenant_create(slug=spec["slug"])
    tenant_bind_backend(tenant=tenant, backend_alias=spec["backend"])
    if spec.get("deduplicate"):
        tenant_update(tenant=tenant, deduplicate=True)
    out[spec["slug"]] = {}
    for email, role in spec["people"].items():
        membership, _ = member_add(tenant=tenant, email=email, role=role)
        issued = token_create(tenant=tenant, name=email, role=role, user=membership.user)
        out[spec["slug"]][email] = issued.clear
print("BACKUP-TOKENS " + json.dumps(out))
"""


@dataclass
class _Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return str(self.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


class _Instance:
    """One Ciphervault: its data directory (SQLite, storage, keystore, secret key), optionally a
    PostgreSQL database and other key backends, and ``manage.py serve --no-demo`` once started.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        key_backends: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        dropped = ("DATABASE_URL", "REDIS_URL", "VAULT_KEY_BACKENDS", "VAULT_KEY_BACKENDS_FILE")
        self.env = {k: v for k, v in os.environ.items() if k not in dropped}
        self.env.update(
            {
                "VAULT_DATA_DIR": str(data_dir),
                "PYTHONUNBUFFERED": "1",
                "VAULT_SHRED_WAIT_DAYS": "0",
            }
        )
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if key_backends:
            self.env["VAULT_KEY_BACKENDS"] = json.dumps(key_backends)
        self.env.update(env or {})
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"

    def manage(
        self, *args: str, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py`` in this instance's environment."""
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def set_up(self, spec: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        """Create the tenants of ``spec`` (migrating first); return their people's tokens."""
        result = self.manage("shell", "--command", SETUP_SCRIPT, BACKUP_SPEC=json.dumps(spec))
        line = next(x for x in result.stdout.splitlines() if x.startswith("BACKUP-TOKENS "))
        tokens: dict[str, dict[str, str]] = json.loads(line.removeprefix("BACKUP-TOKENS "))
        return tokens

    def launch(self) -> None:
        """Start serving; ``wait_ready`` waits until it answers."""
        self.port = free_port()
        with self.log.open("a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [PYTHON, "manage.py", "serve", "--no-demo", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        def answering() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited:\n{self.log.read_text(encoding='utf-8')}")
            return self.call("GET", "/healthz").status == 200

        wait_until(answering, timeout=180, what="the instance to answer")

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        """Kill the server and its workers (a backup never depends on a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        data: bytes | None = None,
        payload: Any = None,
    ) -> _Response:
        """One HTTP request; ``payload`` is sent as JSON, ``data`` as raw bytes."""
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return _Response(response.status, response.read())
        except urllib.error.HTTPError as exc:
            return _Response(exc.code, exc.read())


@dataclass
class _Stored:
    """What the test stored, to compare every version with after the restore."""

    # (tenant slug, object id, version number) -> the plaintext (gateway) or envelope (client)
    versions: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    client: set[tuple[str, int, int]] = field(default_factory=set)  # the client-side versions

    def of(self, slug: str) -> dict[tuple[str, int, int], bytes]:
        return {k: v for k, v in self.versions.items() if k[0] == slug}


def _create(instance: _Instance, token: str, name: str, mode: str = "gateway") -> int:
    response = instance.call(
        "POST", "/api/v1/objects/", token, payload={"name": name, "mode": mode}
    )
    assert response.status == 201, response.body
    return int(response.json()["id"])


def _put(instance: _Instance, token: str, object_id: int, data: bytes) -> int:
    response = instance.call("PUT", f"/api/v1/objects/{object_id}/content/", token, data=data)
    assert response.status == 201, response.body
    return int(response.json()["number"])


def _get(instance: _Instance, token: str, object_id: int, number: int) -> _Response:
    return instance.call("GET", f"/api/v1/objects/{object_id}/content/?version={number}", token)


TORTURE = os.environ.get("VAULT_TORTURE") == "1"
# Plaintext sizes per tenant: empty, one byte, segment edges, several segments (and, under
# VAULT_TORTURE=1, objects of several MiB and many more of them).
SIZES = (0, 1, 65_536, 65_537, 150_000) + (
    (3_000_000, 8_388_609) + (20_000,) * 40 if TORTURE else ()
)


def _fill(instance: _Instance, tokens: dict[str, dict[str, str]], stored: _Stored) -> None:
    """Gateway objects of several sizes, second versions, a repeated content (deduplicated
    where the tenant deduplicates) and a client-side envelope, in every tenant."""
    for slug, people in tokens.items():
        token = people[f"member@{slug}.example"]
        shared = os.urandom(70_000)
        for index, size in enumerate(SIZES):
            object_id = _create(instance, token, f"doc-{index}")
            data = os.urandom(size)
            stored.versions[(slug, object_id, _put(instance, token, object_id, data))] = data
            if index % 2:
                again = shared if index == 1 else os.urandom(size + 7)
                stored.versions[(slug, object_id, _put(instance, token, object_id, again))] = again
        copy = _create(instance, token, "copy")
        stored.versions[(slug, copy, _put(instance, token, copy, shared))] = shared
        opaque = _create(instance, token, "opaque", mode="client")
        context = instance.call("GET", f"/api/v1/objects/{opaque}/", token).json()["next_context"]
        stanza = WrappedKey(
            backend="local", key=KeyRef("client-key", 1), mechanism="A256GCM", ciphertext=b"w" * 60
        )
        made = envelope.encrypt(
            os.urandom(90_000), dek=os.urandom(32), context=context, stanzas=[stanza]
        )
        number = _put(instance, token, opaque, made)
        stored.versions[(slug, opaque, number)] = made
        stored.client.add((slug, opaque, number))


def _read_back(
    instance: _Instance, tokens: dict[str, dict[str, str]], stored: _Stored, slugs: list[str]
) -> int:
    """Read every stored version of ``slugs`` and compare it byte for byte; return how many."""
    count = 0
    for (slug, object_id, number), expected in stored.versions.items():
        if slug not in slugs:
            continue
        response = _get(instance, tokens[slug][f"member@{slug}.example"], object_id, number)
        assert response.status == 200, (slug, object_id, number, response.body[:300])
        assert response.body == expected, (slug, object_id, number)
        count += 1
    return count


def _people(slug: str) -> dict[str, str]:
    return {f"member@{slug}.example": "member"}


def _record(name: str, **counts: int) -> None:
    """Add this test's counts to the torture summary, when one is being written."""
    directory = os.environ.get("VAULT_TORTURE_SUMMARY_DIR")
    if not directory:
        return
    path = Path(directory) / "backup_restore.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    summary[name] = counts
    path.write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")


# --- the backup and the restore, command by command as in docs/backup.md -------------------------


def _run(*argv: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=300)


def _backup_sqlite(data_dir: Path, backup: Path) -> None:
    _run(
        PYTHON, "-c", SQLITE_BACKUP, str(data_dir / "vault.sqlite3"), str(backup / "vault.sqlite3")
    )


def _backup_storage(data_dir: Path, backup: Path) -> None:
    _run("cp", "-a", str(data_dir / "storage"), str(backup / "storage"))


def _backup_keystore(data_dir: Path, backup: Path) -> None:
    """The local keystore, copied under its own lock, with its key file; and the secret key."""
    (backup / "keystore").mkdir(mode=0o700)
    keystore = data_dir / "keystore"
    _run(
        "flock", str(keystore / "keys.json.lock"),
        "cp", "-p", str(keystore / "keys.json"), str(keystore / "master.key"),
        str(backup / "keystore"),
    )  # fmt: skip
    _run("cp", "-p", str(data_dir / "secret_key"), str(backup / "secret_key"))


def _backup(data_dir: Path, backup: Path) -> Path:
    """The whole backup of an embedded SQLite instance, online, in the document's order."""
    backup.mkdir()
    _backup_sqlite(data_dir, backup)
    _backup_storage(data_dir, backup)
    _backup_keystore(data_dir, backup)
    return backup


def _restore_files(backup: Path, data_dir: Path, *, keystore: Path | None = None) -> None:
    """Lay a backup out as a fresh data directory (the keystore from ``keystore`` if given)."""
    data_dir.mkdir(mode=0o700)
    _run("cp", "-a", str(backup / "storage"), str(data_dir / "storage"))
    if (backup / "keystore").exists() or keystore is not None:
        _run("cp", "-a", str(keystore or backup / "keystore"), str(data_dir / "keystore"))
    _run("cp", "-p", str(backup / "secret_key"), str(data_dir / "secret_key"))
    if (backup / "vault.sqlite3").exists():
        _run("cp", "-p", str(backup / "vault.sqlite3"), str(data_dir / "vault.sqlite3"))


def _verify(instance: _Instance, *args: str) -> subprocess.CompletedProcess[str]:
    return instance.manage("objects_verify", *args, check=False)


def _verified_fully(instance: _Instance, versions: int) -> None:
    """``objects_verify`` and ``audit_verify`` on a restored instance, as the document says
    (side by side: the reads that the first records are not yet integrated into the log, and the
    second counts them as pending)."""
    audit = subprocess.Popen(
        [PYTHON, "manage.py", "audit_verify"],
        cwd=ROOT,
        env=instance.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    check = _verify(instance)
    audit_out, _ = audit.communicate(timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip().endswith(" 0 failed"), check.stdout
    assert check.stdout.startswith(f"{versions} version(s)"), check.stdout
    assert audit.returncode == 0, audit_out


def _spec(slugs: list[str], backend: str = "local") -> list[dict[str, Any]]:
    return [
        {"slug": s, "backend": backend, "people": _people(s), "deduplicate": s == slugs[1]}
        for s in slugs
    ]


@dataclass
class _Source:
    instance: _Instance
    tokens: dict[str, dict[str, str]]
    stored: _Stored
    slugs: list[str]


@pytest.fixture(scope="module")
def backup_source(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A running embedded instance (SQLite, local keystore) with three tenants' objects, one of
    them deduplicating."""
    slugs = ["alpha", "beta", "gamma"]
    instance = _Instance(tmp_path_factory.mktemp("backup-source") / "var")
    tokens = instance.set_up(_spec(slugs))
    stored = _Stored()
    instance.start()
    try:
        _fill(instance, tokens, stored)
        yield _Source(instance, tokens, stored, slugs)
    finally:
        instance.stop()


def test_the_document_gives_the_commands_these_tests_run() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert SQLITE_BACKUP in text
    assert " ".join(PG_DUMP) in text
    assert " ".join(PG_RESTORE) in text
    assert "flock var/keystore/keys.json.lock cp -p" in text
    assert "manage.py objects_verify" in text


def test_a_sqlite_instance_restored_into_a_fresh_directory_reads_back_every_object(
    backup_source: _Source, tmp_path: Path
) -> None:
    source = backup_source
    backup = _backup(source.instance.data_dir, tmp_path / "backup")  # while it serves
    expected = dict(source.stored.versions)

    restored = _Instance(tmp_path / "restored")
    _restore_files(backup, restored.data_dir)
    restored.start()
    try:
        assert _read_back(restored, source.tokens, _Stored(expected), source.slugs) == len(expected)
        # The objects kept their ids, names and version lists.
        listed = restored.call(
            "GET", "/api/v1/objects/?page_size=500", source.tokens["beta"]["member@beta.example"]
        )
        assert listed.status == 200
        assert {o["id"] for o in listed.json()["results"]} == {
            k[1] for k in expected if k[0] == "beta"
        }
    finally:
        restored.stop()
    _verified_fully(restored, len(expected))
    _record("sqlite", versions_read_back=len(expected), tenants=len(source.slugs))


def test_database_first_then_storage_leaves_only_orphans_and_the_reverse_loses_bodies(
    backup_source: _Source, tmp_path: Path
) -> None:
    source = backup_source
    token = source.tokens["alpha"]["member@alpha.example"]
    data_dir = source.instance.data_dir

    # The document's order, with a write between the two steps: the restored database does not
    # know the new version, whose body the storage copy holds as an orphan for the sweep.
    right = tmp_path / "right"
    right.mkdir()
    _backup_sqlite(data_dir, right)
    late = _create(source.instance, token, "written-during-backup")
    data = os.urandom(1000)
    source.stored.versions[("alpha", late, _put(source.instance, token, late, data))] = data
    _backup_storage(data_dir, right)
    _backup_keystore(data_dir, right)
    restored = _Instance(tmp_path / "restored-right")
    _restore_files(right, restored.data_dir)
    check = _verify(restored)
    assert check.returncode == 0, check.stdout
    assert f"object {late} " not in check.stdout
    swept = restored.manage(
        "shell",
        "--command",
        "from datetime import timedelta; from django.utils import timezone; "
        "from vault.objects.services import storage_sweep_orphans; "
        "print('SWEPT', storage_sweep_orphans(now=timezone.now() + timedelta(days=2)))",
    )
    assert "SWEPT 1" in swept.stdout, swept.stdout

    # The reverse order: the database names a version whose body the storage copy lacks.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    _backup_storage(data_dir, wrong)
    lost = _create(source.instance, token, "written-between-the-steps")
    data = os.urandom(1000)
    source.stored.versions[("alpha", lost, _put(source.instance, token, lost, data))] = data
    _backup_sqlite(data_dir, wrong)
    _backup_keystore(data_dir, wrong)
    broken = _Instance(tmp_path / "restored-wrong")
    _restore_files(wrong, broken.data_dir)
    check = _verify(broken)
    assert check.returncode == 1
    assert f"FAILED alpha object {lost} version 1 (gateway)" in check.stdout
    assert check.stdout.strip().endswith(" 1 failed"), check.stdout


def _server_url(name: str) -> str:
    """A URL for database ``name`` on the PostgreSQL server the suite was given."""
    db = settings.DATABASES["default"]
    user = urllib.parse.quote(str(db.get("USER") or "postgres"))
    password = db.get("PASSWORD")
    auth = f"{user}:{urllib.parse.quote(str(password))}" if password else user
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{name}"


def _psql(sql: str) -> None:
    _run("psql", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1", "--command", sql,
         _server_url("postgres"))  # fmt: skip


@pytest.fixture
def backup_databases() -> Any:
    """Two fresh PostgreSQL databases of this test's own (source, restored), dropped after."""
    suffix = secrets.token_hex(4)
    names = (f"backup_source_{suffix}", f"backup_restored_{suffix}")
    _psql(f"CREATE DATABASE {names[0]}")
    try:
        yield names
    finally:
        for name in names:
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.postgres
def test_a_postgresql_instance_restored_with_pg_restore_into_a_new_database_reads_back_every_object(
    backup_databases: tuple[str, str], tmp_path: Path
) -> None:
    source_db, restored_db = backup_databases
    slugs = ["delta", "epsilon", "zeta"]
    source = _Instance(tmp_path / "source", database_url=_server_url(source_db))
    tokens = source.set_up(_spec(slugs))
    stored = _Stored()
    backup = tmp_path / "backup"
    backup.mkdir()
    source.start()
    try:
        _fill(source, tokens, stored)
        # Online, in the document's order: database, storage, key material and secrets.
        _run(*PG_DUMP, str(backup / "vault.dump"), _server_url(source_db))
        _backup_storage(source.data_dir, backup)
        _backup_keystore(source.data_dir, backup)
    finally:
        source.stop()

    _psql(f"CREATE DATABASE {restored_db}")
    _run(*PG_RESTORE, _server_url(restored_db), str(backup / "vault.dump"))
    restored = _Instance(tmp_path / "restored", database_url=_server_url(restored_db))
    _restore_files(backup, restored.data_dir)
    restored.start()
    try:
        assert _read_back(restored, tokens, stored, slugs) == len(stored.versions)
    finally:
        restored.stop()
    _verified_fully(restored, len(stored.versions))
    _record("postgresql", versions_read_back=len(stored.versions), tenants=len(slugs))


def _hsm_instance(data_dir: Path, conf: Path, options: dict[str, str]) -> _Instance:
    return _Instance(
        data_dir,
        key_backends={"hsm": {"BACKEND": "pkcs11", "OPTIONS": options}},
        env={"SOFTHSM2_CONF": str(conf), "VAULT_SIGNING_BACKEND": "hsm"},
    )


@pytest.mark.softhsm
def test_a_softhsm_instance_restored_with_a_copy_of_its_token_directory_reads_back_every_object(
    tmp_path: Path,
) -> None:
    token = _init_token(tmp_path / "hsm")  # a token of this test's own, not the session's
    slugs = ["eta", "theta"]
    source = _hsm_instance(tmp_path / "source", token.conf, token.options())
    tokens = source.set_up(_spec(slugs, backend="hsm"))
    stored = _Stored()
    backup = tmp_path / "backup"
    backup.mkdir()
    source.start()
    try:
        _fill(source, tokens, stored)
        _backup_sqlite(source.data_dir, backup)
        _backup_storage(source.data_dir, backup)
        # SoftHSM: the token directory, copied whole while no key is created or destroyed.
        _run("cp", "-a", str(token.tokendir), str(backup / "softhsm-tokens"))
        _run("cp", "-p", str(source.data_dir / "secret_key"), str(backup / "secret_key"))
    finally:
        source.stop()
    shutil.rmtree(token.tokendir)  # the original token is gone: only the copy can serve

    # A fresh machine: the copy in a new place, a softhsm2.conf naming it, the same PIN.
    machine = tmp_path / "new-machine"
    machine.mkdir()
    _run("cp", "-a", str(backup / "softhsm-tokens"), str(machine / "tokens"))
    conf = machine / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {machine / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n",
        encoding="utf-8",
    )
    pin_file = machine / "user.pin"
    pin_file.write_text(token.pin + "\n", encoding="utf-8")
    pin_file.chmod(0o600)
    restored = _hsm_instance(
        tmp_path / "restored", conf, {**token.options(), "PIN_FILE": str(pin_file)}
    )
    _restore_files(backup, restored.data_dir)
    restored.start()
    try:
        assert _read_back(restored, tokens, stored, slugs) == len(stored.versions)
    finally:
        restored.stop()
    _verified_fully(restored, len(stored.versions))
    _record("softhsm", versions_read_back=len(stored.versions), tenants=len(slugs))


def _shred(instance: _Instance, people: dict[str, str], slug: str) -> None:
    """Destroy the tenant's keys through dual control: a custodian asks, two others approve
    (with no waiting period configured, the second approval runs the shred)."""
    ask = instance.call(
        "POST",
        "/api/v1/approvals/",
        people[f"c1@{slug}.example"],
        payload={"action": "key.destroy", "reason": "customer offboarding"},
    )
    assert ask.status == 201, ask.body
    request_id = ask.json()["id"]
    for approver in ("c2", "c3"):
        decided = instance.call(
            "POST",
            f"/api/v1/approvals/{request_id}/approve/",
            people[f"{approver}@{slug}.example"],
            payload={"reason": "checked"},
        )
        assert decided.status == 200, decided.body
    assert decided.json()["state"] == "executed"


def _codes(instance: _Instance, people: dict[str, str], slug: str, keys: list[Any]) -> set[Any]:
    """The (status, code) of reading each of ``keys``; no answer may carry the content."""
    answers = set()
    for key, plaintext in keys:
        response = _get(instance, people[f"member@{slug}.example"], key[1], key[2])
        assert response.status != 200, key
        if len(plaintext) >= 16:
            assert plaintext[:64] not in response.body, key
        answers.add((response.status, response.code))
    return answers


def test_a_shred_reaches_restored_backups_unless_the_key_material_backup_is_restored_too(
    tmp_path: Path,
) -> None:
    keep, gone = "keep", "gone"
    custodians = {f"c{n}@{gone}.example": "custodian" for n in (1, 2, 3)}
    spec = [
        {"slug": keep, "backend": "local", "people": _people(keep)},
        {"slug": gone, "backend": "local", "people": {**_people(gone), **custodians}},
    ]
    source = _Instance(tmp_path / "source")
    tokens = source.set_up(spec)
    stored = _Stored()
    source.start()
    try:
        _fill(source, tokens, stored)
        before = _backup(source.data_dir, tmp_path / "b1-before-the-shred")
        _shred(source, tokens[gone], gone)
        some = next(k for k in stored.of(gone) if k not in stored.client)
        shredded = _get(source, tokens[gone][f"member@{gone}.example"], some[1], some[2])
        assert (shredded.status, shredded.code) == (410, "object_shredded")
        # The key material as it is after the shred (its own backups taken from now on).
        after = tmp_path / "key-material-after-the-shred"
        after.mkdir()
        _backup_keystore(source.data_dir, after)
    finally:
        source.stop()
    gateway = [(k, v) for k, v in stored.of(gone).items() if k not in stored.client]
    client_side = [(k, v) for k, v in stored.of(gone).items() if k in stored.client]

    # B1's database and storage, with the key material after the shred: the restored database
    # does not know of the shred, yet nothing of the shredded tenant opens.
    restored = _Instance(tmp_path / "restored")
    _restore_files(before, restored.data_dir, keystore=after / "keystore")
    # B1's database and storage with B1's key material too: what the shred must reach.
    resurrected = _Instance(tmp_path / "resurrected")
    _restore_files(before, resurrected.data_dir)
    restored.launch()
    resurrected.launch()
    try:
        restored.wait_ready()
        assert _read_back(restored, tokens, stored, [keep]) == len(stored.of(keep))
        # Until the start-up key health check has run, the backend refuses the destroyed key
        # (410 key_destroyed); from then on the key is suspended (503 key_suspended).
        assert _codes(restored, tokens[gone], gone, gateway) <= {
            (410, "key_destroyed"),
            (503, "key_suspended"),
        }
        wait_until(
            lambda: _codes(restored, tokens[gone], gone, gateway[:1]) == {(503, "key_suspended")},
            timeout=120,
            what="the key health check to suspend the destroyed key",
        )
        assert _codes(restored, tokens[gone], gone, gateway) == {(503, "key_suspended")}
        # Client-side objects are the user's: the server never could open them, and returns the
        # same envelopes as before (docs/key-lifecycle.md).
        assert _read_back(restored, tokens, _Stored(dict(client_side)), [gone]) == 1
        check = _verify(restored)
        assert check.returncode == 1
        assert check.stdout.strip().endswith(f" {len(gateway)} failed"), check.stdout

        # The record of the shred, lost with the newer database, is made again through dual
        # control; the keys being gone already, it marks and certifies.
        _shred(restored, tokens[gone], gone)
        assert _codes(restored, tokens[gone], gone, gateway) == {(410, "object_shredded")}
        check = _verify(restored)
        assert check.returncode == 0, check.stdout
        assert f"{len(gateway)} shredded, 0 failed" in check.stdout

        resurrected.wait_ready()
        assert _read_back(resurrected, tokens, stored, [keep, gone]) == len(stored.versions)
    finally:
        restored.stop()
        resurrected.stop()
    _record(
        "shred",
        shredded_versions_unreadable=len(gateway),
        other_versions_read_back=len(stored.of(keep)),
        shredded_versions_readable_with_old_key_backup=len(gateway),
    )
