"""Memory given back: glibc keeps freed heap memory for reuse, and after a large free it
raises its mmap threshold (up to 32 MiB), so the next large buffers come from a heap that
only grows. An image server frees bodies and decoded images of many megabytes all day: RSS
would stay at its highest point for ever, and the memory budget would be a fiction.

Fixing the threshold at 4 MiB keeps every large buffer (a body, a decoded image) in its own
mapping, returned when freed; what smaller buffers (a body's 64 KiB chunks) leave free inside
the heap goes back with `malloc_trim` once the work that used it is over (`Trimmer`). At a
128 KiB threshold every medium buffer became a fresh mapping with its page faults, and
requests cost 10 % more CPU (`make bench`'s (a) and (b), CPU time per request).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGE = 4 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class Trimmer:
    """Gives free heap memory back once admitted work has fallen well below its peak: an
    attack's bodies held 180 MB, and without this RSS stayed there (48 MB after a trim)."""

    def __init__(self, worth: int = 64 << 20) -> None:
        self.worth = worth
        self.peak = 0
        libc = _libc()
        self._trim = getattr(libc, "malloc_trim", None)

    def note(self, in_use: int) -> None:
        self.peak = max(self.peak, in_use)
        if self.peak >= self.worth and in_use <= self.peak // 4:
            self.peak = in_use
            if self._trim is not None:
                self._trim(0)


def return_large_buffers() -> bool:
    """Best effort: True when glibc took the settings (not musl, not macOS)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = all(
        mallopt(option, value) == 1
        for option, value in ((M_MMAP_THRESHOLD, LARGE), (M_TRIM_THRESHOLD, 2 * LARGE))
    )
    if not taken:
        log.warning("the allocator did not take the memory settings: RSS may stay at its peak")
    return taken
