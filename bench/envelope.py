"""Envelope throughput against raw AES-GCM and against Debian's ``age``, in one run.

Usage::

    .venv/bin/python bench/envelope.py [--sizes 1M,64M,1G] [--segment-sizes 64K,1M]

For each size and segment size:

- in memory (sizes up to 256 MiB): the envelope (``Encryptor.encrypt_body_stream`` and
  ``Decryptor.decrypt_body_stream`` over an in-memory buffer, into a sink that drops the bytes)
  against raw ``AESGCM.encrypt_into`` / ``decrypt_into``, one call per segment-sized chunk of the
  same bytes, into one reused output buffer, with a fixed nonce and a 32-byte associated data.
  That is the fastest raw form ``cryptography`` offers here (no allocation per call, no nonce
  bookkeeping, no framing); the envelope pays for its key schedule, header, nonces and checks.
- from file to file (every size; the plaintext is a temporary file, streamed, constant
  memory): the envelope (``encrypt_stream`` / ``decrypt_stream``), raw AES-GCM with the same
  ``readinto`` / ``write`` loop, and ``age`` to an X25519 recipient (``age-keygen``), when
  ``age`` is on PATH. ``age`` runs as a subprocess, so its times include process start-up (a
  few milliseconds: it matters at 1 MiB only). Files live in the page cache; nothing is synced.

Throughput is plaintext bytes per second, in MB/s (10**6 bytes), the best of several runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugins.types import KeyRef, WrappedKey
from vault.crypto import (
    DEFAULT_SEGMENT_SIZE,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    decrypt_stream,
    encrypt_stream,
    parse_header,
)

MIB = 1024 * 1024
MEMORY_LIMIT = 256 * MIB
CONTEXT = {"tenant": "bench", "object": "bench-object", "version": "1"}
# Benchmark-only key material, drawn fresh each run; the stanza is a placeholder.
STANZAS = [WrappedKey("local", KeyRef("bench-key", 1), "A256GCM", b"\0" * 60)]
FIXED_NONCE = b"\0" * 12
AAD = b"\0" * 32


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


class Sink:
    """Counts and drops what is written (for in-memory runs)."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


def best_of(runs: int, func: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def best_of_alternating(
    runs: int, first: Callable[[], object], second: Callable[[], object]
) -> tuple[float, float]:
    """Best times of two functions run alternately, so page-cache and write-back state hit
    both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(runs):
        for slot, func in enumerate((first, second)):
            start = time.perf_counter()
            func()
            best[slot] = min(best[slot], time.perf_counter() - start)
    return best[0], best[1]


def runs_for(size: int) -> int:
    return max(3, min(50, (256 * MIB) // max(size, 1)))


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def raw_encrypt_memory(aead: AESGCM, data: memoryview, segment: int) -> None:
    out = bytearray(segment + TAG_SIZE)
    for offset in range(0, len(data), segment):
        chunk = data[offset : offset + segment]
        aead.encrypt_into(FIXED_NONCE, chunk, AAD, memoryview(out)[: len(chunk) + TAG_SIZE])


def raw_decrypt_memory(aead: AESGCM, body: memoryview, segment: int) -> None:
    out = bytearray(segment)
    full = segment + TAG_SIZE
    for offset in range(0, len(body), full):
        chunk = body[offset : offset + full]
        aead.decrypt_into(FIXED_NONCE, chunk, AAD, memoryview(out)[: len(chunk) - TAG_SIZE])


def raw_body(aead: AESGCM, data: memoryview, segment: int) -> bytes:
    parts = []
    for offset in range(0, len(data), segment):
        parts.append(aead.encrypt(FIXED_NONCE, data[offset : offset + segment], AAD))
    return b"".join(parts)


def raw_file_encrypt(path_in: Path, path_out: Path, chunk: int, aead: AESGCM) -> None:
    buffer = bytearray(chunk)
    out = bytearray(chunk + TAG_SIZE)
    with path_in.open("rb") as src, path_out.open("wb") as dst:
        while True:
            got = src.readinto(buffer)
            if not got:
                return
            aead.encrypt_into(
                FIXED_NONCE, memoryview(buffer)[:got], AAD, memoryview(out)[: got + TAG_SIZE]
            )
            dst.write(memoryview(out)[: got + TAG_SIZE])


def raw_file_decrypt(path_in: Path, path_out: Path, segment: int, aead: AESGCM) -> None:
    full = segment + TAG_SIZE
    buffer = bytearray(full)
    out = bytearray(segment)
    with path_in.open("rb") as src, path_out.open("wb") as dst:
        while True:
            got = src.readinto(buffer)
            if not got:
                return
            size = got - TAG_SIZE
            aead.decrypt_into(FIXED_NONCE, memoryview(buffer)[:got], AAD, memoryview(out)[:size])
            dst.write(memoryview(out)[:size])


def write_plaintext(path: Path, size: int) -> None:
    block = os.urandom(min(size, 16 * MIB))
    with path.open("wb") as dst:
        remaining = size
        while remaining:
            piece = block[: min(remaining, len(block))]
            dst.write(piece)
            remaining -= len(piece)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream_memory_growth(plain: Path, segment: int, workdir: Path) -> int:
    """Peak RSS growth over its idle size of a child process that streams the envelope."""
    result = subprocess.run(  # noqa: S603
        [sys.executable, __file__, "--child-stream", str(plain), str(workdir), str(segment)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.strip())


def child_stream(plain: Path, workdir: Path, segment: int) -> None:
    dek = os.urandom(32)
    sealed, opened = workdir / "child.cve", workdir / "child.out"
    idle = peak_rss()
    with plain.open("rb") as src, sealed.open("wb") as dst:
        encrypt_stream(src, dst, dek=dek, context=CONTEXT, stanzas=STANZAS, segment_size=segment)
    with sealed.open("rb") as src, opened.open("wb") as dst:
        decrypt_stream(src, dst, key=dek, context=CONTEXT)
    print(peak_rss() - idle)
    sealed.unlink()
    opened.unlink()


def bench_memory(size: int, segment: int, dek: bytes) -> None:
    data = memoryview(os.urandom(size))
    aead = AESGCM(os.urandom(32))
    runs = runs_for(size)

    def envelope_encrypt() -> None:
        Encryptor(dek, CONTEXT, STANZAS, segment_size=segment).encrypt_body_stream(data, Sink())

    encryptor = Encryptor(dek, CONTEXT, STANZAS, segment_size=segment)
    body_chunks: list[bytes] = list(encryptor.iter_body(data))
    body = memoryview(b"".join(body_chunks))
    header = parse_header(encryptor.header)

    def envelope_decrypt() -> None:
        Decryptor(header, dek, CONTEXT).decrypt_body_stream(body, Sink())

    raw = memoryview(raw_body(aead, data, segment))
    t_env_enc, t_raw_enc = best_of_alternating(
        runs, envelope_encrypt, lambda: raw_encrypt_memory(aead, data, segment)
    )
    t_env_dec, t_raw_dec = best_of_alternating(
        runs, envelope_decrypt, lambda: raw_decrypt_memory(aead, raw, segment)
    )
    print(
        f"  memory  encrypt: envelope {mbps(size, t_env_enc):7.0f} MB/s"
        f"  raw {mbps(size, t_raw_enc):7.0f} MB/s  ratio {t_raw_enc / t_env_enc:6.1%}"
    )
    print(
        f"  memory  decrypt: envelope {mbps(size, t_env_dec):7.0f} MB/s"
        f"  raw {mbps(size, t_raw_dec):7.0f} MB/s  ratio {t_raw_dec / t_env_dec:6.1%}"
    )


def bench_files(size: int, segment: int, dek: bytes, workdir: Path, age_keys: Path | None) -> None:
    plain = workdir / "plain.bin"
    sealed = workdir / "plain.cve"
    opened = workdir / "opened.bin"
    raw_out = workdir / "plain.raw"
    raw_back = workdir / "raw-opened.bin"
    write_plaintext(plain, size)
    aead = AESGCM(os.urandom(32))
    runs = 3 if size >= 512 * MIB else runs_for(size)

    def envelope_encrypt() -> None:
        with plain.open("rb") as src, sealed.open("wb") as dst:
            encrypt_stream(
                src, dst, dek=dek, context=CONTEXT, stanzas=STANZAS, segment_size=segment
            )

    def envelope_decrypt() -> None:
        with sealed.open("rb") as src, opened.open("wb") as dst:
            decrypt_stream(src, dst, key=dek, context=CONTEXT)

    t_env_enc, t_raw_enc = best_of_alternating(
        runs, envelope_encrypt, lambda: raw_file_encrypt(plain, raw_out, segment, aead)
    )
    t_env_dec, t_raw_dec = best_of_alternating(
        runs, envelope_decrypt, lambda: raw_file_decrypt(raw_out, raw_back, segment, aead)
    )
    rss_growth = stream_memory_growth(plain, segment, workdir)
    if opened.stat().st_size != size:
        raise SystemExit("the envelope round trip lost bytes")
    print(
        f"  file    encrypt: envelope {mbps(size, t_env_enc):7.0f} MB/s"
        f"  raw {mbps(size, t_raw_enc):7.0f} MB/s  ratio {t_raw_enc / t_env_enc:6.1%}"
        f"   ({t_env_enc:.3f} s)"
    )
    print(
        f"  file    decrypt: envelope {mbps(size, t_env_dec):7.0f} MB/s"
        f"  raw {mbps(size, t_raw_dec):7.0f} MB/s  ratio {t_raw_dec / t_env_dec:6.1%}"
        f"   ({t_env_dec:.3f} s)"
    )
    print(
        f"  file    peak RSS growth of a fresh process streaming encrypt + decrypt: "
        f"{rss_growth / MIB:.1f} MiB"
    )
    if age_keys is not None:
        recipient = age_keys.with_suffix(".pub").read_text().strip()
        age_file = workdir / "plain.age"
        age_back = workdir / "age-opened.bin"
        t_age_enc = best_of(
            runs,
            lambda: subprocess.run(  # noqa: S603
                ["age", "-r", recipient, "-o", str(age_file), str(plain)],  # noqa: S607
                check=True,
            ),
        )
        t_age_dec = best_of(
            runs,
            lambda: subprocess.run(  # noqa: S603
                ["age", "-d", "-i", str(age_keys), "-o", str(age_back), str(age_file)],  # noqa: S607
                check=True,
            ),
        )
        print(
            f"  file    age encrypt {mbps(size, t_age_enc):7.0f} MB/s ({t_age_enc:.3f} s), "
            f"envelope/age {t_age_enc / t_env_enc:5.2f}x;  age decrypt "
            f"{mbps(size, t_age_dec):7.0f} MB/s ({t_age_dec:.3f} s), "
            f"envelope/age {t_age_dec / t_env_dec:5.2f}x"
        )
    for path in (plain, sealed, opened, raw_out, raw_back):
        path.unlink(missing_ok=True)


def make_age_keys(workdir: Path) -> Path | None:
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        print("age is not on PATH: skipping the age comparison (Debian: apt-get install age)")
        return None
    keys = workdir / "age-key.txt"
    subprocess.run(["age-keygen", "-o", str(keys)], check=True, capture_output=True)  # noqa: S603, S607
    public = subprocess.run(  # noqa: S603
        ["age-keygen", "-y", str(keys)],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    keys.with_suffix(".pub").write_text(public)
    version = subprocess.run(
        ["age", "--version"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    print(f"age {version.strip()} to an X25519 recipient")
    return keys


def main() -> None:
    if sys.argv[1:2] == ["--child-stream"]:
        child_stream(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,64M,1G", help="comma-separated, e.g. 1M,64M,1G")
    parser.add_argument(
        "--segment-sizes",
        default=f"{DEFAULT_SEGMENT_SIZE // 1024}K,1M",
        help="comma-separated segment sizes to compare (the first is the default)",
    )
    parser.add_argument("--tmpdir", default=None, help="where the temporary files go")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    segments = [parse_size(s) for s in args.segment_sizes.split(",") if s]
    dek = os.urandom(32)
    print(f"Python {sys.version.split()[0]}, cryptography {cryptography_version()}, ", end="")
    print(f"{os.cpu_count()} CPUs; MB/s = 10**6 B/s of plaintext; best of several runs")
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="cvault-bench-") as tmp:
        workdir = Path(tmp)
        age_keys = make_age_keys(workdir)
        for size in sizes:
            for segment in segments:
                print(f"{human(size)}, segments of {human(segment)}:")
                keys = age_keys if segment == segments[0] else None
                bench_files(size, segment, dek, workdir, keys)
                if size <= MEMORY_LIMIT:
                    bench_memory(size, segment, dek)


def cryptography_version() -> str:
    import cryptography

    return cryptography.__version__


if __name__ == "__main__":
    main()
