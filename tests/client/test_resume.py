"""`cvault put` of a large file is resumable: killed mid-way, the same command continues."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.client.conftest import ROOT, Cvault, Running
from vault.crypto import TAG_SIZE

PART = 256 * 1024  # small parts, so that an upload has many
SIZE = 24 * 1024 * 1024 + 12345


def _state(cvault: Cvault) -> dict | None:
    files = list((cvault.config_dir / "uploads").glob("*.json"))
    if not files:
        return None
    try:
        return json.loads(files[0].read_text())
    except ValueError:  # caught mid-write
        return None


def _put_killed_mid_way(cvault: Cvault, *args: str) -> dict:
    """Start `cvault put`, kill it (SIGKILL) once a part after the first is on its way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CVAULT_", "DJANGO_"))}
    env.update({"CVAULT_CONFIG_DIR": str(cvault.config_dir), "CVAULT_PART_SIZE": str(PART)})
    process = subprocess.Popen(
        [sys.executable, "-m", "vault.client.cli", "put", *args],
        cwd=cvault.cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            state = _state(cvault)
            if state and (state.get("inflight") or {}).get("offset", 0) > 4 * PART:
                break
            if state and "header" not in state and process.poll() is None:
                # Gateway mode keeps no in-flight record: wait a little, then stop it.
                time.sleep(0.5)
                break
            assert process.poll() is None, "the upload finished before it could be interrupted"
            time.sleep(0.005)
        else:
            raise AssertionError("the upload did not start")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    state = _state(cvault)
    assert state is not None, "an interrupted upload keeps its state"
    return state


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.mark.parametrize("mode", ["client", "gateway"])
def test_an_interrupted_put_continues_where_it_stopped(
    running: Running, cvault: Cvault, big_file: Path, mode: str
) -> None:
    flags = ["--gateway"] if mode == "gateway" else []
    _put_killed_mid_way(cvault, *flags, str(big_file), "big")
    resumed = cvault.ok("put", *flags, str(big_file), "big", env={"CVAULT_PART_SIZE": str(PART)})
    assert "resuming the upload at byte" in resumed.err
    offset = int(resumed.err.split("resuming the upload at byte ")[1].split()[0])
    assert offset > 0, "it continued, it did not start again"
    assert "version 1 " in resumed.text
    assert _state(cvault) is None, "a finished upload forgets its state"
    out = big_file.parent / "back.bin"
    cvault.ok("get", *flags, "big", "-o", str(out))
    assert out.read_bytes() == big_file.read_bytes()


def test_a_file_changed_since_the_interruption_starts_over(
    running: Running, cvault: Cvault, big_file: Path
) -> None:
    _put_killed_mid_way(cvault, str(big_file), "changed")
    with big_file.open("r+b") as handle:
        handle.write(b"new beginning")
    again = cvault.ok("put", str(big_file), "changed", env={"CVAULT_PART_SIZE": str(PART)})
    assert "starting over" in again.err
    assert "resuming" not in again.err
    out = big_file.parent / "back.bin"
    cvault.ok("get", "changed", "-o", str(out))
    assert out.read_bytes() == big_file.read_bytes()


def test_a_part_that_would_be_sealed_from_other_bytes_starts_a_new_envelope(
    running: Running, cvault: Cvault, big_file: Path
) -> None:
    """The in-flight part changed but the file's size, time and inode did not: resealing it
    would reuse GCM nonces on different plaintext, so the upload starts over instead."""
    state = _put_killed_mid_way(cvault, str(big_file), "sneaky")
    # Where the server stands: the part that starts there may have been on its way when the
    # process died (the state file records it so before sending; make sure it says so here).
    request = urllib.request.Request(  # noqa: S310  (the test server's http URL)
        f"{running.url}/api/v1/uploads/{state['upload']}/",
        headers={"Authorization": f"Bearer {running.token}"},
    )

    def server_offset() -> int:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(json.loads(response.read())["offset"])

    # A part fully sent before the kill may still be landing: wait until the offset settles.
    offset, previous = server_offset(), -1
    while offset != previous:
        time.sleep(1)
        offset, previous = server_offset(), offset
    header = base64.b64decode(state["header"])
    segment = 64 * 1024
    start = (offset - len(header)) // (segment + TAG_SIZE) * segment
    original = big_file.read_bytes()[start : start + PART]
    state["inflight"] = {"offset": offset, "sha256": hashlib.sha256(original).hexdigest()}
    next((cvault.config_dir / "uploads").glob("*.json")).write_text(json.dumps(state))
    before = big_file.stat()
    with big_file.open("r+b") as handle:
        handle.seek(start + 10)
        handle.write(b"changed in place")
    os.utime(big_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert big_file.stat().st_mtime_ns == before.st_mtime_ns
    again = cvault.ok("put", str(big_file), "sneaky", env={"CVAULT_PART_SIZE": str(PART)})
    assert "starting over" in again.err
    out = big_file.parent / "back.bin"
    cvault.ok("get", "sneaky", "-o", str(out))
    assert out.read_bytes() == big_file.read_bytes()


def test_small_files_go_in_one_request_and_keep_no_state(
    running: Running, cvault: Cvault, tmp_path: Path
) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny" * 1000)
    cvault.ok("put", str(small), env={"CVAULT_PART_SIZE": str(PART)})
    assert not (cvault.config_dir / "uploads").exists()


def test_a_bad_part_size_is_a_clear_error(cvault: Cvault, big_file: Path) -> None:
    result = cvault("put", str(big_file), env={"CVAULT_PART_SIZE": "1000"})
    assert result.code == 2
    assert "CVAULT_PART_SIZE must be a positive multiple of 65536" in result.err


__all__ = ["ROOT"]
