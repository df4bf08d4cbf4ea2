"""A plain-text progress bar on stderr, shown only for large transfers to a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

THRESHOLD = 4 * 1024 * 1024  # show a bar for transfers larger than this
_INTERVAL = 0.1
_MIB = 1024 * 1024


class Progress:
    """Counts bytes and redraws one status line at most ten times a second.

    Inert (draws nothing) unless ``stream`` is a terminal and ``total`` exceeds ``THRESHOLD``.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        """Args:
        label: what moves (a file or object name).
        total: the expected number of bytes, if known.
        stream: where to draw (default: stderr).
        """
        self.stream = stream if stream is not None else sys.stderr
        self.label = label if len(label) <= 30 else "..." + label[-27:]
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._drawn = 0.0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) and (total is None or total > THRESHOLD)

    def update(self, count: int) -> None:
        """Add ``count`` bytes; redraw if enough time has passed."""
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn >= _INTERVAL:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed / _MIB
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 24)
            line = (
                f"\r{self.label}  [{bar:<24}] {share:4.0%}  {self.done / _MIB:.1f}/"
                f"{self.total / _MIB:.1f} MiB  {rate:.1f} MiB/s"
            )
        else:
            line = f"\r{self.label}  {self.done / _MIB:.1f} MiB  {rate:.1f} MiB/s"
        self.stream.write(line)
        self.stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the line (if a bar was shown)."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
