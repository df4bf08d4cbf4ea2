"""``cvault audit verify`` as a subprocess, offline (no server, no login), on bundles written by
``build_bundle`` from a real log signed with a real P-256 key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.client.conftest import Cvault
from tests.crypto.audit_helpers import ORIGIN, Log, edit, event, new_signer, standard_log
from vault.crypto.checkpoint import CheckpointKey

Signer = tuple[ec.EllipticCurvePrivateKey, CheckpointKey]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return new_signer()


@pytest.fixture(scope="module")
def log(signer: Signer) -> Log:
    return standard_log(*signer)


@pytest.fixture
def cvault(tmp_path: Path) -> Cvault:
    return Cvault(tmp_path / "config", tmp_path)


@pytest.fixture
def bundle_file(tmp_path: Path, log: Log) -> Path:
    path = tmp_path / "export.json"
    path.write_bytes(log.bundle(2, 10))
    return path


def _write_trust(cvault: Cvault, keys: list[CheckpointKey], note: bytes) -> Path:
    """The trust file ``cvault trust save`` would write, written here by hand."""
    directory = cvault.config_dir / "trust"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{hashlib.sha256(ORIGIN.encode()).hexdigest()[:32]}.json"
    data = {
        "origin": ORIGIN,
        "keys": [key.vkey for key in keys],
        "checkpoint": note.decode("utf-8"),
        "url": "https://vault.example",
        "saved_at": "2025-02-20T08:00:00.000000Z",
    }
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    return path


def _verify(cvault: Cvault, path: Path, *trust: str) -> Any:
    arguments = ["audit", "verify", str(path)]
    for key in trust:
        arguments += ["--trust", key]
    return cvault(*arguments)


def test_it_verifies_against_the_saved_trust(
    cvault: Cvault, bundle_file: Path, log: Log, signer: Signer
) -> None:
    _write_trust(cvault, [signer[1]], log.notes[2])
    result = _verify(cvault, bundle_file)
    assert result.code == 0, result.err
    assert result.text == (
        f"verified: {ORIGIN}, 8 event(s) (indices 2..9), 4 checkpoint(s), last size 12, "
        "anchored to the checkpoint saved on 2025-02-20T08:00:00.000000Z (size 7)\n"
    )


def test_it_fails_a_tampered_bundle(
    cvault: Cvault, bundle_file: Path, log: Log, signer: Signer
) -> None:
    _write_trust(cvault, [signer[1]], log.notes[2])

    def change(document: dict[str, Any]) -> None:
        entry = document["leaves"][4]
        value = json.loads(base64.b64decode(entry["leaf"]))
        value["details"]["n"] = -1
        entry["leaf"] = base64.b64encode(json.dumps(value, sort_keys=True).encode()).decode()

    bundle_file.write_bytes(edit(bundle_file.read_bytes(), change))
    result = _verify(cvault, bundle_file)
    assert result.code == 1
    assert result.text.startswith("FAILED: ")
    assert result.text.count("\n") == 1


def test_it_fails_trailing_garbage(cvault: Cvault, bundle_file: Path, signer: Signer) -> None:
    bundle_file.write_bytes(bundle_file.read_bytes() + b"garbage")
    result = _verify(cvault, bundle_file, signer[1].vkey)
    assert result.code == 1
    assert "[audit_bundle_malformed]" in result.text


def test_it_is_unanchored_without_trust(cvault: Cvault, bundle_file: Path, signer: Signer) -> None:
    result = _verify(cvault, bundle_file)
    assert result.code == 2
    assert result.text.startswith(f"UNANCHORED: no trusted key for {ORIGIN}")
    assert signer[1].vkey in result.err  # shown to compare out of band, not trusted
    assert "cvault trust save" in result.err


def test_it_trusts_a_verifier_key_given_on_the_command_line(
    cvault: Cvault, bundle_file: Path, signer: Signer
) -> None:
    result = _verify(cvault, bundle_file, signer[1].vkey)
    assert result.code == 0, result.err
    assert result.text.startswith(f"verified: {ORIGIN}, 8 event(s)")
    assert "not anchored to a saved checkpoint" in result.text


def test_it_trusts_a_pem_public_key_file(
    cvault: Cvault, bundle_file: Path, signer: Signer, tmp_path: Path
) -> None:
    pem = tmp_path / "audit-key.pem"
    pem.write_bytes(signer[1].public_key_pem())
    result = _verify(cvault, bundle_file, str(pem))
    assert result.code == 0, result.err
    assert result.text.startswith("verified: ")


def test_it_fails_under_a_key_that_did_not_sign(cvault: Cvault, bundle_file: Path) -> None:
    _, other = new_signer()
    result = _verify(cvault, bundle_file, other.vkey)
    assert result.code == 1
    assert "audit_checkpoint_not_trusted" in result.text


def _rewritten(signer: Signer) -> Log:
    """The standard log with event 5 replaced, checkpointed again at sizes 0, 3, 7, 12."""
    log = Log(*signer)
    log.checkpoint()
    for number in range(12):
        log.add(event(number if number != 5 else 500))
        if log.tree.size in (3, 7, 12):
            log.checkpoint()
    return log


def test_it_fails_rewritten_history_against_the_saved_checkpoint(
    cvault: Cvault, log: Log, signer: Signer, tmp_path: Path
) -> None:
    _write_trust(cvault, [signer[1]], log.notes[2])
    path = tmp_path / "rewritten.json"
    path.write_bytes(_rewritten(signer).bundle())
    result = _verify(cvault, path)
    assert result.code == 1
    assert result.text.startswith("FAILED: history rewritten")
    assert "[audit_bundle_history_rewritten]" in result.text
    # The same bundle, with no saved checkpoint, is consistent on its own.
    assert (
        Cvault(tmp_path / "fresh", tmp_path)(
            "audit", "verify", str(path), "--trust", signer[1].vkey
        ).code
        == 0
    )


def test_it_fails_history_rewritten_under_a_new_key_passed_with_trust(
    cvault: Cvault, log: Log, signer: Signer, tmp_path: Path
) -> None:
    _write_trust(cvault, [signer[1]], log.notes[3])
    private, public = new_signer()
    path = tmp_path / "rewritten.json"
    path.write_bytes(_rewritten((private, public)).bundle())
    result = _verify(cvault, path, public.vkey)
    assert result.code == 1
    assert "[audit_bundle_history_rewritten]" in result.text


def test_it_fails_a_rollback_against_the_saved_checkpoint(
    cvault: Cvault, log: Log, signer: Signer, tmp_path: Path
) -> None:
    _write_trust(cvault, [signer[1]], log.notes[3])
    path = tmp_path / "older.json"
    path.write_bytes(log.bundle(0, 5, notes=log.notes[:3]))
    result = _verify(cvault, path)
    assert result.code == 1
    assert result.text.startswith("FAILED: rollback")


def test_it_refuses_an_unusable_trust_option(cvault: Cvault, bundle_file: Path) -> None:
    result = _verify(cvault, bundle_file, "not-a-key-or-file")
    assert result.code == 2
    assert result.err.startswith("cvault: error: --trust 'not-a-key-or-file' is neither")
    assert result.text == ""


def test_it_refuses_a_damaged_trust_file(
    cvault: Cvault, bundle_file: Path, log: Log, signer: Signer
) -> None:
    path = _write_trust(cvault, [signer[1]], log.notes[2])
    data = json.loads(path.read_text())
    data["checkpoint"] = data["checkpoint"].replace("\n7\n", "\n8\n")
    path.write_text(json.dumps(data))
    result = _verify(cvault, bundle_file)
    assert result.code == 2
    assert "is damaged" in result.err


def test_it_refuses_a_missing_file(cvault: Cvault, tmp_path: Path) -> None:
    result = _verify(cvault, tmp_path / "nope.json")
    assert result.code == 2
    assert result.err.startswith("cvault: error: cannot read")


def test_it_creates_nothing_in_the_configuration(
    cvault: Cvault, bundle_file: Path, signer: Signer
) -> None:
    assert _verify(cvault, bundle_file, signer[1].vkey).code == 0
    assert not cvault.config_dir.exists()


def test_it_reads_the_bundle_from_standard_input(
    cvault: Cvault, bundle_file: Path, signer: Signer
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault.client.cli",
            "audit",
            "verify",
            "-",
            "--trust",
            signer[1].vkey,
        ],
        input=bundle_file.read_bytes(),
        env={**os.environ, "CVAULT_CONFIG_DIR": str(cvault.config_dir)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"verified: ")
