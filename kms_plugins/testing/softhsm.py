"""A private SoftHSM2 token for tests of the PKCS#11 backend.

``session_harness`` writes its own ``softhsm2.conf`` (token directory under a directory the caller
owns), initialises a token with a random SO PIN and user PIN, and yields a ``BackendHarness`` for
a ``Pkcs11KeyBackend`` reading the PIN from a 0600 file. SoftHSM reads ``SOFTHSM2_CONF`` only at
C_Initialize and a process can hold one SoftHSM configuration at a time, so nested or repeated
entries in one process share the first token; only this context manager touches ``os.environ``.

SoftHSM keeps keys in files: it is a test double for an HSM, not one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from kms_plugins.base import KeyBackend
from kms_plugins.testing import OUTAGE_MOVE, BackendHarness

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM_UTIL = "softhsm2-util"


def available() -> str | None:
    """Whether SoftHSM2 tests can run here.

    Returns:
        None when the SoftHSM2 module, ``softhsm2-util`` and python-pkcs11 are all present, else
        a sentence saying what is missing.
    """
    if not os.path.isfile(SOFTHSM_MODULE):
        return f"the SoftHSM2 module {SOFTHSM_MODULE} is not installed (apt-get install softhsm2)"
    if shutil.which(SOFTHSM_UTIL) is None:
        return f"{SOFTHSM_UTIL} is not on PATH (apt-get install softhsm2)"
    if importlib.util.find_spec("pkcs11") is None:
        return "python-pkcs11 is not installed (pip install 'ciphervault[pkcs11]')"
    return None


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token initialised for one test session.

    Attributes:
        conf: the ``softhsm2.conf`` that names ``tokendir``.
        tokendir: the directory SoftHSM keeps the token's files in.
        label: the token label.
        pin, so_pin: the user and security-officer PINs, random per run.
        pin_file: a 0600 file holding ``pin``.
    """

    conf: pathlib.Path
    tokendir: pathlib.Path
    label: str
    pin: str
    so_pin: str
    pin_file: pathlib.Path

    def env(self) -> dict[str, str]:
        """An environment for subprocesses (``softhsm2-util``, ``pkcs11-tool``) on this token."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def options(self) -> dict[str, str]:
        """The OPTIONS of a ``Pkcs11KeyBackend`` on this token (PIN from the file)."""
        return {
            "MODULE": SOFTHSM_MODULE,
            "TOKEN_LABEL": self.label,
            "PIN_FILE": str(self.pin_file),
        }


class SoftHsmHarness(BackendHarness):
    """The conformance harness for the PKCS#11 backend on a private SoftHSM2 token.

    Outage ``"move"`` renames the token directory away and back: SoftHSM notices the missing
    files on the next call, the backend answers ``BackendUnavailable``, and once the directory is
    back the backend re-initialises the module and carries on.
    """

    name = "pkcs11"
    expect_non_extractable = True
    outage_kinds = (OUTAGE_MOVE,)

    def __init__(self, backend: KeyBackend, token: SoftHsmToken) -> None:
        super().__init__(backend)
        self.token = token
        self.secrets = (token.pin, token.so_pin)

    @contextlib.contextmanager
    def outage(self, kind: str) -> Iterator[None]:
        """Move the token directory away for the duration of the block.

        Raises:
            ValueError: ``kind`` is not ``"move"``.
        """
        if kind != OUTAGE_MOVE:
            raise ValueError(f"SoftHSM harness cannot cause a {kind!r} outage")
        away = self.token.tokendir.with_name(self.token.tokendir.name + ".away")
        self.token.tokendir.rename(away)
        try:
            yield
        finally:
            away.rename(self.token.tokendir)


_active: list[SoftHsmToken] = []


def _init_token(base_dir: pathlib.Path) -> SoftHsmToken:
    tokendir = base_dir / "tokens"
    tokendir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = base_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    label = "cv-test-" + secrets.token_hex(4)
    pin = secrets.token_hex(8)
    so_pin = secrets.token_hex(8)
    pin_file = base_dir / "user.pin"
    descriptor = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(pin + "\n")
    token = SoftHsmToken(conf, tokendir, label, pin, so_pin, pin_file)
    argv = [SOFTHSM_UTIL, "--init-token", "--free", "--label", label]
    subprocess.run(
        [*argv, "--so-pin", so_pin, "--pin", pin],
        env=token.env(),
        check=True,
        capture_output=True,
    )
    return token


@contextlib.contextmanager
def session_harness(base_dir: pathlib.Path) -> Iterator[SoftHsmHarness]:
    """A harness on a fresh SoftHSM2 token under ``base_dir``, for one test session.

    Sets ``SOFTHSM2_CONF`` in this process for the duration (restored afterwards). If a harness is
    already active in the process, the new one shares its token, since SoftHSM cannot hold two
    configurations at once.

    Args:
        base_dir: a private directory (``tmp_path_factory.mktemp(...)``) for the configuration,
            the token files and the PIN file.

    Yields:
        A ``SoftHsmHarness`` whose backend reads its PIN from a 0600 file.

    Raises:
        RuntimeError: SoftHSM2 or python-pkcs11 is missing (see ``available``).
        subprocess.CalledProcessError: ``softhsm2-util`` could not initialise the token.
    """
    from kms_plugins.pkcs11 import Pkcs11KeyBackend, forget_module_state

    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    previous = os.environ.get("SOFTHSM2_CONF")
    owner = not _active
    if owner:
        _active.append(_init_token(base_dir))
        os.environ["SOFTHSM2_CONF"] = str(_active[0].conf)
        forget_module_state(SOFTHSM_MODULE)  # SoftHSM reads the configuration at C_Initialize
    token = _active[0]
    backend = Pkcs11KeyBackend("pkcs11", token.options())
    try:
        yield SoftHsmHarness(backend, token)
    finally:
        backend.close()
        if owner:
            _active.clear()
            forget_module_state(SOFTHSM_MODULE)
            if previous is None:
                os.environ.pop("SOFTHSM2_CONF", None)
            else:
                os.environ["SOFTHSM2_CONF"] = previous
