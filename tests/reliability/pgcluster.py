"""A private PostgreSQL cluster for tests that stop and restart the server.

The machine's own server is shared by the whole suite; a test that restarts PostgreSQL gets its
own cluster (initdb in a temporary directory, loopback, a free port, trust auth for the local
user ``postgres``). As root the cluster runs as the ``postgres`` system user, as PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.core.helpers import free_port


def binaries() -> Path | None:
    """The directory of the newest installed server binaries (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivateCluster:
    """One PostgreSQL cluster: ``start``, ``stop``, ``restart``, ``url(db)``."""

    def __init__(self, base: Path) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = bindir
        self.port = free_port()
        self.data = base / "pgdata"
        self.log = base / "postgres.log"
        self._as_root = os.geteuid() == 0
        base.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            owner = pwd.getpwnam("postgres")
            for path in (base, *base.parents):
                if path == Path("/"):
                    break
                os.chmod(path, os.stat(path).st_mode | 0o011)  # noqa: S103 (postgres must reach its files)
            os.chown(base, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{base}'\nfsync = off\n"
            )

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
