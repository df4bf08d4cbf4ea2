"""``cvault key rotate`` rewraps every stored version's header, against a real server."""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import pytest

from kms_plugins.base import KeyBackend
from kms_plugins.config import backend_class
from kms_plugins.types import KeyRef, KeyState
from tests.client.conftest import Cvault, Running
from vault.client import Vault
from vault.crypto import MAX_HEADER_SIZE, EnvelopeHeader, read_header

pytestmark = pytest.mark.slow

# Sizes per object: (version 1, version 2). 200 000 bytes spans several segments, so the ranged
# GET of the header really is a prefix of the envelope.
OBJECTS = {
    "rot/empty-then-small": (0, 17),
    "rot/large": (200_000, 70_000),
    "rot/small-then-large": (1, 150_000),
}


def _backend(cvault: Cvault, role: str = "primary") -> tuple[KeyBackend, str]:
    """The backend recorded in the client's keys.json, opened through kms_plugins."""
    record = json.loads((cvault.config_dir / "keys.json").read_text())[role]
    return backend_class(record["backend"])(f"test-{role}", record["options"]), record["key_id"]


def _state(backend: KeyBackend, key_id: str, version: int) -> KeyState:
    info = backend.describe(key_id).version(version)
    assert info is not None
    return info.state


def _primary(backend: KeyBackend, key_id: str) -> int:
    primary = backend.describe(key_id).primary
    assert primary is not None
    return primary.ref.version


def _stored_header(running: Running, object_id: int, version: int) -> EnvelopeHeader:
    """A version's header, parsed from a ranged GET of its envelope through the API."""
    request = urllib.request.Request(  # noqa: S310
        f"{running.url}/api/v1/objects/{object_id}/content/?version={version}",
        headers={
            "Authorization": f"Bearer {running.token}",
            "Range": f"bytes=0-{MAX_HEADER_SIZE - 1}",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status in (200, 206)
        data = response.read()
    header, _ = read_header(io.BytesIO(data))
    return header


def _ids(cvault: Cvault) -> dict[str, int]:
    vault = Vault.from_config(cvault.config_dir)
    try:
        return {name: vault.find(name).id for name in OBJECTS}
    finally:
        vault.close()


def _put_all(cvault: Cvault, tmp_path: Path) -> dict[tuple[str, int], bytes]:
    contents: dict[tuple[str, int], bytes] = {}
    for name, sizes in OBJECTS.items():
        for number, size in enumerate(sizes, 1):
            data = os.urandom(size)
            (tmp_path / "in.bin").write_bytes(data)
            cvault.ok("put", "in.bin", name)
            contents[(name, number)] = data
    return contents


def _check_downloads(cvault: Cvault, contents: dict[tuple[str, int], bytes]) -> None:
    for (name, number), data in contents.items():
        assert cvault.ok("cat", "--version", str(number), name).out == data, (name, number)
    for name, sizes in OBJECTS.items():
        target = cvault.cwd / "out.bin"
        cvault.ok("get", name, "-o", str(target))
        assert target.read_bytes() == contents[(name, len(sizes))]


def _stanza_versions(
    running: Running, ids: dict[str, int]
) -> dict[tuple[str, int], list[tuple[str, int]]]:
    return {
        (name, number): [
            (s.key.key_id, s.key.version)
            for s in _stored_header(running, ids[name], number).stanzas
        ]
        for name, sizes in OBJECTS.items()
        for number in range(1, len(sizes) + 1)
    }


def test_rotate_rewraps_every_version_and_frees_the_old_key_version(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    contents = _put_all(cvault, tmp_path)
    (tmp_path / "gw.bin").write_bytes(b"gateway objects are not ours to rewrap")
    cvault.ok("put", "--gateway", "gw.bin", "rot-gateway.bin")
    ids = _ids(cvault)
    backend, key_id = _backend(cvault)
    try:
        before = _stanza_versions(running, ids)
        assert all(stanzas == [(key_id, 1)] for stanzas in before.values())
        fixed = {
            (name, n): _stored_header(running, ids[name], n).fixed
            for name, sizes in OBJECTS.items()
            for n in range(1, len(sizes) + 1)
        }

        rotated = cvault.ok("key", "rotate")
        assert f"Rotated the primary key {key_id} to version 2" in rotated.text
        assert "Rewrapped 6 version(s) of 3 object(s), 0 already current" in rotated.text
        assert f"version(s) 1 of {key_id} can now be deactivated" in rotated.text
        assert "[3/3]" in rotated.err, "progress goes to stderr"

        after = _stanza_versions(running, ids)
        assert all(stanzas == [(key_id, 2)] for stanzas in after.values()), after
        for (name, n), part in fixed.items():
            assert _stored_header(running, ids[name], n).fixed == part, "only stanzas changed"
        _check_downloads(cvault, contents)
        assert cvault.ok("cat", "rot-gateway.bin").out.startswith(b"gateway objects")

        # Nothing needs version 1 any more: deactivate it (rotate did not), then destroy it,
        # since a deactivated version would still unwrap.
        assert _state(backend, key_id, 1) == KeyState.ACTIVE
        backend.set_state(KeyRef(key_id, 1), KeyState.DEACTIVATED)
        assert _state(backend, key_id, 1) == KeyState.DEACTIVATED
        assert _primary(backend, key_id) == 2
        _check_downloads(cvault, contents)
        backend.destroy(KeyRef(key_id, 1))
        assert _state(backend, key_id, 1) == KeyState.DESTROYED
        _check_downloads(cvault, contents)
        assert sorted(cvault.ok("ls", "rot/").text.splitlines()) == sorted(OBJECTS)

        again = cvault.ok("key", "rotate", "--rewrap-only")
        assert "Rotated" not in again.text, "--rewrap-only makes no new key version"
        assert "Rewrapped 0 version(s) of 3 object(s), 6 already current" in again.text
        assert "can now be deactivated" not in again.text
        assert _primary(backend, key_id) == 2
        assert _stanza_versions(running, ids) == after
    finally:
        backend.close()


def test_rotate_keeps_and_rotates_the_recovery_stanza(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    cvault.ok(
        "key", "init", "--recovery", "--backend", "local", "--keystore", str(tmp_path / "r.json")
    )
    contents = _put_all(cvault, tmp_path)
    ids = _ids(cvault)
    _, primary = _backend(cvault)
    _, recovery = _backend(cvault, "recovery")
    recovery_stanza = _stored_header(running, ids["rot/large"], 1).stanzas[1]

    cvault.ok("key", "rotate")
    after = _stanza_versions(running, ids)
    assert all(s == [(primary, 2), (recovery, 1)] for s in after.values()), after
    assert _stored_header(running, ids["rot/large"], 1).stanzas[1] == recovery_stanza, (
        "a current recovery stanza is kept as it was"
    )

    rotated = cvault.ok("key", "rotate", "--recovery")
    assert "Rewrapped 6 version(s) of 3 object(s), 0 already current" in rotated.text
    after = _stanza_versions(running, ids)
    assert all(s == [(primary, 2), (recovery, 2)] for s in after.values()), after

    (cvault.config_dir / "local" / "keystore.json").rename(tmp_path / "primary-gone.json")
    for (name, number), data in contents.items():
        assert cvault.ok("cat", "--version", str(number), name).out == data, "recovery alone"


def test_failed_versions_are_reported_and_the_others_still_rewrapped(
    running: Running, cvault: Cvault, tmp_path
) -> None:
    (tmp_path / "a.bin").write_bytes(b"under version 1")
    cvault.ok("put", "a.bin", "fail/a")
    cvault.ok("key", "rotate", "--no-rewrap")
    (tmp_path / "b.bin").write_bytes(b"under version 2")
    cvault.ok("put", "b.bin", "fail/b")
    cvault.ok("key", "rotate", "--no-rewrap")
    backend, key_id = _backend(cvault)
    try:
        backend.destroy(KeyRef(key_id, 1))  # fail/a can no longer be opened, let alone rewrapped
    finally:
        backend.close()

    result = cvault("key", "rotate", "--rewrap-only")
    assert result.code == 4
    assert "Rewrapped 1 version(s) of 2 object(s), 0 already current; 1 failed" in result.text
    assert "fail/a version 1" in result.err
    assert "--rewrap-only" in result.err
    assert "can now be deactivated" not in result.text
    vault = Vault.from_config(cvault.config_dir)
    try:
        assert [s.key.version for s in vault.header(vault.find("fail/b")).stanzas] == [3]
        assert [s.key.version for s in vault.header(vault.find("fail/a")).stanzas] == [1]
    finally:
        vault.close()
    assert cvault.ok("cat", "fail/b").out == b"under version 2"
