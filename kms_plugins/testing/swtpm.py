"""A real swtpm (and, for several processes, tpm2-abrmd) for the tests, on loopback.

``session_harness`` starts swtpm with its state under a temporary directory, on free loopback
ports, and yields a ``BackendHarness`` whose backend talks to it directly (no resource manager:
one process). ``abrmd`` starts a private D-Bus session bus and tpm2-abrmd in front of an swtpm,
for the tests that run several processes at once. Every process started here is stopped on
exit, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kms_plugins.testing import OUTAGE_FREEZE, OUTAGE_STOP, BackendHarness

READY_TIMEOUT = 30.0
HARNESS_TIMEOUT = 3.0  # the backend's TIMEOUT in the harness: outages fail fast
_GET_RANDOM = struct.pack(">HIIH", 0x8001, 12, 0x17B, 8)


def available() -> str | None:
    """None when swtpm and tpm2-pytss are usable here, else why not."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)"
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        return f"tpm2-pytss is not importable ({exc})"
    return None


def abrmd_available() -> str | None:
    """None when tpm2-abrmd and a D-Bus daemon can be started here, else why not."""
    for tool in ("tpm2-abrmd", "dbus-daemon"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install tpm2-abrmd dbus)"
    return None


def _free_port_pair() -> int:
    """A port P such that P and P+1 were both free on 127.0.0.1 a moment ago."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no pair of free loopback ports")


def _probe(port: int, timeout: float = 1.0) -> bool:
    """Whether a TPM answers a GetRandom on the port (a raw command, no TSS involved)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_GET_RANDOM)
            return len(sock.recv(64)) >= 10
    except OSError:
        return False


class SwtpmProcess:
    """One swtpm on loopback with its state in a directory; can stop, restart and freeze.

    Attributes:
        port: the TPM data port (the control channel is ``port + 1``).
        tcti: the TCTI string that reaches it directly.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("swtpm is not running")
        return self._process.pid

    def start(self) -> None:
        """Start swtpm (on new free ports the first time, on the same ports after a stop)."""
        restart = bool(self.port)
        for _ in range(10 if restart else 5):
            if not restart:
                self.port = _free_port_pair()
            if self._spawn():
                return
            time.sleep(0.3)  # a restart keeps its ports: wait for the old sockets to go
        raise RuntimeError(f"swtpm did not start; see {self.state_dir / 'swtpm.log'}")

    def _spawn(self) -> bool:
        if self._log is None:
            self._log = open(self.state_dir / "swtpm.log", "ab")  # noqa: SIM115
        command = [
            "swtpm",
            "socket",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--tpm2",
            "--server",
            f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
        ]
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if _probe(self.port):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        """Stop swtpm (thawing it first if frozen); its state stays in ``state_dir``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def running_swtpm(state_dir: Path) -> Iterator[SwtpmProcess]:
    """An swtpm for the duration of the block, stopped on exit whatever happens."""
    swtpm = SwtpmProcess(state_dir)
    try:
        swtpm.start()
        yield swtpm
    finally:
        swtpm.close()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def abrmd(swtpm: SwtpmProcess, base_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private D-Bus session bus and tpm2-abrmd in front of ``swtpm``.

    Yields the TCTI string for clients and the environment variables they need (the bus
    address). Nothing here loads the tabrmd TCTI into the calling process: GLib's D-Bus state
    does not survive fork, so a test that forks workers must let only the workers open it.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    bus: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    log = open(base_dir / "abrmd.log", "ab")  # noqa: SIM115
    try:
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nosyslog", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        env = {"DBUS_SESSION_BUS_ADDRESS": address}
        command = ["tpm2-abrmd", "--session", "--flush-all", f"--tcti={swtpm.tcti}"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        daemon = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
        tcti = "tabrmd:bus_type=session"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"tpm2-abrmd exited; see {base_dir / 'abrmd.log'}")
            check = subprocess.run(
                ["tpm2_getrandom", "-T", tcti, "--hex", "4"],
                env={**os.environ, **env, "TSS2_LOG": "all+none"},
                capture_output=True,
                timeout=READY_TIMEOUT,
                check=False,
            )
            if check.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("tpm2-abrmd did not answer")
            time.sleep(0.1)
        yield tcti, env
    finally:
        _stop(daemon)
        _stop(bus)
        log.close()


class SwtpmHarness(BackendHarness):
    """The tpm backend on a direct swtpm connection, for the conformance suite.

    Outages: ``stop`` stops swtpm and restarts it with the same state and ports; ``freeze``
    sends SIGSTOP and, on exit, SIGCONT. After either, it waits until the backend answers.
    """

    name = "tpm"
    expect_non_extractable = True
    outage_kinds = (OUTAGE_STOP, OUTAGE_FREEZE)

    def __init__(self, backend: object, swtpm: SwtpmProcess) -> None:
        from kms_plugins.tpm import TpmKeyBackend

        assert isinstance(backend, TpmKeyBackend)
        super().__init__(backend)
        self.swtpm = swtpm

    @contextlib.contextmanager
    def outage(self, kind: str) -> Iterator[None]:
        if kind == OUTAGE_STOP:
            self.swtpm.stop()
            try:
                yield
            finally:
                self.swtpm.start()
                self._wait_until_answering()
        elif kind == OUTAGE_FREEZE:
            self.swtpm.freeze()
            try:
                yield
            finally:
                self.swtpm.thaw()
                self._wait_until_answering()
        else:
            raise ValueError(f"unknown outage kind {kind!r}")

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT + 3 * self.backend.timeout
        while not self.backend.health().ok:
            if time.monotonic() > deadline:
                raise RuntimeError("the tpm backend did not answer again after the outage")
            time.sleep(0.1)


@contextlib.contextmanager
def session_harness(base_dir: Path) -> Iterator[BackendHarness]:
    """swtpm on free loopback ports, state under ``base_dir``, and a backend talking to it.

    The backend connects directly (no tpm2-abrmd): the conformance suite runs in one process,
    and an outage must be the TPM's own, not a broker's.
    """
    from kms_plugins.tpm import TpmKeyBackend

    with running_swtpm(base_dir / "swtpm-state") as swtpm:
        backend = TpmKeyBackend(
            "tpm-test",
            {"TCTI": swtpm.tcti, "STATE_DIR": str(base_dir / "keys"), "TIMEOUT": HARNESS_TIMEOUT},
        )
        try:
            yield SwtpmHarness(backend, swtpm)
        finally:
            backend.close()
