"""Peak memory of 1 GiB `cvault put` / `get`, and 4 KiB round trips, against a running server.

Usage::

    .venv/bin/python bench/objects.py [--size 1G] [--seconds 10] [--objects 16] [--tmpdir DIR]

Everything runs here, on loopback, under a temporary directory that is removed at the end: a
SoftHSM2 token (``kms_plugins.testing.softhsm``), and ``manage.py serve`` (gunicorn, one gthread
worker on the embedded SQLite) on a free port, with ``VAULT_KEY_BACKENDS`` holding a ``pkcs11``
backend on that token beside the default ``local`` one. A tenant ``bench`` is bound to
``pkcs11``, so every gateway version's DEK is wrapped on the token; a ``member`` token of that
tenant drives both the ``cvault`` CLI (``--backend local`` client key) and the raw HTTP calls.

Memory: each transfer of a ``--size`` file of random bytes, in client-side mode (``cvault put`` /
``get``, the client encrypts) and in gateway mode (``cvault put --gateway`` / ``get --gateway``,
the server encrypts with a pkcs11-wrapped DEK). The client's figure is its peak RSS
(``wait4``'s ``ru_maxrss``) minus the peak RSS of the same command on a 4 KiB file: the same
process with the same imports, connections and key operations, just no data. The server's
figure is its gunicorn worker's ``VmHWM`` after the transfer minus its ``VmRSS`` just before,
with the high-water mark reset first (``clear_refs``), after a 4 KiB warm-up of the same kind.
Target: at most 64 MiB on either side.

Round trips: one round trip is a 4 KiB gateway upload (``PUT /api/v1/objects/ID/content/``, a
new version, its DEK wrapped on the token) plus its download (``GET`` of the same content,
checked), over one reused HTTP/1.1 connection. ``--objects`` gateway objects are created first
and reused in turn, so every PUT adds a version to one of them. The baseline is a pair of
requests to the authenticated no-op ``GET /api/v1/tenant/`` on the same connection, in the same
run, alternating with the round trips in two halves. Target: at least 40% of the pair rate.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _processes import free_port, manage, stop_group  # noqa: E402

from kms_plugins.testing import softhsm  # noqa: E402

MIB = 1024 * 1024
SMALL = 4096
TENANT = "bench"
MEMORY_TARGET = 64 * MIB
RATIO_TARGET = 0.40


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def human(size: int) -> str:
    for unit, factor in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def write_random(path: Path, size: int) -> None:
    """``size`` fresh random bytes (no repeated blocks, so nothing can compress or dedup)."""
    with path.open("wb") as dst:
        remaining = size
        while remaining:
            piece = min(remaining, 4 * MIB)
            dst.write(os.urandom(piece))
            remaining -= piece


def same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as left, b.open("rb") as right:
        while True:
            x, y = left.read(4 * MIB), right.read(4 * MIB)
            if x != y:
                return False
            if not x:
                return True


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_hwm(pid: int) -> bool:
    """Reset ``pid``'s peak RSS to its current RSS (Linux >= 4.0; needs ownership or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.extend(int(x) for x in (task / "children").read_text().split())
    return found


# -- the server ----------------------------------------------------------------------------------


class Server:
    """``manage.py serve`` in its own session, output drained as it arrives."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.port = port
        self.lines: deque[str] = deque(maxlen=2000)
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "serve", "--no-demo", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        if self.process.stdout is None:
            return
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the server exited:\n" + "\n".join(self.lines))
            with contextlib.suppress(OSError, urllib.error.URLError):
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError("the server did not answer in time:\n" + "\n".join(self.lines))

    def worker(self) -> int:
        """The pid of the (single) gunicorn worker: the serve process's child."""
        pids = children_of(self.process.pid)
        if len(pids) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {pids}")
        return pids[0]

    def stop(self) -> None:
        stop_group(self.process)


def server_env(data_dir: Path, port: int, pkcs11_options: dict[str, str]) -> dict[str, str]:
    backends = {
        "local": {
            "BACKEND": "kms_plugins.local.LocalKeyBackend",
            "OPTIONS": {
                "PATH": str(data_dir / "keystore" / "keys.json"),
                "KEY_FILE": str(data_dir / "keystore" / "master.key"),
            },
        },
        "pkcs11": {"BACKEND": "kms_plugins.pkcs11.Pkcs11KeyBackend", "OPTIONS": pkcs11_options},
    }
    (data_dir / "keystore").mkdir(parents=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {
            "VAULT_DATA_DIR": str(data_dir),
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "VAULT_KEY_BACKENDS": json.dumps(backends),
        }
    )
    return env


@contextlib.contextmanager
def running_server(tmp: Path) -> Iterator[tuple[Server, str]]:
    """A server with tenant ``bench`` bound to a fresh SoftHSM token; yields it and a token."""
    with softhsm.session_harness(tmp / "softhsm") as harness:
        harness.backend.close()  # only the server opens the token
        port = free_port()
        env = server_env(tmp / "data", port, harness.token.options())
        manage(env, "migrate", "--verbosity", "0")
        manage(env, "tenant_create", TENANT)
        print(manage(env, "tenant_bind_backend", "--tenant", TENANT, "--backend", "pkcs11").strip())
        token = manage(env, "token_create", "--tenant", TENANT, "--role", "member").strip()
        server = Server(env, port)
        try:
            server.wait_ready()
            yield server, token
        finally:
            server.stop()


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    max_rss: int
    server_growth: int | None


class Cli:
    def __init__(self, config_dir: Path, server: Server) -> None:
        self.server = server
        self.env = {**os.environ, "CVAULT_CONFIG_DIR": str(config_dir)}
        self.env.pop("CVAULT_URL", None)
        self.env.pop("CVAULT_TOKEN", None)

    def run(self, *args: str, watch_server: bool = False) -> Run:
        """Run ``cvault ARGS``; its peak RSS, and the server worker's growth if asked."""
        worker = self.server.worker() if watch_server else None
        before = 0
        if worker is not None:
            if not reset_hwm(worker):
                raise RuntimeError("cannot reset the worker's VmHWM (clear_refs); run as root")
            before = proc_status(worker)["VmRSS"]
        start = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "vault.client.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        error = process.stderr.read().decode() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        if process.returncode != 0:
            raise RuntimeError(f"cvault {' '.join(args)} exited {process.returncode}: {error}")
        growth = None
        if worker is not None:
            if self.server.worker() != worker:
                raise RuntimeError("the gunicorn worker was replaced during the transfer")
            growth = proc_status(worker)["VmHWM"] - before
        return Run(elapsed, usage.ru_maxrss * 1024, growth)


@dataclass
class Transfer:
    label: str
    seconds: float
    client_growth: int
    client_peak: int
    server_growth: int


def memory(cli: Cli, size: int, work: Path) -> tuple[int, list[Transfer]]:
    """The four 1 GiB transfers; returns the RSS of ``cvault --help`` and the rows."""
    help_rss = cli.run("--help").max_rss
    small, big = work / "small.bin", work / "big.bin"
    write_random(small, SMALL)
    rows = []
    try:
        for mode, flag in (("client-side", []), ("gateway", ["--gateway"])):
            name = f"bench-{mode}"
            # The idle runs: the same commands on 4 KiB (which also warms the server up).
            put_idle = cli.run("put", *flag, str(small), name, watch_server=True)
            get_idle = cli.run("get", name, *flag, "-o", str(work / "small.out"))
            write_random(big, size)
            put = cli.run("put", *flag, str(big), name, watch_server=True)
            got = work / "big.out"
            get = cli.run("get", name, *flag, "-o", str(got), watch_server=True)
            if not same_file(big, got):
                raise RuntimeError(f"{mode}: the downloaded file differs from the uploaded one")
            big.unlink()
            got.unlink()
            for op, run, idle in (("put", put, put_idle), ("get", get, get_idle)):
                rows.append(
                    Transfer(
                        f"{mode} {op}",
                        run.seconds,
                        run.max_rss - idle.max_rss,
                        run.max_rss,
                        run.server_growth or 0,
                    )
                )
    finally:
        for path in (small, big, work / "big.out", work / "small.out"):
            path.unlink(missing_ok=True)
    return help_rss, rows


# -- round trips ---------------------------------------------------------------------------------


class Http:
    """One persistent HTTP/1.1 connection with the bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = {"Authorization": f"Bearer {token}"}

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = dict(self.auth)
        if content_type:
            headers["Content-Type"] = content_type
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.will_close:
            raise RuntimeError(f"{method} {path}: the server closed the connection")
        return response.status, data

    def expect(self, status: int, method: str, path: str, **kwargs: Any) -> bytes:
        got, data = self.request(method, path, **kwargs)
        if got != status:
            raise RuntimeError(f"{method} {path}: {got} {data[:300]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


def rate(operation: Any, seconds: float) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        operation()
        count += 1
    return count, time.perf_counter() - start


def round_trips(port: int, token: str, seconds: float, objects: int) -> tuple[float, float]:
    http = Http(port, token)
    try:
        paths = []
        for index in range(objects):
            body = json.dumps({"name": f"rt-{index:04d}", "mode": "gateway"}).encode()
            created = json.loads(
                http.expect(
                    201, "POST", "/api/v1/objects/", body=body, content_type="application/json"
                )
            )
            paths.append(f"/api/v1/objects/{created['id']}/content/")
        state = {"next": 0}

        def noop_pair() -> None:
            http.expect(200, "GET", "/api/v1/tenant/")
            http.expect(200, "GET", "/api/v1/tenant/")

        def round_trip() -> None:
            path = paths[state["next"] % len(paths)]
            state["next"] += 1
            payload = os.urandom(SMALL)
            http.expect(201, "PUT", path, body=payload, content_type="application/octet-stream")
            if http.expect(200, "GET", path) != payload:
                raise RuntimeError(f"GET {path} did not return what was uploaded")

        rate(noop_pair, 1.0)  # warm-up
        rate(round_trip, 1.0)
        totals = {"noop": [0, 0.0], "rt": [0, 0.0]}
        for _ in range(2):
            for key, operation in (("noop", noop_pair), ("rt", round_trip)):
                count, elapsed = rate(operation, seconds / 2)
                totals[key][0] += count
                totals[key][1] += elapsed
    finally:
        http.close()
    return totals["noop"][0] / totals["noop"][1], totals["rt"][0] / totals["rt"][1]


# -- main ----------------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / MIB:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="the large file's size (default 1G)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate measurement")
    parser.add_argument("--objects", type=int, default=16, help="objects reused by round trips")
    parser.add_argument("--tmpdir", default=None, help="where the temporary files go")
    args = parser.parse_args()
    size = parse_size(args.size)
    reason = softhsm.available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server: manage.py serve")
    print("(gunicorn, 1 gthread worker, SQLite), tenant bound to pkcs11 on SoftHSM2; loopback")
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="cvault-bench-") as name:
        tmp = Path(name)
        try:
            with running_server(tmp) as (server, token):
                cli = Cli(tmp / "client", server)
                url = f"http://127.0.0.1:{server.port}"
                cli.run("login", "--url", url, "--token", token)
                cli.run("key", "init", "--backend", "local")
                work = tmp / "work"
                work.mkdir()
                help_rss, rows = memory(cli, size, work)
                noop, rt = round_trips(server.port, token, args.seconds, args.objects)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"Peak memory, {human(size)} of random bytes; growth over the same command on 4 KiB")
    print(f"(cvault --help alone peaks at {help_rss / MIB:.1f} MiB RSS; times include start-up)")
    print(
        f"{'transfer':16} {'time s':>6} {'MB/s':>5} {'client peak':>11} {'over --help':>11} "
        f"{'client growth':>13} {'server growth':>13}  <= 64 MiB"
    )
    worst = 0
    for row in rows:
        worst = max(worst, row.client_growth, row.server_growth)
        ok = "ok" if max(row.client_growth, row.server_growth) <= MEMORY_TARGET else "MISSED"
        print(
            f"{row.label:16} {row.seconds:6.2f} {size / row.seconds / 1e6:5.0f} "
            f"{mib(row.client_peak):>7} MiB {mib(row.client_peak - help_rss):>7} MiB "
            f"{mib(row.client_growth):>9} MiB "
            f"{mib(row.server_growth):>9} MiB  {ok}"
        )
    print()
    ratio = rt / noop
    print(
        f"Round trips over one connection, {args.seconds:g} s each, alternating halves; "
        f"{args.objects} gateway objects reused in turn (each PUT adds a version)"
    )
    print(f"{'measure':44} {'per s':>9}")
    print(f"{'no-op pair (2 x GET /api/v1/tenant/)':44} {noop:9.1f}")
    print(f"{'round trip (4 KiB PUT + GET, pkcs11 DEK)':44} {rt:9.1f}")
    verdict = "ok" if ratio >= RATIO_TARGET else "MISSED"
    print(f"{'ratio round trip / no-op pair':44} {ratio:9.1%}  target >= 40%: {verdict}")
    print(f"worst memory growth: {worst / MIB:.1f} MiB (target <= 64 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
