"""cvault refuses to send a token over plain http to a remote host."""

from __future__ import annotations

import os
import subprocess
import sys


def test_it_refuses_plain_http_to_a_remote_host(tmp_path) -> None:
    env = {
        **os.environ,
        "CVAULT_CONFIG_DIR": str(tmp_path),
        "CVAULT_URL": "http://vault.example.invalid",
        "CVAULT_TOKEN": "cvt_000000000000_" + "a" * 43,
    }
    result = subprocess.run(
        [sys.executable, "-m", "vault.client.cli", "ls"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "plain http to a remote host" in result.stderr
    assert env["CVAULT_TOKEN"] not in result.stderr + result.stdout
