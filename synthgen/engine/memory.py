"""Keep freed memory mapped in processes that make samples (glibc only).

A sample allocates and frees a few dozen image-sized buffers (a 512x512 float RGB layer is 3 MiB).
By default glibc serves each from fresh pages and gives freed ones back to the kernel, so every
buffer costs a page fault per 4 KiB and zeroing on first touch (what that costs a sample:
benchmarks/README.md). Raising the mmap and trim thresholds keeps those pages in the heap for the next sample; the
price is that a process's resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 32 << 20  # buffers up to 32 MiB from the heap (a 1024x1024 float RGB layer: 12 MiB)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune this process's allocator as the module docstring says; False where it is not glibc
    (the process then runs as before)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc thresholds %s", "raised" if done else "left as they were")
    return done
