"""The issue's integration requirement: 64 MiB through ``cvault`` with the user's key in an HSM
(SoftHSM2 over PKCS#11) and in a TPM (swtpm), and through the gateway (the server's backend)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.client.conftest import Cvault, Running

pytestmark = pytest.mark.slow

BIG = 64 * 1024 * 1024


def _big_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(BIG // (4 * 1024 * 1024)):
            chunk = os.urandom(4 * 1024 * 1024)
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _round_trip(cvault: Cvault, tmp_path: Path, *extra: str) -> None:
    expected = _big_file(tmp_path / "big.bin")
    cvault.ok("put", *extra, "big.bin", "big/archive.bin")
    cvault.ok("get", "big/archive.bin", "-o", "back.bin")
    assert _sha256(tmp_path / "back.bin") == expected
    cvault.ok("rm", "big/archive.bin")


def _logged_in(running: Running, tmp_path: Path) -> Cvault:
    cvault = Cvault(tmp_path / "config", tmp_path)
    cvault.ok("login", "--url", running.url, "--token", running.token)
    return cvault


@pytest.mark.softhsm
def test_it_round_trips_64_mib_with_a_pkcs11_key(running: Running, tmp_path) -> None:
    from kms_plugins.testing.softhsm import session_harness

    with session_harness(tmp_path / "softhsm") as harness:
        options = harness.backend._options
        cvault = _logged_in(running, tmp_path)
        init = cvault.ok(
            "key",
            "init",
            "--backend",
            "pkcs11",
            "--module",
            options["MODULE"],
            "--token-label",
            options["TOKEN_LABEL"],
            "--pin-file",
            options["PIN_FILE"],
        )
        assert "pkcs11:" in init.text
        keys = (tmp_path / "config" / "keys.json").read_text()
        assert harness.token.pin not in keys, "only the PIN file's path is recorded"
        _round_trip(cvault, tmp_path)


@pytest.mark.tpm
def test_it_round_trips_64_mib_with_a_tpm_key(running: Running, tmp_path) -> None:
    from kms_plugins.testing.swtpm import running_swtpm

    with running_swtpm(tmp_path / "swtpm") as swtpm:
        cvault = _logged_in(running, tmp_path)
        cvault.ok(
            "key", "init", "--backend", "tpm", "--tcti", swtpm.tcti, "--state-dir", "tpm-state"
        )
        _round_trip(cvault, tmp_path)


def test_it_round_trips_64_mib_in_gateway_mode(running: Running, tmp_path) -> None:
    cvault = _logged_in(running, tmp_path)
    _round_trip(cvault, tmp_path, "--gateway")
