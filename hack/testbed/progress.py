"""Progress lines for long work: one rewritten line on a terminal, a line every few
seconds otherwise (CI logs stay readable)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, *, every: float = 15.0) -> None:
        self.label = label
        self.started = time.monotonic()
        self._every = every
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, detail: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self._tty and now - self._last < self._every:
            return
        self._last = now
        line = f"  {self.label}: {detail} ({self.elapsed():.0f}s)"
        if self._tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self, detail: str) -> None:
        line = f"  {self.label}: {detail} in {self.elapsed():.1f}s"
        sys.stderr.write(("\r\033[K" if self._tty else "") + line + "\n")
        sys.stderr.flush()


def say(message: str) -> None:
    sys.stderr.write(f"==> {message}\n")
    sys.stderr.flush()
