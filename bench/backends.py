"""Wrap and unwrap rates of each key backend, beside cryptography's own AES-GCM and AES key wrap.

Usage (after `make test` has installed the components, or on any machine with them):

    .venv/bin/python bench/backends.py [--seconds 2] [--backends local,pkcs11,tpm,kmip]

Every backend runs against its real component, started here on loopback under a temporary
directory (SoftHSM2 token, swtpm behind tpm2-abrmd, PyKMIP's server), on 1 and on 2 processes.
The baselines are measured in the same run on the same machine: `AESGCM` encrypt/decrypt of a
32-byte key with 64 bytes of associated data, and RFC 3394 AES key wrap/unwrap of a 32-byte
key. The last column is the backend's rate as a share of the AES-GCM baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from kms_plugins.base import KeyBackend

HARNESSES = {
    "local": "kms_plugins.testing.local",
    "pkcs11": "kms_plugins.testing.softhsm",
    "tpm": "kms_plugins.testing.swtpm",
    "kmip": "kms_plugins.testing.kmip_server",
}
CONTEXT = {"tenant": "bench", "object": "0123456789abcdef", "version": "1"}


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``operation`` over about ``seconds``."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        operation()
        count += 1
        if count % 16 == 0 and time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - start)


def _child(
    backend: KeyBackend, key_id: str, which: str, seconds: float, out: multiprocessing.Queue
) -> None:
    dek = os.urandom(32)
    wrapped = backend.wrap(key_id, dek, CONTEXT)
    if which == "wrap":
        out.put(rate(lambda: backend.wrap(key_id, dek, CONTEXT), seconds))
    else:
        out.put(rate(lambda: backend.unwrap(wrapped, CONTEXT), seconds))


def backend_rate(
    backend: KeyBackend, key_id: str, which: str, processes: int, seconds: float
) -> float:
    """Total wrap or unwrap operations per second over ``processes`` forked processes."""
    backend.close()  # each child opens its own connection after the fork
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = context.Queue()
    children = [
        context.Process(target=_child, args=(backend, key_id, which, seconds, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    total = sum(out.get(timeout=seconds * 10 + 120) for _ in children)
    for child in children:
        child.join()
    return total


def _create_in_child(backend: KeyBackend, out: multiprocessing.Queue) -> None:
    out.put(backend.create_key().key_id)


def create_key_elsewhere(backend: KeyBackend) -> str:
    """Create the key in a child process, so this process never opens the backend itself.

    Some connections must not be inherited across fork (the TPM resource manager's D-Bus
    connection), and every measured process must open its own anyway.
    """
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = context.Queue()
    child = context.Process(target=_create_in_child, args=(backend, out))
    child.start()
    key_id: str = out.get(timeout=120)
    child.join()
    return key_id


@contextlib.contextmanager
def tpm_through_abrmd(base_dir: Path) -> Iterator[KeyBackend]:
    """swtpm behind tpm2-abrmd, as several processes must reach a TPM (like /dev/tpmrm0)."""
    from kms_plugins.testing import swtpm
    from kms_plugins.tpm import TpmKeyBackend

    with (
        swtpm.running_swtpm(base_dir / "state") as process,
        swtpm.abrmd(process, base_dir) as (
            tcti,
            env,
        ),
    ):
        os.environ.update(env)
        yield TpmKeyBackend("tpm-bench", {"TCTI": tcti, "STATE_DIR": str(base_dir / "keys")})


def baselines(seconds: float) -> dict[str, float]:
    key, dek, aad = os.urandom(32), os.urandom(32), os.urandom(64)
    gcm = AESGCM(key)
    nonce = os.urandom(12)
    sealed = gcm.encrypt(nonce, dek, aad)
    wrapped = aes_key_wrap(key, dek)
    return {
        "AESGCM encrypt": rate(lambda: gcm.encrypt(os.urandom(12), dek, aad), seconds),
        "AESGCM decrypt": rate(lambda: gcm.decrypt(nonce, sealed, aad), seconds),
        "AES key wrap": rate(lambda: aes_key_wrap(key, dek), seconds),
        "AES key unwrap": rate(lambda: aes_key_unwrap(key, wrapped), seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--backends", default=",".join(HARNESSES))
    args = parser.parse_args()
    names = [n.strip() for n in args.backends.split(",") if n.strip()]

    base = baselines(args.seconds)
    print(f"{'baseline (1 process)':34} {'ops/s':>12}")
    for name, value in base.items():
        print(f"{name:34} {value:12,.0f}")
    print()
    print(f"{'backend':10} {'op':7} {'procs':>5} {'ops/s':>10} {'vs AESGCM':>10}")
    with (
        tempfile.TemporaryDirectory(prefix="cvault-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        for name in names:
            module = importlib.import_module(HARNESSES[name])
            reason = module.available()
            if reason is not None:
                print(f"{name:10} skipped: {reason}")
                continue
            base_dir = Path(tmp) / name
            base_dir.mkdir()
            if name == "tpm":
                reason = module.abrmd_available()
                if reason is not None:
                    print(f"{name:10} skipped: {reason}")
                    continue
                backend = stack.enter_context(tpm_through_abrmd(base_dir))
            else:
                backend = stack.enter_context(module.session_harness(base_dir)).backend
            key_id = create_key_elsewhere(backend)
            for which, baseline in (("wrap", "AESGCM encrypt"), ("unwrap", "AESGCM decrypt")):
                for processes in (1, 2):
                    value = backend_rate(backend, key_id, which, processes, args.seconds)
                    share = value / base[baseline]
                    print(f"{name:10} {which:7} {processes:5} {value:10,.0f} {share:10.2%}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
