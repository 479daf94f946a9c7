"""Memory given back: glibc keeps freed heap memory for reuse, and after a large free it
raises its mmap threshold (up to 32 MiB), so the next large buffers come from a heap that
only grows. An image server frees bodies and decoded images of many megabytes all day: RSS
would stay at its highest point for ever, and the memory budget would be a fiction.

Fixing the threshold keeps every large buffer in its own mapping, returned when freed; two
arenas keep render threads from each growing a heap of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
LARGE = 128 * 1024


def return_large_buffers() -> bool:
    """Best effort: True when glibc took the settings (not musl, not macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = all(
        mallopt(option, value) == 1
        for option, value in ((M_MMAP_THRESHOLD, LARGE), (M_TRIM_THRESHOLD, 2 * LARGE), (M_ARENA_MAX, 2))
    )
    if not taken:
        log.warning("the allocator did not take the memory settings: RSS may stay at its peak")
    return taken
