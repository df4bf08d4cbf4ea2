"""A local keystore for the conformance suite (no outside component)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from kms_plugins.local import LocalKeyBackend
from kms_plugins.testing import OUTAGE_MOVE, BackendHarness


def available() -> str | None:
    return None


class LocalHarness(BackendHarness):
    name = "local"
    expect_non_extractable = False
    outage_kinds = (OUTAGE_MOVE,)

    def __init__(
        self, backend: LocalKeyBackend, directory: Path, secrets_: tuple[str, ...]
    ) -> None:
        super().__init__(backend)
        self.directory = directory
        self.secrets = secrets_

    @contextlib.contextmanager
    def outage(self, kind: str) -> Iterator[None]:
        if kind != OUTAGE_MOVE:
            raise ValueError(kind)
        away = self.directory.with_name(self.directory.name + ".away")
        self.directory.rename(away)
        try:
            yield
        finally:
            away.rename(self.directory)


@contextlib.contextmanager
def session_harness(base_dir: Path) -> Iterator[BackendHarness]:
    """A passphrase-protected keystore under ``base_dir``; the passphrase is the secret."""
    directory = base_dir / "keystore"
    directory.mkdir()
    passphrase = f"pass-{secrets.token_hex(12)}"
    backend = LocalKeyBackend(
        "local-test", {"PATH": str(directory / "keys.json"), "PASSPHRASE": passphrase}
    )
    yield LocalHarness(backend, directory, (passphrase,))
    backend.close()
