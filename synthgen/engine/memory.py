"""Allocator settings for processes that run the sample stages.

Every stage allocates image-sized temporaries (a 512² float32 RGB array is 3 MiB). glibc serves
blocks above its mmap threshold with fresh mappings whose pages fault in zeroed on first touch,
at every allocation: on a 2-core machine composing one shaded image took 11 ms that way and
3.4 ms with the blocks kept on the heap. Raising the mmap and trim thresholds keeps freed
temporaries for reuse, at the price of up to ``trim_bytes`` of freed memory held per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_applied = False


def reuse_freed_memory(mmap_bytes: int = 64 << 20, trim_bytes: int = 256 << 20) -> bool:
    """Keep blocks under ``mmap_bytes`` on the heap and ``trim_bytes`` of free heap (glibc only).

    Idempotent; returns whether the settings are in effect (False off Linux/glibc).
    """
    global _applied
    if _applied or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes))
    log.debug("glibc mmap threshold %d, trim threshold %d: %s", mmap_bytes, trim_bytes, _applied)
    return _applied
