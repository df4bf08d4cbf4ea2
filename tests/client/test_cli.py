"""``cvault`` end to end against a real ``manage.py serve``: every command, both modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.client.conftest import Cvault, Running, new_client
from vault.client import Vault
from vault.client.names import NameCipher

pytestmark = pytest.mark.slow

SIZES = (0, 1, 65536, 3 * 1024 * 1024)


def _raw_objects(running: Running) -> list[dict]:
    status, body = running.server.get("/api/v1/objects/?page_size=500", running.token)
    assert status == 200
    return body["results"]


def _write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _vault(cvault: Cvault) -> Vault:
    os.environ.pop("CVAULT_URL", None)
    os.environ.pop("CVAULT_TOKEN", None)
    return Vault.from_config(cvault.config_dir)


def test_it_imports_without_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import vault.client, vault.client.cli, vault.client.sdk\n"
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules"
        " if sys.modules[m] is not None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_it_logs_in_privately_and_never_prints_the_token(running: Running, tmp_path) -> None:
    cvault = Cvault(tmp_path / "config", tmp_path)
    result = cvault.ok("login", "--url", running.url, "--token", running.token)
    assert "tenant demo" in result.text
    assert running.token not in result.text + result.err
    login = tmp_path / "config" / "login.json"
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "config").stat().st_mode) == 0o700
    assert json.loads(login.read_text())["url"] == running.url
    init = cvault.ok("key", "init", "--backend", "local")
    assert "local-" in init.text
    keys = json.loads((tmp_path / "config" / "keys.json").read_text())
    assert keys["primary"]["backend"] == "local"
    assert stat.S_IMODE((tmp_path / "config" / "keys.json").stat().st_mode) == 0o600
    assert cvault("key", "init", "--backend", "local").code != 0, "one primary key only"


def test_it_refuses_a_wrong_or_missing_token_clearly(running: Running, tmp_path) -> None:
    cvault = Cvault(tmp_path / "config", tmp_path)
    missing = cvault("ls")
    assert missing.code == 2
    assert "not logged in" in missing.err
    assert len(missing.err.strip().splitlines()) == 1
    bad = "cvt_000000000000_" + "A" * 43
    wrong = cvault("ls", env={"CVAULT_URL": running.url, "CVAULT_TOKEN": bad})
    assert wrong.code == 6
    assert "401 invalid_token" in wrong.err
    assert bad not in wrong.err
    refused = cvault("login", "--url", running.url, "--token", bad)
    assert refused.code == 6
    assert not (tmp_path / "config" / "login.json").exists(), "a refused login is not saved"
    down = cvault("ls", env={"CVAULT_URL": "http://127.0.0.1:9", "CVAULT_TOKEN": bad})
    assert down.code == 5
    assert "cannot reach http://127.0.0.1:9" in down.err


@pytest.mark.parametrize("size", SIZES)
def test_it_round_trips_client_side_with_encrypted_names(
    running: Running, cvault: Cvault, tmp_path, size: int
) -> None:
    name = f"reports/secret-{uuid.uuid4().hex[:8]}-{size}.bin"
    data = _write(tmp_path / "in.bin", size)
    cvault.ok("put", "in.bin", name)
    cvault.ok("get", name, "-o", "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert cvault.ok("cat", name).out == data
    listed = cvault.ok("ls", "reports/").text.splitlines()
    assert name in listed
    assert cvault.ok("ls", "nothing-here/").text == ""

    raw = _raw_objects(running)
    assert not any("secret-" in o["name"] or "reports" in o["name"] for o in raw)
    mine = [o for o in raw if o["mode"] == "client" and o["latest_version"]]
    assert any(o["latest_version"]["size"] == size for o in mine)
    assert all(o["content_type"] == "application/octet-stream" for o in mine)

    cvault.ok("rm", name)
    assert name not in cvault.ok("ls").text.splitlines()
    gone = cvault("get", name, "-o", "again.bin")
    assert gone.code == 3
    assert "no object named" in gone.err
    assert not (tmp_path / "again.bin").exists()


@pytest.mark.parametrize("size", SIZES)
def test_it_round_trips_in_gateway_mode(
    running: Running, cvault: Cvault, tmp_path, size: int
) -> None:
    name = f"gw-{uuid.uuid4().hex[:8]}-{size}.bin"
    data = _write(tmp_path / "in.bin", size)
    cvault.ok("put", "--gateway", "in.bin", name)
    assert any(o["name"] == name and o["mode"] == "gateway" for o in _raw_objects(running))
    cvault.ok("get", name, "-o", "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert cvault.ok("cat", "--gateway", name).out == data
    assert name in cvault.ok("ls", "gw-").text.splitlines()
    cvault.ok("rm", name)
    assert cvault("cat", name).code == 3


def test_a_new_version_and_key_rotation_keep_everything_readable(cvault: Cvault, tmp_path) -> None:
    first = _write(tmp_path / "v1.bin", 70_000)
    second = _write(tmp_path / "v2.bin", 1234)
    cvault.ok("put", "v1.bin", "doc")
    cvault.ok("put", "v2.bin", "doc")
    rotated = cvault.ok("key", "rotate", "--no-rewrap")
    assert "version 2" in rotated.text
    assert "--rewrap-only" in rotated.text
    third = _write(tmp_path / "v3.bin", 99)
    cvault.ok("put", "v3.bin", "doc")
    assert cvault.ok("cat", "--version", "1", "doc").out == first
    assert cvault.ok("cat", "--version", "2", "doc").out == second
    assert cvault.ok("cat", "doc").out == third
    vault = _vault(cvault)
    try:
        info = vault.find("doc")
        assert info.version == 3
        assert [s.key.version for s in vault.header(info).stanzas] == [2]
        assert [s.key.version for s in vault.header(info, version=1).stanzas] == [1]
    finally:
        vault.close()


def test_a_recovery_key_gets_a_stanza_and_opens_objects_alone(cvault: Cvault, tmp_path) -> None:
    cvault.ok(
        "key", "init", "--recovery", "--backend", "local", "--keystore", str(tmp_path / "r.json")
    )
    data = _write(tmp_path / "in.bin", 200_000)
    cvault.ok("put", "in.bin", "kept")
    vault = _vault(cvault)
    try:
        assert len(vault.header(vault.find("kept")).stanzas) == 2
    finally:
        vault.close()
    (cvault.config_dir / "local" / "keystore.json").rename(tmp_path / "primary-gone.json")
    assert cvault.ok("cat", "kept").out == data, "the recovery key opens names and data"


def test_a_tampered_envelope_fails_and_writes_nothing(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    _write(tmp_path / "in.bin", 300_000)
    cvault.ok("put", "in.bin", "tampered")
    vault = _vault(cvault)
    try:
        object_id = vault.find("tampered").id
    finally:
        vault.close()
    (stored,) = (running.data_dir / "storage").glob(f"*/{object_id}/*")
    body = bytearray(stored.read_bytes())
    body[200_000] ^= 0x01
    stored.write_bytes(bytes(body))

    result = cvault("get", "tampered", "-o", "out.bin")
    assert result.code == 4
    assert "authentication failed" in result.err
    assert "nothing written" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "in.bin"], "no output, no temp"
    assert cvault("cat", "tampered").code == 4


def test_another_key_cannot_read_or_even_find_the_objects(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    data = _write(tmp_path / "in.bin", 5000)
    cvault.ok("put", "in.bin", "private.txt")
    vault = _vault(cvault)
    try:
        object_id = vault.find("private.txt").id
        server_name = vault.find("private.txt").server_name
    finally:
        vault.close()

    bob = new_client(running, tmp_path / "bob")
    listing = bob.ok("ls")
    assert "private.txt" not in listing.text
    assert "not shown" in listing.err
    by_name = bob("get", "private.txt")
    assert by_name.code == 3
    by_id = bob("get", "--id", str(object_id), "-o", "stolen.bin")
    assert by_id.code == 4
    assert "authentication failed" in by_id.err
    assert "key you do not have" in by_id.err
    assert not (tmp_path / "bob" / "stolen.bin").exists()
    assert NameCipher(os.urandom(32)).decrypt(server_name) is None
    assert cvault.ok("cat", "private.txt").out == data


def test_it_reports_key_problems_clearly(cvault: Cvault, running: Running, tmp_path) -> None:
    nokey = new_client(running, tmp_path / "nokey", key=False)
    (tmp_path / "nokey" / "f").write_bytes(b"x")
    result = nokey("put", "f")
    assert result.code == 2
    assert "cvault key init" in result.err
    assert nokey("put", "--gateway", "f", f"nokey-{uuid.uuid4().hex}").code == 0
    need = nokey("key", "init", "--backend", "pkcs11")
    assert need.code == 2
    assert "--module" in need.err


def test_a_tampered_gateway_object_aborts_the_download_and_writes_nothing(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    name = f"gw-tamper-{uuid.uuid4().hex[:8]}"
    _write(tmp_path / "in.bin", 1_000_000)
    cvault.ok("put", "--gateway", "in.bin", name)
    vault = _vault(cvault)
    try:
        object_id = vault.find(name, gateway=True).id
    finally:
        vault.close()
    (stored,) = (running.data_dir / "storage").glob(f"*/{object_id}/*")
    body = bytearray(stored.read_bytes())
    body[700_000] ^= 0x01
    stored.write_bytes(bytes(body))
    result = cvault("get", name, "-o", "out.bin")
    assert result.code != 0
    assert "nothing written" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "in.bin"]
