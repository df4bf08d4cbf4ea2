"""Encrypted names and the progress bar, in-process (no server needed)."""

from __future__ import annotations

import io
import os

import pytest

from vault.client.errors import InvalidName
from vault.client.names import PREFIX, NameCipher
from vault.client.progress import THRESHOLD, Progress


def test_it_encrypts_names_deterministically_and_reversibly() -> None:
    cipher = NameCipher(os.urandom(32))
    server_name = cipher.encrypt("reports/2025 Q1.pdf")
    assert server_name == cipher.encrypt("reports/2025 Q1.pdf")
    assert server_name.startswith(PREFIX)
    assert "reports" not in server_name
    assert cipher.decrypt(server_name) == "reports/2025 Q1.pdf"
    assert cipher.encrypt("reports/2025 Q2.pdf") != server_name
    assert len(server_name) <= 1024
    assert len(cipher.encrypt("x" * 512)) <= 1024


def test_it_hides_name_lengths_within_a_block() -> None:
    cipher = NameCipher(os.urandom(32))
    assert len({len(cipher.encrypt("a" * n)) for n in range(1, 16)}) == 1


def test_it_rejects_altered_foreign_and_unknown_names() -> None:
    cipher = NameCipher(os.urandom(32))
    server_name = cipher.encrypt("a.txt")
    flipped = server_name[:-2] + ("A" if server_name[-2] != "A" else "B") + server_name[-1]
    assert cipher.decrypt(flipped) is None
    assert NameCipher(os.urandom(32)).decrypt(server_name) is None
    assert cipher.decrypt("a.txt") is None
    assert cipher.decrypt(PREFIX + "!!!") is None


@pytest.mark.parametrize("name", ["", "a\nb", "x" * 513, "tab\there"])
def test_it_refuses_bad_names(name: str) -> None:
    with pytest.raises(InvalidName):
        NameCipher(os.urandom(32)).encrypt(name)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_only_for_large_transfers_to_a_terminal() -> None:
    terminal = _Terminal()
    bar = Progress("big.bin", THRESHOLD * 2, terminal)
    bar.update(THRESHOLD)
    bar.finish()
    assert "big.bin" in terminal.getvalue()
    assert "MiB" in terminal.getvalue()
    small = _Terminal()
    Progress("small", 10, small).finish()
    assert small.getvalue() == ""
    piped = io.StringIO()
    Progress("big", THRESHOLD * 2, piped).finish()
    assert piped.getvalue() == ""
