"""A marker written into files uploaded in both modes is found nowhere on the server side."""

from __future__ import annotations

from pathlib import Path

from tests.client.conftest import Cvault, Running

MARKER = b"CVAULT-MARKER-5e1b0c77-PLAINTEXT"


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
